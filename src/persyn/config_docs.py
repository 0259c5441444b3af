"""docs/config.md, generated from the config models (their docstrings and `Field(description=...)`): the models are
the source of truth, and a test fails when the file is stale. `persyn config-docs` rewrites it."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from persyn.config import RunConfig

DOC = Path("docs") / "config.md"
HEADER = """# Configuration reference

Generated from the pydantic models in `src/persyn/config/` by `persyn config-docs`; do not edit by hand.
A run's YAML mirrors these models: unknown keys and wrong types are errors naming the key. Every run writes its
config with all defaults filled in to `run_dir/config.resolved.yaml`.
"""


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(a) for a in args)}]"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _bounds(info: FieldInfo) -> str:
    parts = [f"{sym} {getattr(m, attr)}" for m in info.metadata for attr, sym in _BOUNDS.items()
             if getattr(m, attr, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _models(tp: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (X, X | None, list[X])."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models(a)]


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(path, model)]
    for name, info in model.model_fields.items():
        for sub in _models(info.annotation):
            is_list = typing.get_origin(info.annotation) is list
            out += _sections(sub, f"{path}.{name}{'[]' if is_list else ''}" if path else
                             f"{name}{'[]' if is_list else ''}")
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole reference as Markdown, one section per model in the order the YAML nests them."""
    chunks = [HEADER]
    for path, model in _sections(RunConfig, ""):
        chunks.append(f"\n## `{path or '(top level)'}`\n")
        doc = (model.__doc__ or "").strip()
        if doc and model is not RunConfig and not doc.startswith(("Usage docs", "!!! abstract")):
            chunks.append(f"\n{_cell(doc)}\n")
        if model.model_config.get("extra") == "allow":
            chunks.append("\nFurther keys are allowed and passed on.\n")
        chunks.append("\n| key | type | default | description |\n|---|---|---|---|\n")
        for name, info in model.model_fields.items():
            chunks.append(f"| `{name}` | {_type(info.annotation)}{_bounds(info)} | {_default(info)} | "
                          f"{_cell(info.description or '')} |\n")
    return "".join(chunks)


def undocumented() -> list[str]:
    """Dotted keys of config fields declared without a description."""
    return [f"{path}.{name}" if path else name for path, model in _sections(RunConfig, "")
            for name, info in model.model_fields.items() if not (info.description or "").strip()]


def write(path: Path = DOC) -> bool:
    """Write the reference; returns whether the file changed."""
    text = render()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True
