"""What the relay's logs may say: no identity tokens, and no traceback for a peer's bad bytes.

uvicorn logs every WebSocket handshake with its path and query string (even with the access
log off), and at debug level websockets logs the request line: a `?token=` there would hand
anyone who reads the log the identity it names. A text frame that is not UTF-8 is the peer's
fault, routine on a public relay, yet uvicorn logs it with a full traceback.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
# Query parameters that hand out an identity (`token`) or the relay itself (`key`).
_SECRETS = ("token", "key")
# A query parameter (its name may be percent-encoded: `%74oken` is `token` too).
_PARAMETER = re.compile(r"(^|[?&\s'\"])([^=&\s\"'?]*)=([^&\s\"']*)")
# A token in an event that a debug log shows (`"token":"…"`).
_JSON_TOKEN = re.compile(r'("token"\s*:\s*")[^"]*')
_INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


def _parameter(found: re.Match[str]) -> str:
    if unquote_plus(found.group(2)).strip().lower() not in _SECRETS:
        return found.group()
    return f"{found.group(1)}{found.group(2)}={REDACTED}"


def scrub(message: str) -> str:
    """`message` with the value of every token or access key it carries replaced by a mark."""
    if "=" in message:
        message = _PARAMETER.sub(_parameter, message)
    if '"token"' in message:
        message = _JSON_TOKEN.sub(rf"\g<1>{REDACTED}", message)
    return message


class LogScrubber(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info is not None and message == _INVALID_UTF8:
            # One line says it all; the traceback is uvicorn's own, and the fault the peer's.
            record.exc_info = record.exc_text = None
            record.msg, record.args = "Invalid UTF-8 in a text frame; closed with 1007", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def install() -> None:
    """Scrub what uvicorn logs; call after uvicorn has set up its logging (uvicorn.Config).

    uvicorn's loggers get the filter themselves (their records are made there); the relay's
    own `relay.*` loggers have no handler of their own and end at the last-resort one.
    """
    scrubber = LogScrubber()
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).addFilter(scrubber)
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None:
            handler.addFilter(scrubber)
