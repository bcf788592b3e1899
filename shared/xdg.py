"""Where the relay and the client keep files: the XDG base directories.

Read at call time, not import time, so tests and several profiles on one machine can point
each program at their own directories.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_home(app: str) -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / app


def state_home(app: str) -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / app
