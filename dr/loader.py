"""Reading a spec: YAML that remembers where every node came from, includes, and Python estates.

`load_document(path)` returns the spec as plain data (dicts, lists, scalars) plus a `SourceMap`
from every data path (`("machines", 1, "disks", 0, "size_gb")`) to the file, line and column it was
written at, keys and values apart. Includes are merged here: an included file adds items to the
top-level lists (a discovered inventory adds `machines`), appended after the including file's own,
and its nodes keep their own file's positions.

Parsing errors (bad YAML, a duplicate key, a missing include) raise `SpecUnreadable` with the place.
"""

from __future__ import annotations

import datetime
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dr.errors import SpecUnreadable
from dr.findings import Location
from dr.findings import Path as DataPath

# Top-level keys an included file may add items to; anything else stays in the including file.
MERGEABLE = ("sites", "machines", "protection_groups", "recovery_plans")


@dataclass
class SourceMap:
    """Where each node of a loaded document was written. Built once by the loader, then read only."""

    values: dict[DataPath, Location] = field(default_factory=dict)
    keys: dict[DataPath, Location] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)

    def locate(self, path: DataPath, *, key: bool = False) -> Location | None:
        """The place of `path` (its key when `key`), else of its nearest written ancestor."""
        table, other = (self.keys, self.values) if key else (self.values, self.keys)
        if path in table:
            return table[path]
        if path in other:
            return other[path]
        for end in range(len(path) - 1, -1, -1):
            ancestor = path[:end]
            if ancestor in self.keys:
                return self.keys[ancestor]
            if ancestor in self.values:
                return self.values[ancestor]
        return None

    def shifted(self, top: str, offset: int) -> SourceMap:
        """This map with items of list `top` renumbered by `offset` (for merging an include)."""

        def move(table: dict[DataPath, Location]) -> dict[DataPath, Location]:
            out: dict[DataPath, Location] = {}
            for path, loc in table.items():
                if len(path) >= 2 and path[0] == top and isinstance(path[1], int):
                    out[(top, path[1] + offset, *path[2:])] = loc
            return out

        return SourceMap(values=move(self.values), keys=move(self.keys), lines=dict(self.lines))


@dataclass(frozen=True)
class Document:
    data: dict[str, Any]
    source: SourceMap
    path: str


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _token_length(line: str, col0: int) -> int:
    """Length of the scalar token starting at 0-based `col0` on `line` (for the caret)."""
    text = line[col0:].rstrip("\n")
    if not text:
        return 1
    if text[0] in "\"'":
        end = text.find(text[0], 1)
        return end + 1 if end > 0 else len(text)
    for i, ch in enumerate(text):
        if ch in ",}]#" or (ch == ":" and (i + 1 == len(text) or text[i + 1] == " ")):
            return max(1, len(text[:i].rstrip()))
    return max(1, len(text.rstrip()))


def _plain(node: Any, path: DataPath, source: SourceMap, file: str) -> Any:
    """Turn a ruamel round-trip node into plain data, recording positions on the way."""
    lines = source.lines[file]

    def loc(line0: int, col0: int) -> Location:
        text = lines[line0] if line0 < len(lines) else ""
        return Location(file, line0 + 1, col0 + 1, _token_length(text, col0))

    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key in node:
            child = (*path, str(key))
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            source.keys[child] = loc(kline, kcol)
            source.values[child] = loc(vline, vcol)
            out[str(key)] = _plain(node[key], child, source, file)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, item in enumerate(node):
            child = (*path, index)
            iline, icol = node.lc.item(index)
            source.values[child] = loc(iline, icol)
            items.append(_plain(item, child, source, file))
        return items
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, (datetime.date, datetime.datetime)):
        return node.isoformat()
    return node


