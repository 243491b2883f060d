"""Alerts of a service: appended as JSON lines to `alerts.jsonl` in its state directory, and logged.

The configuration server (or an operator's `tail -f`) reads the file; tests read it too.
A condition that persists (a full cache refusing an agent that retries every few seconds) is
raised once per transition: `raise_once` latches it under a key until `clear(key)`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Level = Literal["info", "warning", "critical"]
log = logging.getLogger("dr_agent.alerts")


@dataclass
class AlertLog:
    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latched: set[str] = field(default_factory=set, repr=False)

    def raise_(self, level: Level, code: str, message: str, **details: Any) -> dict[str, Any]:
        entry = {"time": time.time(), "level": level, "code": code, "message": message, **details}
        line = (json.dumps(entry) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        getattr(log, "critical" if level == "critical" else level)("%s: %s", code, message)
        return entry

    def raise_once(self, key: str, level: Level, code: str, message: str, **details: Any) -> dict[str, Any] | None:
        """`raise_` unless the condition `key` is already raised and not cleared since; None then."""
        with self._lock:
            if key in self._latched:
                return None
            self._latched.add(key)
        return self.raise_(level, code, message, **details)

    def clear(self, key: str) -> bool:
        """The condition `key` is over: the next `raise_once(key, ...)` raises again. True when it was raised."""
        with self._lock:
            if key not in self._latched:
                return False
            self._latched.discard(key)
            return True

    def read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
