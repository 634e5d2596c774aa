"""Pydantic's validation errors turned into one :class:`~runtime.errors.ConfigError` that names the key,
the problem and the fix (the closest known key for a misspelt one, the allowed values, the field's
description)."""

from __future__ import annotations

import difflib
import enum
import typing
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from runtime.errors import ConfigError

__all__ = ["validate_model"]

ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_model(model: type[ModelT], data: Any, *, prefix: str = "") -> ModelT:
    """``model.model_validate(data)``, with a :class:`ValidationError` turned into one :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _config_error(model, exc, prefix=prefix) from None


def _config_error(model: type[BaseModel], exc: ValidationError, *, prefix: str = "") -> ConfigError:
    """The :class:`ConfigError` for a pydantic error: the first problem in full, the others listed after it."""
    described = [_describe(model, error, prefix) for error in exc.errors(include_url=False, include_input=False)]
    key, problem, fix = described[0]
    if len(described) > 1:
        fix += ". Other problems: " + "; ".join(f"'{k}': {p} (fix: {f})" for k, p, f in described[1:])
    return ConfigError(key, problem, fix)


def _describe(model: type[BaseModel], error: Any, prefix: str) -> tuple[str, str, str]:
    loc = [str(part) for part in error["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or (prefix or "(top level)")
    problem = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    parent, field = _field_at(model, loc)
    if kind == "extra_forbidden":
        known = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return key, "unknown key", f"{hint}remove it; the keys here are: {', '.join(known) or 'none'}"
    description = (field.description or "").rstrip(".") if field is not None else ""
    allowed = _allowed_values(field)
    if kind == "missing":
        fix = f"set it ({description})" if description else "set it"
    elif allowed:
        fix = f"use one of {', '.join(allowed)}"
    elif description:
        fix = f"give a valid value: {description}"
    else:
        fix = "give a value of the expected type"
    return key, problem, fix


def _field_at(model: type[BaseModel], loc: list[str]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last key of ``loc`` and that key's field (``None`` where the path leaves the models)."""
    owner: type[BaseModel] | None = model
    for depth, part in enumerate(loc):
        if owner is None:
            return None, None
        field = owner.model_fields.get(part)
        if depth == len(loc) - 1:
            return owner, field
        owner = _model_of(field)
    return owner, None


def _model_of(field: FieldInfo | None) -> type[BaseModel] | None:
    if field is None:
        return None
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _allowed_values(field: FieldInfo | None) -> list[str]:
    if field is None:
        return []
    annotation = field.annotation
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if typing.get_origin(candidate) is Literal:
            return [repr(value) for value in typing.get_args(candidate)]
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [repr(member.value) for member in candidate]
    return []
