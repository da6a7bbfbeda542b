"""Dataclass configs with a help text per field, loaded strictly from dicts."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with the help text that `tarflow ... --help` shows."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_choices(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ConfigError(f"{f.name}={getattr(config, f.name)!r} is not allowed; choose one of {list(choices)}")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unknown_field_error(name: str, known: list[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {what} field {name!r}.{hint} Known fields: {', '.join(sorted(known))}")


def from_dict(cls: type[C], values: dict[str, Any], what: str = "config") -> C:
    """Build ``cls`` from a dict; unknown keys are an error, not silently dropped."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise unknown_field_error(key, known, what)
    return cls(**values)
