"""The documentation site builds, its generated pages are current, and it reads as a manual.

`mkdocs build --strict` fails on a broken link or a page missing from the navigation; the generated
reference pages and man pages must equal what `docs/gen_pages.py` makes from the code now.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Words of a build log, not of a manual: the machine the developers build on, work items.
BUILD_LOG = re.compile(r"\b(this VM|these build machines|build machines?|issue \d+|this round|this session)\b",
                       re.IGNORECASE)


def test_generated_pages_are_current() -> None:
    done = subprocess.run([sys.executable, str(DOCS / "gen_pages.py"), "--check"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(DOCS / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site/reference/cli/index.html").read_text(encoding="utf-8")
    assert "dr failover" in page and "dr validate" in page  # the commands' reference was rendered


def test_no_page_reads_like_a_build_log() -> None:
    found = [f"{p.relative_to(DOCS)}:{n}: {m.group(0)}" for p in sorted((DOCS / "pages").rglob("*.md"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             for m in [BUILD_LOG.search(line)] if m]
    assert not found, found
    assert BUILD_LOG.search("measured on this VM")  # the check can fail


def test_the_readme_is_a_front_door_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200, "the README is the front door: move reference material into docs/"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/pages/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that are not there: {missing}"
    assert "bash .ci/setup && dr lab drill examples/sharepoint/dr.yaml" in readme  # the main command
    assert "bash .ci/setup && python -m pytest -q" in readme  # the test command (.ci/run runs it)
