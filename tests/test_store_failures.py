"""The SQLite store when a write fails: one bad row, a full disk, a database that is gone."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from relay.store.sqlite import SQLiteStore
from tests.relayproc import JsonClient, RelayProcess, eventually, metric


def message(room: str, seq: int, text: str = "") -> dict:
    text = text or f"m{seq}"
    return {"type": "message", "room": room, "id": f"i-{seq}", "seq": seq, "text": text}


def stored(db: Path, room: str) -> list[str]:
    with closing(sqlite3.connect(db)) as raw:
        rows = raw.execute("SELECT event FROM messages WHERE room = ? ORDER BY seq", (room,))
        return [row[0] for row in rows]


@contextmanager
def writer_held(db: Path) -> Iterator[None]:
    """Hold the database's write lock, so what is submitted meanwhile forms one batch.

    The writer blocks on its next write (busy timeout) and takes everything queued behind it
    as the batch after that, once the lock is released.
    """
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("COMMIT")


def test_one_bad_row_does_not_roll_back_the_batch(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    store = SQLiteStore(db)
    store.append("warmup", message("warmup", 1))
    store.flush()
    with writer_held(db):
        store.append("warmup", message("warmup", 2))
        store.append("a", message("a", 1, "alice 1"))
        store.append("b", message("b", 1, "bob 1"))
        # A lone surrogate: SQLite cannot store it as UTF-8, so this one row fails.
        store.append("a", message("a", 2, "bad \ud800 row"))
        store.append("b", message("b", 2, "bob 2"))
        store.set_identity_name("carol-subject", "carol")
        store.append("a", message("a", 3, "alice 3"))
    store.flush()
    assert [row.count("alice") for row in stored(db, "a")] == [1, 1]
    assert len(stored(db, "b")) == 2
    assert store.subject_of("carol") == "carol-subject"
    store.close()
    reopened = SQLiteStore(db)
    assert [m["seq"] for m in reopened.before("a", None, 10)] == [1, 3]
    assert [m["text"] for m in reopened.before("b", None, 10)] == ["bob 1", "bob 2"]
    assert reopened.subject_of("carol") == "carol-subject"
    reopened.close()


async def test_relay_keeps_honest_posts_batched_with_a_bad_one(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    relay = relay_factory("--rate", "0", "--db", str(db))
    async with httpx.AsyncClient(base_url=relay.http) as http:
        first = await http.post("/rooms/r/messages", json={"from": "bot", "text": "first"})
        assert first.status_code == 201
        with writer_held(db):
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "held up"})
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "honest 1"})
            bad = '{"from": "mallory", "text": "x\\ud800y"}'
            # Refused at the door, or (before that check) a 500: either way, stored nowhere.
            async with httpx.AsyncClient(base_url=relay.http) as once:
                with contextlib.suppress(httpx.HTTPError):
                    await once.post("/rooms/r/messages", content=bad)
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "honest 2"})
    assert relay.stop() == 0
    relay = relay_factory("--db", str(db))
    async with httpx.AsyncClient(base_url=relay.http) as http:
        page = (await http.get("/rooms/r/messages")).json()["messages"]
    texts = [m["text"] for m in page]
    assert texts[:2] == ["first", "held up"]
    assert "honest 1" in texts and "honest 2" in texts


def add_ballast(db: Path, size: int) -> int:
    """Fill `size` bytes of the database with a table of its own; the file's size after."""
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("CREATE TABLE ballast (x BLOB)")
        raw.execute("INSERT INTO ballast VALUES (zeroblob(?))", (size,))
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size


def drop_ballast(db: Path) -> None:
    """Make room in the database, as deleting files makes room on a disk."""
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("DROP TABLE ballast")


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_full_database_keeps_what_was_acknowledged_until_space_returns(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    SQLiteStore(db).close()
    # Dropping the ballast must make room for everything acknowledged before the refusals
    # began, however far the writer lagged behind: 4 MB is twice what the filler ever sends.
    size = add_ballast(db, 4_000_000)
    store = SQLiteStore(db, max_bytes=size + 32_768)
    seq = 0
    while store.problem() is None and seq < 500:
        seq += 1
        store.append("r", message("r", seq, "x" * 1000))
        if seq % 5 == 0:
            store.flush()
    assert store.problem() is not None and "full" in str(store.problem())
    failures, pending = store.counters()
    assert failures >= 1 and pending > 0
    # Every message acknowledged so far is still served, from memory.
    assert [m["seq"] for m in store.before("r", None, 1000)] == list(range(1, seq + 1))
    drop_ballast(db)
    wait_for(lambda: store.problem() is None)
    assert store.counters()[1] == 0
    store.close()
    reopened = SQLiteStore(db)
    assert [m["seq"] for m in reopened.before("r", None, 1000)] == list(range(1, seq + 1))
    reopened.close()
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0] == "1"


async def fill_until_refused(relay: RelayProcess, room: str) -> tuple[JsonClient, dict[int, str]]:
    """Say 1 KB messages until the relay refuses one; the client and what was echoed."""
    client = await JsonClient.connect(relay.url(room, "backlog=0"))
    echoed: dict[int, str] = {}
    for count in range(2000):
        text = f"{count} " + "x" * 1000
        await client.send(type="say", text=text)
        event = await client.next()
        while event["type"] not in ("message", "error"):
            event = await client.next()
        if event["type"] == "error":
            assert (event["code"], event["request"]) == ("unavailable", "say"), event
            return client, echoed
        assert event["text"] == text
        echoed[event["seq"]] = text
    raise AssertionError("the relay never refused a message")


