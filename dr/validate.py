"""Validation: the model's shape, then the support matrix and references, reported all at once.

    validate_path(path) -> Report        everything found, each finding at its file:line:col
    load_valid(path) -> (Estate, warnings)   or SpecInvalid with every finding

Shape errors come from pydantic and are mapped back to the YAML positions the loader recorded. A
list item (a machine, a site ...) that is malformed is reported and left out, and the rules run on
the rest, so one run shows every problem; references to a left-out item are not reported twice.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dr import rules
from dr.errors import SpecInvalid, SpecUnreadable
from dr.findings import Finding, sort_key
from dr.findings import Path as DataPath
from dr.loader import MERGEABLE, SourceMap, load_document, load_python
from dr.model import Estate


@dataclass(frozen=True)
class Report:
    estate: Estate | None
    findings: list[Finding]
    source: SourceMap = field(default_factory=SourceMap)
    path: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.estate is not None and not self.errors


# ---------------------------------------------------------------------------------------------
# Mapping pydantic errors to findings.


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes an annotation can hold (through Optional, list, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(models_in(arg))
    return out


def _model_at(path: DataPath) -> type[BaseModel] | None:
    """The model class whose mapping sits at `path` in the data (None if not a model)."""
    model: type[BaseModel] | None = Estate
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            alias = next((f for f in model.model_fields.values() if f.alias == part), None)
            if alias is None:
                return None
            info = alias
        candidates = models_in(info.annotation)
        model = candidates[0] if len(candidates) == 1 else None
    return model


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[DataPath, bool]:
    """Keep the parts of a pydantic `loc` that index the data. Returns (path, last part is absent)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part[:1].islower() and "[" not in part:
            # a key that is not there: a missing field (or an unknown alias); it ends the path
            path.append(part)
            return tuple(path), True
        # else: a union member tag or validator name; skip it
    return tuple(path), False


def _found(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _message(error: Any, path: DataPath) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1])
        model = _model_at(path[:-1])
        hint = rules.did_you_mean(key, _keys_of(model)) if model else ""
        allowed = f"; allowed here: {', '.join(_keys_of(model))}" if model and not hint else ""
        return f"unknown key {key!r}{hint}{allowed}"
    if kind == "missing":
        return f"missing required key {str(path[-1])!r}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        hint = rules.did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return f"expected one of {', '.join(choices)}; found {_found(value)}{hint}"
    if kind.endswith(("_parsing", "_type")):
        what = msg.removeprefix("Input should be ").removesuffix(", unable to parse string as an integer")
        what = what.removesuffix(", unable to parse string as a number")
        return f"expected {what}; found {_found(value)}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{_found(value)} does not have the expected form ({error.get('ctx', {}).get('pattern', '')})"
    if msg.startswith("Input should be "):
        return f"should be {msg.removeprefix('Input should be ')}; found {_found(value)}"
    return f"{msg[0].lower()}{msg[1:]}; found {_found(value)}" if msg else f"invalid value {_found(value)}"


def _shape_findings(err: ValidationError, data: dict[str, Any], source: SourceMap) -> list[Finding]:
    findings: dict[tuple[DataPath, str], Finding] = {}
    for error in err.errors():
        path, absent = _data_path(error["loc"], data)
        message = _message(error, path)
        if error["type"] == "extra_forbidden":
            location = source.locate(path, key=True)
        elif absent:
            location = source.locate(path[:-1], key=True)
        else:
            location = source.locate(path)
        findings.setdefault((path, message), Finding("error", path, message, location))
    return list(findings.values())


# ---------------------------------------------------------------------------------------------


# Valid stand-ins for required top-level sections, used only to run the rules on the rest.
_STAND_INS: dict[str, Any] = {
    "estate": "stand-in",
    "azure": {
        "subscription": {"env": "UNUSED"}, "region": "stand-in", "resource_group": "stand-in",
        "connectivity": "vpn", "quota": {"vcpus": 0},
        "network": {"vnet": "v", "address_space": "10.0.0.0/16", "subnet": "s", "subnet_prefix": "10.0.0.0/24"},
    },
}


