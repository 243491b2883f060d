"""Resolving credential references ({env: VAR} / {file: path}) at the moment a value is needed.

The value is returned to the caller and never printed, logged or written by this module; errors name
the variable or the file, never a value.
"""

from __future__ import annotations

import os
from pathlib import Path

from dr.errors import SecretUnavailable
from dr.model import EnvRef, FileRef


def resolve(ref: EnvRef | FileRef | str, *, what: str = "a credential") -> str:
    """The referenced value. A plain string (a literal subscription id) is returned as it is."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, EnvRef):
        value = os.environ.get(ref.env)
        if value is None or value == "":
            raise SecretUnavailable(
                f"{what} is read from ${ref.env}, which is not set; export {ref.env}=... before running"
            )
        return value
    path = Path(ref.file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretUnavailable(f"{what} is read from {path}, which does not exist; "
                                "create it or fix the path") from None
    except PermissionError:
        raise SecretUnavailable(f"{what} is read from {path}, which this user cannot read; "
                                "fix its permissions") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SecretUnavailable(f"{what} is read from {path}, which cannot be read ({type(err).__name__})") from None
    value = text.splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise SecretUnavailable(f"{what} is read from {path}, which is empty; write the value on its first line")
    return value


def describe(ref: EnvRef | FileRef | str) -> str:
    """How a reference is shown to a user: `$VAR` or `file:/path`, never the value."""
    if isinstance(ref, EnvRef):
        return f"${ref.env}"
    if isinstance(ref, FileRef):
        return f"file:{ref.file}"
    return ref
