"""No test imports a `conftest` module by its bare name.

pytest loads every conftest.py of a folder without `__init__.py` as the module `conftest`, replacing the
previous one in sys.modules; which one `from conftest import X` then finds depends on which folders the same
pytest command collected (tests/agent alone works, tests/agent with tests/push does not). Shared values are
imported by package path (`tests.agent.conftest`) or from a harness module.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
BARE = re.compile(r"^\s*(from\s+conftest\s+import|import\s+conftest\b)", re.MULTILINE)


def test_no_test_imports_conftest_by_its_bare_name() -> None:
    offenders = [f"{path.relative_to(TESTS.parent)}:{text.count(chr(10), 0, m.start()) + 1}"
                 for path in sorted(TESTS.rglob("*.py"))
                 for text in [path.read_text(encoding="utf-8")]
                 for m in BARE.finditer(text)]
    assert offenders == [], f"import these by package path (tests.<folder>.conftest): {offenders}"
