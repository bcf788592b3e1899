"""What the client presents to a relay that is not open to everyone: access key, private CA.

One relay per process (`--server`), so the settings are set once by `chat-tui`'s entry point
and read by every WebSocket link and HTTP call, instead of being threaded through each of them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientAccess:
    key: str = ""
    ca_file: str = ""

    def headers(self) -> dict[str, str]:
        """The key as a header: unlike `?key=`, a header does not end up in URLs and logs."""
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def ssl_context(self) -> ssl.SSLContext:
        """The system trust store, plus (or, for a private CA, only) `ca_file`."""
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return ssl.create_default_context()


current = ClientAccess()


def configure(access: ClientAccess) -> None:
    global current
    current = access
