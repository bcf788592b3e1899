"""What the Redis store does beyond the Store contract (tests/test_store_contract.py)."""

from __future__ import annotations

from relay.store.redis import RedisStore
from tests.redisproc import RedisProcess

DAY = 86400.0


def test_idle_anonymous_identities_are_forgotten_the_others_kept(
    redis_server: RedisProcess,
) -> None:
    now = [1_000_000.0]
    store = RedisStore(redis_server.url, forget_days=30, clock=lambda: now[0])
    store.set_identity_name("s-anon", "quiet-otter")
    store.set_identity_name("s-chosen", "carol", chosen=True)
    store.set_identity_name("s-owner", "olga")
    store.set_owner("r", "s-owner")
    store.set_identity_name("s-mail", "mallory")
    store.hold_dm("s-mail", "s-chosen", {"type": "dm", "id": "dm-1", "text": "hi"})
    store.set_identity_name("s-recent", "fresh-fox")
    now[0] += 29 * DAY
    store.set_identity_name("s-recent", "fresh-fox")
    assert store.forget_idle() == 0
    now[0] += 2 * DAY
    assert store.forget_idle() == 1
    assert store.subject_of("quiet-otter") is None and store.identity_name("s-anon") is None
    for subject, name in [("s-chosen", "carol"), ("s-owner", "olga"), ("s-mail", "mallory")]:
        assert store.subject_of(name) == subject
    assert store.subject_of("fresh-fox") == "s-recent"
    store.close()