def check_data(data: dict[str, Any], source: SourceMap, path: str = "") -> Report:
    """Validate plain spec data (as loaded) with its source map: shape, then rules."""
    findings: list[Finding] = []
    broken_names: set[str] = set()
    broken_members: set[str] = set()
    try:
        estate = Estate.model_validate(data)
    except ValidationError as err:
        shape = _shape_findings(err, data, source)
        findings.extend(shape)
        # Leave out malformed list items, and run the rules on the rest.
        drop: dict[str, set[int]] = {}
        for finding in shape:
            if len(finding.path) >= 2 and finding.path[0] in MERGEABLE and isinstance(finding.path[1], int):
                drop.setdefault(str(finding.path[0]), set()).add(finding.path[1])
        trimmed = dict(data)
        # A broken top-level section that is not a list is replaced by a stand-in for the rules'
        # sake only; what the rules would say about the stand-in is not reported.
        replaced = {str(f.path[0]) for f in shape if f.path and f.path[0] not in MERGEABLE}
        replaced |= {key for key in _STAND_INS if key not in data}
        for key in replaced:
            if key in _STAND_INS:
                trimmed[key] = _STAND_INS[key]
            else:
                trimmed.pop(key, None)
        index_maps: dict[str, list[int]] = {}
        for key, indices in drop.items():
            items = data.get(key) or []
            kept = [i for i in range(len(items)) if i not in indices]
            for i in indices:
                item = items[i] if isinstance(items[i], dict) else {}
                if isinstance(item.get("name"), str):
                    broken_names.add(item["name"])
                if key == "protection_groups" and isinstance(item.get("members"), list):
                    broken_members.update(m for m in item["members"] if isinstance(m, str))
            trimmed[key] = [items[i] for i in kept]
            index_maps[key] = kept
        try:
            estate = Estate.model_validate(trimmed)
        except ValidationError:
            return Report(None, sorted(findings, key=sort_key), source, path)
        checked = rules.check(estate, unknown_ok=frozenset(broken_names), also_protected=frozenset(broken_members))
        for finding in checked:
            if finding.path and finding.path[0] in replaced:
                continue
            findings.append(_renumber(finding, index_maps, source))
        return Report(None, sorted(findings, key=sort_key), source, path)
    for finding in rules.check(estate):
        findings.append(_place(finding, source))
    return Report(estate, sorted(findings, key=sort_key), source, path)


def _place(finding: Finding, source: SourceMap) -> Finding:
    return Finding(finding.severity, finding.path, finding.message, source.locate(finding.path))


def _renumber(finding: Finding, index_maps: dict[str, list[int]], source: SourceMap) -> Finding:
    path = finding.path
    if len(path) >= 2 and path[0] in index_maps and isinstance(path[1], int):
        path = (path[0], index_maps[str(path[0])][path[1]], *path[2:])
    return Finding(finding.severity, path, finding.message, source.locate(path))


def check_estate(estate: Estate) -> Report:
    """Validate an Estate built in Python (no positions): the rules only; its shape is already valid."""
    return Report(estate, sorted(rules.check(estate), key=sort_key))


def validate_path(path: str | Path, *, action_files: bool = True) -> Report:
    """Load and validate a `.yaml`/`.yml` or `.py` spec. Raises SpecUnreadable for unreadable input.

    `action_files`: also check that every runbook and script a recovery plan names exists beside the
    spec (`dr validate` and `dr failover` do; commands that never run a plan need not)."""
    p = Path(path)
    if p.suffix == ".py":
        estate = load_python(p)
        if not isinstance(estate, Estate):
            raise SpecUnreadable(f"{p}: `estate` is a {type(estate).__name__}, expected dr.Estate(...)")
        report = check_estate(estate)
    else:
        document = load_document(p)
        report = check_data(document.data, document.source, document.path)
    if not action_files or report.estate is None:
        return report
    extra = [_place(f, report.source) for f in rules.action_files(report.estate, p.resolve().parent)]
    if not extra:
        return report
    return Report(report.estate, sorted([*report.findings, *extra], key=sort_key), report.source, report.path)


def load_valid(path: str | Path, *, action_files: bool = False) -> tuple[Estate, list[Finding]]:
    """The estate of a valid spec and its warnings; SpecInvalid (with every finding) otherwise.
    `action_files`: as for `validate_path` (off by default: only commands that run a plan need it)."""
    report = validate_path(path, action_files=action_files)
    if not report.ok or report.estate is None:
        raise SpecInvalid(report.findings)
    return report.estate, report.warnings

