"""Durations as the spec writes them: `30s`, `15m`, `24h`, `3d`, `1h30m`.

A `Duration` field accepts such a string (or a number of seconds) and holds a `datetime.timedelta`;
it serializes back to the shortest string of the same value, so a round trip is stable.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PATTERN = r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"
_RE = re.compile(r"(\d+)([dhms])")


def parse_duration(value: Any) -> timedelta:
    """`'1h30m'` -> 5400 s. Raises ValueError with the accepted forms for anything else."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 15m, 24h or 3d, found {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, found {value}")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 15m, 24h or 3d, found {type(value).__name__}")
    text = value.strip().lower()
    if not text or not re.fullmatch(_PATTERN, text):
        raise ValueError(
            f"expected a duration such as 30s, 15m, 24h, 3d or 1h30m (units d, h, m, s in that order), "
            f"found {value!r}"
        )
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _RE.findall(text)))


def format_duration(value: timedelta) -> str:
    """The shortest spec string for `value`: 5400 s -> `1h30m`, 0 -> `0s`."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PATTERN, "examples": ["15m", "24h", "3d"]}),
]
