"""The error registries are complete: every DrError and AgentError subclass is in its documented tree.

`dr/errors.py`'s docstring draws every `DrError` subclass with its exit code; `dr_agent/errors.py`'s
draws every `AgentError` subclass. A class added without its line (or with another exit code than the
tree says) fails here, so the documented tree cannot drift from the code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import dr_agent
import dr_agent.errors
import pytest

import dr
import dr.errors

TREE_LINE = re.compile(r"^\s*[│├└─\s]*([A-Z][A-Za-z]+)\s+(?:exit (\d+))?")


def _import_all(package: ModuleType) -> None:
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as err:  # an optional extra; under CI every extra is installed
            pytest.fail(f"{info.name} does not import: {err}")


def _subclasses(root: type) -> set[type]:
    found: set[type] = set()
    todo = [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _documented(module: ModuleType) -> dict[str, set[int | None]]:
    tree: dict[str, set[int | None]] = {}
    for line in (module.__doc__ or "").splitlines():
        m = TREE_LINE.match(line)
        if m and ("──" in line or line.strip().startswith(m.group(1))):
            tree.setdefault(m.group(1), set()).add(int(m.group(2)) if m.group(2) else None)
    return tree


def test_every_dr_error_is_in_the_registry_with_its_exit_code() -> None:
    _import_all(dr)
    documented = _documented(dr.errors)
    classes = {c for c in _subclasses(dr.errors.DrError) if c.__module__.startswith("dr.")}
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in classes if c.__name__ not in documented)
    assert not missing, f"add these to the tree in dr/errors.py: {missing}"
    wrong = sorted(f"{c.__module__}.{c.__name__}: exit {c.exit_code}, tree says {documented[c.__name__]}"
                   for c in classes if c.exit_code not in documented[c.__name__])
    assert not wrong, f"exit codes differ from dr/errors.py: {wrong}"


def test_every_agent_error_is_in_the_registry() -> None:
    _import_all(dr_agent)
    documented = _documented(dr_agent.errors)
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in _subclasses(dr_agent.errors.AgentError)
                     if c.__module__.startswith("dr_agent.") and c.__name__ not in documented)
    assert not missing, f"add these to the tree in agent/dr_agent/errors.py: {missing}"


def test_the_registry_check_can_fail() -> None:
    class Undocumented(dr.errors.DrError):
        exit_code = 7

    assert "Undocumented" not in _documented(dr.errors)
    assert Undocumented in _subclasses(dr.errors.DrError)
