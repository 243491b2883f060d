"""Where the jinja2 templates of `blueprints/` are, and one way to render them.

The templates live at the top of the repository (`blueprints/`). A wheel ships them as the package
`dr_blueprints` (setup.py maps the folder into it), read through importlib.resources; a checkout
(source or editable install) reads the folder beside the `dr` package.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2

from dr.errors import DrError

PACKAGE = "dr_blueprints"  # the blueprints/ folder as installed from the wheel


def blueprints_root() -> Traversable:
    """The templates: the checkout's blueprints/ folder, else the installed `dr_blueprints` package."""
    checkout = Path(__file__).resolve().parent.parent / "blueprints"
    if checkout.is_dir():
        return checkout
    try:
        return resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise DrError(
            "the blueprints/ templates are not installed: reinstall dr-as-code from its wheel "
            "(the templates ship inside it as the package dr_blueprints)"
        ) from None


def _loader(root: Traversable) -> jinja2.BaseLoader:
    def load(name: str) -> tuple[str, str, Any] | None:
        node = root
        for part in name.split("/"):
            node = node.joinpath(part)
        if not node.is_file():
            return None
        return node.read_text(encoding="utf-8"), name, lambda: True

    return jinja2.FunctionLoader(load)


def environment() -> jinja2.Environment:
    """A strict environment: an undefined variable is an error, not an empty string."""
    return jinja2.Environment(
        loader=_loader(blueprints_root()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2", "xml")),
    )


def render(template: str, **context: Any) -> str:
    """Render `blueprints/<template>` (e.g. `cloud-init/master-target.yaml.j2`)."""
    return environment().get_template(template).render(**context)
