"""Where the configuration server's state and secrets come from, shared by `dr config-server`,
`dr failover` and `dr status` (so the three commands find the same store the same way).

    --state          a SQLite file (default ./dr-state.db) or a postgresql:// URL; env DR_STATE
    --passphrase-file  the vault passphrase (first line); env DR_VAULT_PASSPHRASE
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dr.errors import SecretUnavailable
from dr.server.store import Store

DEFAULT_STATE = "dr-state.db"
STATE_ENV = "DR_STATE"
PASSPHRASE_ENV = "DR_VAULT_PASSPHRASE"
STORAGE_ENV = "DR_STORAGE_CONNECTION_STRING"


def state_url(option: str | None) -> str:
    return option or os.environ.get(STATE_ENV) or DEFAULT_STATE


def open_state(option: str | None) -> Store:
    return Store.open(state_url(option))


def passphrase(file: Path | None) -> str:
    """The vault passphrase from `--passphrase-file`, else from $DR_VAULT_PASSPHRASE."""
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise SecretUnavailable(
                f"the vault passphrase file {file} cannot be read ({err.strerror}): fix the path or permissions"
            ) from None
        except UnicodeDecodeError:
            raise SecretUnavailable(
                f"the vault passphrase file {file} is not UTF-8 text: write the passphrase on its first line"
            ) from None
        if not lines or not lines[0].strip():
            raise SecretUnavailable(
                f"the vault passphrase file {file} is empty: write the passphrase on its first line"
            )
        return lines[0].strip()
    value = os.environ.get(PASSPHRASE_ENV, "")
    if not value:
        raise SecretUnavailable(
            f"no vault passphrase: give --passphrase-file FILE or export {PASSPHRASE_ENV}=..."
        )
    return value


class NotPrivate(SecretUnavailable):
    """A secret file (state store, key, passphrase) that other users can read: refused at start."""


def require_private(path: Path, what: str) -> None:
    """Refuse `path` when its group or others may read or write it (the message gives the fix)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        raise NotPrivate(
            f"{what} {path} is open to other users (mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}` "
            "(and keep it in a folder only its owner can enter: chmod 700)"
        )


def require_private_state(url: str) -> None:
    """A SQLite state store and its -wal/-shm files must be private (PostgreSQL guards its own files)."""
    if url.startswith(("postgresql://", "postgres://")):
        return
    path = Path(url.removeprefix("sqlite:///"))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        require_private(file, "the state store")
