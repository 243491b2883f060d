"""The YAML reference of the spec, generated from the model (the README embeds it; a test keeps it true)."""

from __future__ import annotations

import types
import typing
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dr.duration import format_duration
from dr.model import Estate
from dr.validate import models_in


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " \\| ".join(dict.fromkeys(names))
        return text
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if annotation is timedelta:
        return "duration (15m, 24h, 3d)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ in ("EnvRef", "FileRef"):
            return "{" + ("env: VAR" if annotation.__name__ == "EnvRef" else "file: path") + "}"
        return annotation.__name__
    return {str: "text", int: "integer", float: "number", bool: "true \\| false"}.get(annotation, str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, BaseModel):
        return "(defaults)"
    if value in ([], {}, None):
        return "—"
    if isinstance(value, list) and len(value) > 3:
        return "all"
    return f"`{value}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for info in model.model_fields.values():
            for nested in models_in(info.annotation):
                visit(nested)

    visit(root)
    return [m for m in seen if m.__name__ not in ("EnvRef", "FileRef")]


def markdown_reference() -> str:
    """One table per model: key, type, default, meaning."""
    parts = []
    for model in _models(Estate):
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        parts.append(f"#### `{model.__name__}`" + (f": {doc}" if doc and model is not Estate else ""))
        parts.append("")
        parts.append("| key | type | default | meaning |")
        parts.append("| --- | --- | --- | --- |")
        for name, info in model.model_fields.items():
            key = info.alias or name
            meaning = (info.description or "").replace("|", "\\|")
            parts.append(f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {meaning} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
