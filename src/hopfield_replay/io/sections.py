"""The building blocks of the params sections: ``Section`` (unknown, missing, mistyped and non-finite values are
errors), ``RuleError`` (a broken rule naming its field) and the shared field types. ``config`` assembles the
sections of params.yaml from them."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RuleError(ValueError):
    """A broken rule (a cross-field rule, a missing or unknown key): names the field (relative to its section) for
    the one-line message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


MISSING_HINT = "copy it from the shipped params.yaml (git show HEAD:params.yaml)"


class Section(BaseModel):
    """A params section: unknown keys, missing keys (a field without a default), wrong types (no silent coercion)
    and NaN/inf are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)
    unknown_key: ClassVar[str] = "unknown key"  # what an unknown key is called in the one-line error

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data):
        """An unknown key first (a misspelt key is often the missing one), then the first missing field, in one line
        each (pydantic's own 'Field required' would show the whole section)."""
        if not isinstance(data, dict):
            return data
        for key in data:
            if key not in cls.model_fields:
                raise RuleError(str(key), f"{cls.unknown_key}; known: {', '.join(cls.model_fields)}")
        for name, field in cls.model_fields.items():
            if field.is_required() and name not in data:
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                    raise RuleError(name, f"section missing; {MISSING_HINT}, or select a profile: python -m "
                                          "tools.profile")
                raise RuleError(name, f"missing; every parameter is set in the params file (none has a default): "
                                      f"{MISSING_HINT}")
        return data


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Timestep = Annotated[int, Field(ge=0, le=999)]


def distinct(values: list, what: str) -> list:
    """``values`` unchanged, or a ValueError when one is listed twice."""
    if len(set(values)) != len(values):
        raise ValueError(f"{values} lists {what} twice")
    return values
