"""Where the jinja2 templates of `blueprints/` are, and one way to render them.

The templates live at the top of the repository (`blueprints/`); a source or editable install finds
them beside the `dr` package, a wheel install under `<prefix>/share/dr/blueprints`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jinja2

from dr.errors import DrError


def blueprints_dir() -> Path:
    candidates = [
        Path(__file__).resolve().parent.parent / "blueprints",
        Path(sys.prefix) / "share" / "dr" / "blueprints",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DrError("the blueprints/ templates are not installed: reinstall dr-as-code (pip install -e .)")


def environment() -> jinja2.Environment:
    """A strict environment: an undefined variable is an error, not an empty string."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(blueprints_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2", "xml")),
    )


def render(template: str, **context: Any) -> str:
    """Render `blueprints/<template>` (e.g. `cloud-init/master-target.yaml.j2`)."""
    return environment().get_template(template).render(**context)
