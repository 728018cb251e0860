"""Settings from environment variables, declared once and checked at start.

A process's settings are a frozen dataclass composed of the groups it reads (the Redis
names, the simulation, the logs, its own). Each field is one variable, its name upper-cased;
its value is converted by the field's declared type (int, float, str, or one of them or
None), and its checks are declared with it (`setting(default, POSITIVE, ...)`). A bad value
stops the process with one line naming the variable, what it got and what it accepts.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Self, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad environment variable; the message names it and says what is allowed."""


class Check(NamedTuple):
    """One declared check of a field's value, and what the message says it accepts."""

    passes: Callable[[Any], bool]
    accepts: str


POSITIVE = Check(lambda value: value > 0, "positive")


def non_negative(zero_means: str = "") -> Check:
    """0 or more; `zero_means` says what 0 does, for the message: `0 (never stale) or positive`."""
    meaning = f"({zero_means}) " if zero_means else ""
    return Check(lambda value: value >= 0, f"0 {meaning}or positive")


def within(low: float, high: float, accepts: str) -> Check:
    return Check(lambda value: low <= value <= high, accepts)


def setting(default: T, *checks: Check) -> T:
    """A field with its default and the checks its value must pass (a float must also be
    finite, always)."""
    result: T = field(default=default, metadata={"checks": checks})
    return result


@dataclass(frozen=True)
class SettingsGroup:
    """The base of every group: `from_env` and the checks of single fields. A group with
    checks across its fields overrides `check` and calls `super().check()` first. Frozen,
    without slots: a process's settings inherit from several groups, which slots forbid."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            convert = _converter(f.name, hints[f.name])
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = convert(raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every value, before anything starts: a bad one raises ConfigError naming it,
        what it got and what it accepts (one line)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise refused(f.name, "a finite number", value)
            if value is None:
                continue
            for check in f.metadata.get("checks", ()):
                if not check.passes(value):
                    raise refused(f.name, check.accepts, value)


def _converter(name: str, hint: Any) -> Callable[[str], Any]:
    """The field's type, without None: int and float are parsed, str taken as it is."""
    kinds = [k for k in get_args(hint) if k is not type(None)] if _is_union(hint) else [hint]
    if kinds == [str]:
        return lambda raw: raw
    if kinds in ([int], [float]):
        kind = kinds[0]
        expected = "an integer" if kind is int else "a number"

        def convert(raw: str) -> Any:
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name.upper()} must be {expected}, got {raw!r}") from None

        return convert
    raise TypeError(f"setting {name}: no conversion from the environment for {hint!r}")


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or get_origin(hint) is Union


def one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def refused(name: str, accepts: str, got: object, why: str | None = None) -> ConfigError:
    """`NAME must be ACCEPTS, got VALUE[ (WHY)]`: the one line a bad setting gets."""
    because = f" ({why})" if why else ""
    return ConfigError(f"{name.upper()} must be {accepts}, got {_shown(got)}{because}")
