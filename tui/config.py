"""Settings from `$XDG_CONFIG_HOME/chat-tui/config.toml`, overridden by command-line flags.

Directories follow the XDG base directories (shared/xdg.py).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from shared.xdg import config_home, state_home
from tui.client.server import http_base

APP_DIR = "chat-tui"
DEFAULT_SERVER = "ws://127.0.0.1:8000"


def config_dir() -> Path:
    return config_home(APP_DIR)


def state_dir(profile: str | None = None) -> Path:
    """Where a profile keeps its identity and input history; no profile is the default one.

    Two clients sharing a directory are the same user (one token), so `--profile NAME` gives
    each its own: `profiles/NAME` inside the state dir.
    """
    base = state_home(APP_DIR)
    return base / "profiles" / profile if profile else base


_PROFILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def profile_error(name: str) -> str | None:
    """Why `name` cannot be a profile (it becomes a directory name), or None."""
    if _PROFILE.fullmatch(name) is None:
        return "a profile is 1-64 letters, digits, '_', '-' or '.', not starting with '.'"
    return None


class ConfigError(Exception):
    """The config file exists but cannot be used; shown as one line, never a traceback."""


@dataclass
class Config:
    server: str = DEFAULT_SERVER
    theme: str = "textual-dark"
    timestamp_format: str = "%H:%M"
    bell: bool = True
    notify: bool = True
    max_lines: int = 5000
    backlog: int = 50
    reconnect_max_seconds: float = 30.0
    keymap: dict[str, str] = field(default_factory=dict)
    # Access key of a relay run with --key, and a private CA's certificates for wss://.
    key: str = ""
    ca_file: str = ""

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_dir() / "config.toml"
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as bad:
            raise ConfigError(f"{path}: {bad}") from None
        config = cls()
        known = {f.name: f for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            expected = type(getattr(config, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{path}: {key} must be a {expected.__name__}")
            setattr(config, key, value)
        if not all(isinstance(v, str) for v in config.keymap.values()):
            raise ConfigError(f"{path}: keymap values must be key strings")
        return config

    @property
    def http_base(self) -> str:
        return http_base(self.server)