def _read_yaml(path: Path, stack: tuple[Path, ...]) -> Document:
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecUnreadable(f"{file}: no such file; check the path") from None
    except IsADirectoryError:
        raise SpecUnreadable(f"{file}: is a directory; name the spec file inside it (e.g. {file}/dr.yaml)") from None
    except PermissionError:
        raise SpecUnreadable(f"{file}: permission denied; make the file readable") from None
    except UnicodeDecodeError as err:
        raise SpecUnreadable(f"{file}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    source = SourceMap(lines={file: text.splitlines()})
    try:
        node = _yaml().load(text)
    except DuplicateKeyError as err:
        mark = err.problem_mark
        first = err.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        key = (err.problem or "").split('"')[1] if '"' in (err.problem or "") else "a key"
        earlier = f" (first at line {first.line + 1})" if first else ""
        raise SpecUnreadable(f"{where}: duplicate key {key!r}{earlier}; keep one of them") from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        problem = (err.problem or err.context or "not valid YAML").strip()
        if err.problem and err.context and err.context_mark and err.context_mark is not mark:
            problem += f" ({err.context.strip()} that starts at line {err.context_mark.line + 1})"
        raise SpecUnreadable(f"{where}: not valid YAML: {problem}; fix the syntax there") from None
    except YAMLError as err:
        raise SpecUnreadable(f"{file}: not valid YAML: {str(err).splitlines()[0]}") from None
    if node is None:
        raise SpecUnreadable(f"{file}: the file is empty; a spec starts with `estate: NAME`")
    if not isinstance(node, CommentedMap):
        raise SpecUnreadable(f"{file}:1:1: expected a mapping of keys (estate:, azure:, ...), "
                             f"found a {type(node).__name__}")
    data = _plain(node, (), source, file)
    return _merge_includes(Document(data, source, file), path, stack)


def _merge_includes(doc: Document, path: Path, stack: tuple[Path, ...]) -> Document:
    includes = doc.data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
        doc.data["include"] = includes
    if not isinstance(includes, list):
        where = doc.source.locate(("include",))
        raise SpecUnreadable(f"{where}: include: expects a list of file names, e.g. include: [inventory.yaml]")
    for index, name in enumerate(includes):
        where = doc.source.locate(("include", index)) or doc.source.locate(("include",))
        if not isinstance(name, str):
            raise SpecUnreadable(f"{where}: include: expects file names, found {name!r}")
        target = (path.parent / name).resolve()
        if target in stack:
            raise SpecUnreadable(f"{where}: include cycle: {name} includes this file again; remove one include")
        if not target.exists():
            raise SpecUnreadable(f"{where}: included file {name!r} not found (looked at {_display(target)}); "
                                 "fix the path")
        included = _read_yaml(target, (*stack, target))
        for key, value in included.data.items():
            if key == "include":
                continue
            if key not in MERGEABLE:
                loc = included.source.locate((key,), key=True)
                raise SpecUnreadable(
                    f"{loc}: an included file may only add {', '.join(MERGEABLE)}; move {key!r} to {doc.path}"
                )
            if not isinstance(value, list):
                loc = included.source.locate((key,))
                raise SpecUnreadable(f"{loc}: {key}: expects a list in an included file")
            mine = doc.data.setdefault(key, [])
            if not isinstance(mine, list):
                raise SpecUnreadable(f"{doc.source.locate((key,))}: {key}: expects a list")
            moved = included.source.shifted(key, len(mine))
            doc.source.values.update(moved.values)
            doc.source.keys.update(moved.keys)
            mine.extend(value)
        doc.source.lines.update(included.source.lines)
    return doc


def load_document(path: str | Path) -> Document:
    """Read a YAML spec (and its includes) as plain data with positions. Raises SpecUnreadable."""
    resolved = Path(path).resolve()
    return _read_yaml(Path(path), (resolved,))


def load_python(path: str | Path) -> Any:
    """Run a `.py` spec and return its `estate` (an Estate built with the DSL). Raises SpecUnreadable."""
    from pydantic import ValidationError

    file = _display(Path(path))
    if not Path(path).is_file():
        raise SpecUnreadable(f"{file}: no such file; check the path")
    try:
        namespace = runpy.run_path(str(path), run_name="__dr_spec__")
    except ValidationError as err:
        first = err.errors()[0]
        where = _python_line(err, str(Path(path).resolve())) or file
        loc = ".".join(str(p) for p in first["loc"])
        raise SpecUnreadable(
            f"{where}: {err.title}: {loc + ': ' if loc else ''}{first['msg']} ({err.error_count()} error(s))"
        ) from None
    except SystemExit:
        raise SpecUnreadable(f"{file}: the spec exited while loading; a spec file only defines `estate`") from None
    except Exception as err:  # the user's code: report its own message, one line
        where = _python_line(err, str(Path(path).resolve())) or file
        detail = str(err).splitlines()[0] if str(err) else ""
        name = type(err).__name__
        raise SpecUnreadable(f"{where}: {name}{': ' + detail if detail else ''}") from None
    if "estate" not in namespace:
        raise SpecUnreadable(f"{file}: defines no `estate`; end the file with `estate = Estate(...)`")
    return namespace["estate"]


def _python_line(err: BaseException, file: str) -> str | None:
    tb = err.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{_display(Path(file))}:{line}" if line else None