async def check_refusing(http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable" and "store" in health.json()["reason"]
    posted = await http.post("/rooms/r/messages", json={"from": "bot", "text": "now?"})
    assert posted.status_code == 503 and posted.json()["error"] == "unavailable"
    text = (await http.get("/metrics")).text
    assert metric(text, "chat_store_failures_total") >= 1
    assert metric(text, "chat_store_healthy") == 0


async def check_kept(relay: RelayProcess, room: str, echoed: dict[int, str]) -> None:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        kept: dict[int, str] = {}
        before: int | None = None
        while True:
            params = {"limit": 200} | ({} if before is None else {"before": before})
            page = (await http.get(f"/rooms/{room}/messages", params=params)).json()["messages"]
            kept |= {m["seq"]: m["text"] for m in page}
            if len(page) < 200:
                break
            before = page[0]["seq"]
    assert {seq: kept.get(seq) for seq in echoed} == echoed


async def test_relay_refuses_while_the_database_is_full_and_recovers(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    SQLiteStore(db).close()
    # Dropping the ballast must make room for everything acknowledged before the refusals
    # began, however far the writer lagged behind: 4 MB is twice what the filler ever sends.
    size = add_ballast(db, 4_000_000)
    relay = relay_factory("--rate", "0", "--db", str(db), "--db-max-bytes", str(size + 65_536))
    client, echoed = await fill_until_refused(relay, "r")
    assert echoed, "some messages went in before the database was full"
    async with httpx.AsyncClient(base_url=relay.http) as http:
        await check_refusing(http)
        drop_ballast(db)

        async def healthy() -> bool | None:
            return (await http.get("/healthz")).status_code == 200 or None

        try:
            # The writer retries at most RETRY_LAST (2 s) apart; a loaded machine needs slack.
            await eventually(healthy, timeout=30)
        except AssertionError:
            health = (await http.get("/healthz")).text
            raise AssertionError(f"{health}\n{relay.stderr_text()[-3000:]}") from None
        posted = await http.post("/rooms/r/messages", json={"from": "bot", "text": "back"})
        assert posted.status_code == 201
        echoed[posted.json()["seq"]] = "back"
        assert metric((await http.get("/metrics")).text, "chat_store_pending") == 0
    await client.close()
    assert relay.stop() == 0
    assert "Traceback" not in relay.stderr_text()
    relay = relay_factory("--db", str(db))
    await check_kept(relay, "r", echoed)


async def test_deleted_database_is_restored_and_keeps_everything(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    relay = relay_factory("--rate", "0", "--db", str(db))
    echoed: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=relay.http) as http:

        async def post(text: str) -> None:
            answer = await http.post("/rooms/r/messages", json={"from": "bot", "text": text})
            assert answer.status_code == 201
            echoed[answer.json()["seq"]] = text

        for i in range(20):
            await post(f"before {i}")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        for i in range(20):
            await post(f"after {i}")
        await eventually(lambda: _exists(db))
        assert (await http.get("/healthz")).status_code == 200
    assert relay.stop() == 0
    assert "restored it from the open database" in relay.stderr_text()
    relay = relay_factory("--db", str(db))
    await check_kept(relay, "r", echoed)


async def _exists(path: Path) -> bool | None:
    return path.exists() or None


def start_error(tmp_path: Path, *args: str) -> str:
    """Start the relay expecting it to refuse; its stderr."""
    command = [sys.executable, "-m", "relay", "serve", "--port", "0", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_unwritable_state_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = start_error(tmp_path, "--state-dir", str(blocker / "state"))
    assert "state dir" in line and str(blocker) in line
    state = tmp_path / "state"
    state.mkdir()
    (state / "chat.db").write_text("this is not a database, and it is long enough to tell" * 20)
    line = start_error(tmp_path, "--state-dir", str(state))
    assert "database" in line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs); skipped where this user may not mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path) -> Path:
    """Write a file until the filesystem is full; the file, to delete when space should return."""
    ballast = where / "ballast"
    with ballast.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return ballast


async def test_full_disk_refuses_then_recovers_by_itself(
    relay_factory: Callable[..., RelayProcess], small_disk: Path
) -> None:
    db = small_disk / "chat.db"
    relay = relay_factory("--rate", "0", "--db", str(db))
    warmup = await JsonClient.connect(relay.url("r"))
    await warmup.send(type="say", text="before the disk filled")
    await warmup.expect("message", seq=1)
    await warmup.close()
    ballast = fill_disk(small_disk)
    client, echoed = await fill_until_refused(relay, "r")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        await check_refusing(http)
        ballast.unlink()

        async def healthy() -> bool | None:
            return (await http.get("/healthz")).status_code == 200 or None

        await eventually(healthy, timeout=10)
    await client.send(type="say", text="space is back")
    echo = await client.expect("message", text="space is back")
    echoed[echo["seq"]] = "space is back"
    await client.close()
    assert relay.stop() == 0
    relay = relay_factory("--db", str(db))
    await check_kept(relay, "r", echoed)


def test_dropped_bad_row_does_not_pin_its_room_in_memory(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chat.db", history_limit=2)
    store.append("r", message("r", 1, "bad \ud800 row"))
    store.flush()
    # Done with, although not written: the room may be trimmed and evicted like any other.
    assert store._rooms["r"].committed == 1
    store.close()
