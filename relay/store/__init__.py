"""Where room history, rooms' settings, identities and held DMs live (see `base` for why split).

`relay.store` names the interfaces and the in-memory default; the SQLite backend is
`relay.store.sqlite`, imported only by those who open one, so the core never loads a database.
"""

from relay.store.base import (
    IdentityStore,
    MailboxStore,
    MessageStore,
    RoomStore,
    Store,
    seq_key,
)
from relay.store.memory import MemoryStore

__all__ = [
    "IdentityStore",
    "MailboxStore",
    "MemoryStore",
    "MessageStore",
    "RoomStore",
    "Store",
    "seq_key",
]
