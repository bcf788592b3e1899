"""Backlog and resume: the seqs a client sees are contiguous and never repeat."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.relayproc import JsonClient, RelayProcess, messages_until, seqs


async def test_resume_after_forced_disconnect(relay: RelayProcess, room: str) -> None:
    sender = await JsonClient.connect(relay.url(room))
    reader = await JsonClient.connect(relay.url(room))
    for i in range(1, 6):
        await sender.send(type="say", text=f"before {i}")
    seen = await messages_until(reader, 5)
    epoch, token = reader.welcome["epoch"], reader.welcome["token"]
    reader.ws.transport.abort()
    for i in range(6, 16):
        await sender.send(type="say", text=f"during {i}")
    await sender.expect("message", seq=15)
    back = await JsonClient.connect(relay.url(room, f"since=5&epoch={epoch}&token={token}"))
    assert back.welcome["recovered"] is True
    assert back.welcome["you"] == reader.welcome["you"]
    assert back.welcome["seq"] == 15
    await sender.send(type="say", text="after")
    rest = await messages_until(back, 16)
    assert seqs(seen + rest) == list(range(1, 17))
    assert [m.get("replay", False) for m in rest] == [True] * 10 + [False]
    assert [m["text"] for m in rest[:2]] == ["during 6", "during 7"]
    await sender.close()
    await back.close()


async def test_backlog_then_live_while_others_send(relay: RelayProcess, room: str) -> None:
    """Joiners arrive while messages stream in; each sees one unbroken run of seqs."""
    senders = [await JsonClient.connect(relay.url(room)) for _ in range(3)]
    per_sender = 150
    total = per_sender * len(senders)

    async def pump(client: JsonClient, tag: int) -> None:
        for i in range(per_sender):
            await client.send(type="say", text=f"{tag}-{i}")
            if i % 5 == 4:  # pace the stream by round trips so joins land in the middle of it
                await client.expect("message", text=f"{tag}-{i}")

    async def join_all() -> list[JsonClient]:
        return [await JsonClient.connect(relay.url(room, "backlog=20")) for _ in range(8)]

    *_, joiners = await asyncio.gather(*(pump(c, n) for n, c in enumerate(senders)), join_all())
    for joiner in joiners:
        got = await messages_until(joiner, total)
        numbers = seqs(got)
        assert numbers == list(range(numbers[0], total + 1)), "gap or duplicate"
        replayed = [m for m in got if m.get("replay")]
        assert got[: len(replayed)] == replayed, "replay must come before live"
        assert len(replayed) == min(20, joiner.welcome["seq"])
        assert numbers[0] == joiner.welcome["seq"] - len(replayed) + 1
    assert any(20 < joiner.welcome["seq"] < total for joiner in joiners), "no join mid-stream"
    for client in senders + joiners:
        await client.close()


async def test_epoch_mismatch_is_reported(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    for i in range(1, 9):
        await alice.send(type="say", text=f"m{i}")
    await alice.expect("message", seq=8)
    back = await JsonClient.connect(relay.url(room, "since=2&epoch=some-other-epoch&backlog=3"))
    assert back.welcome["recovered"] is False
    replay = await messages_until(back, 8)
    assert seqs(replay) == [6, 7, 8]
    assert all(m["replay"] for m in replay)
    await alice.close()
    await back.close()


async def test_since_beyond_kept_history(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory("--rate", "0", "--history", "5")
    alice = await JsonClient.connect(relay.url("r"))
    for i in range(1, 11):
        await alice.send(type="say", text=f"m{i}")
    await alice.expect("message", seq=10)
    epoch = alice.welcome["epoch"]
    gone = await JsonClient.connect(relay.url("r", f"since=2&epoch={epoch}&backlog=3"))
    assert gone.welcome["recovered"] is False
    assert seqs(await messages_until(gone, 10)) == [8, 9, 10]
    edge = await JsonClient.connect(relay.url("r", f"since=5&epoch={epoch}"))
    assert edge.welcome["recovered"] is True
    assert seqs(await messages_until(edge, 10)) == [6, 7, 8, 9, 10]
    for client in (alice, gone, edge):
        await client.close()


async def test_large_replay_fits_default_client_frames(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    """A replay of megabytes must not arrive as one frame past a client's 1 MiB limit."""
    relay = relay_factory("--rate", "0", "--send-queue-bytes", str(16 << 20))
    alice = await JsonClient.connect(relay.url("r"))
    for i in range(1, 601):
        await alice.send(type="say", text=f"{i} " + "w" * 3000)
    await alice.expect("message", seq=600, timeout=20)
    epoch = alice.welcome["epoch"]
    back = await JsonClient.connect(relay.url("r", f"since=0&epoch={epoch}"))  # max_size 1 MiB
    assert back.welcome["recovered"] is True
    assert seqs(await messages_until(back, 600)) == list(range(1, 601))
    await alice.close()
    await back.close()


async def test_replay_larger_than_send_queue_is_not_a_slow_consumer(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0", "--send-queue-bytes", "65536")
    writer = await JsonClient.connect(relay.url("big"))
    for i in range(1, 101):
        await writer.send(type="say", text=f"{i} " + "x" * 3000)
        await writer.expect("message", seq=i)
    back = await JsonClient.connect(relay.url("big", f"since=0&epoch={writer.welcome['epoch']}"))
    assert back.welcome["recovered"] is True
    await writer.send(type="say", text="live after the replay")
    got = await messages_until(back, 101)
    assert seqs(got) == list(range(1, 102))
    await writer.close()
    await back.close()
