"""The layering rules: cores that a test can drive without a socket or a screen.

Each module is imported in a clean interpreter and what it pulled in is read from sys.modules,
so a rule broken by a transitive import fails here instead of being found in review.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Not sqlite3 yet: the hub builds its default accounts registry (SQLiteRegistry, in
# relay/accounts.py with the interface); issue 11 splits the store along its concerns.
FRAMEWORKS = ("asyncio", "starlette", "uvicorn", "textual", "websockets")
RULES = {
    # The relay's core: rooms, members, fan-out, identities. No event loop, server or database
    # client (redis-py is an optional extra: a plain install has none).
    "relay.core": (*FRAMEWORKS, "redis"),
    "relay.model": (*FRAMEWORKS, "redis"),
    "relay.identities": (*FRAMEWORKS, "redis"),
    "relay.dms": (*FRAMEWORKS, "redis"),
    "relay.owners": (*FRAMEWORKS, "redis"),
    "relay.remote": (*FRAMEWORKS, "redis"),
    "relay.cluster": (*FRAMEWORKS, "redis"),
    # redis-py is an optional extra: only relay/redis_*.py and relay/store/redis.py import it.
    "relay.cli": ("redis",),
    "relay.names": FRAMEWORKS,
    "relay.store": FRAMEWORKS,
    # Both sides' shared protocol code depends on neither side.
    "shared.protocol": (*FRAMEWORKS, "relay", "tui"),
    "shared.sanitize": (*FRAMEWORKS, "relay", "tui"),
    # The client core and the headless front end never load Textual.
    "tui.client.room": ("textual",),
    "tui.client.commands": ("textual",),
    "tui.client.events": ("textual",),
    "tui.plain": ("textual",),
}


# The HTTP layer asks the hub, never `hub.store`: a backend shared by several relays (issue 11)
# may answer differently from what the hub knows, and only the hub can reconcile the two.
HTTP_LAYER = ("app.py", "login.py", "announce.py")
RELAY = Path(__file__).resolve().parent.parent / "relay"


def imported_roots(module: str) -> set[str]:
    probe = (
        f"import sys, json; import {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", sorted(RULES))
def test_module_keeps_to_its_layer(module: str) -> None:
    forbidden = set(RULES[module]) & imported_roots(module)
    assert not forbidden, f"{module} imports {sorted(forbidden)}"


@pytest.mark.parametrize("module", HTTP_LAYER)
def test_http_layer_asks_the_hub_not_the_store(module: str) -> None:
    tree = ast.parse((RELAY / module).read_text(), module)
    reached = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert not reached, f"relay/{module} reaches the store on lines {reached}"
