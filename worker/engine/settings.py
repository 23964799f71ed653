"""A setting's one definition: name, type, default, bounds and help, and every face derived from it.

The model's and the run's settings are dataclass fields declared with `setting(...)` (config.py). From
those fields alone come the API's request schemas (`request_model`: every field optional, the same
bounds), `/jobs/defaults`, the engine's own check (`check_settings`, a ConfigError naming the setting)
and the command line's options (worker/engine/cli.py). tests/test_faces.py holds the README and the
dashboard to the same list. Torch-free: the API imports it.

    seq_len: int = setting(32, "characters of backprop per window", ge=1, le=4096)
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from worker.engine.errors import ConfigError

_KEY = "charrnn.setting"


@dataclass(frozen=True)
class Setting:
    """One setting as its definition gives it; `type` is int, float or str, `choices` a Literal's values."""

    name: str
    type: type
    optional: bool  # None is a value: no such limit, or chosen when the run starts
    choices: tuple[str, ...] | None
    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def bounds(self) -> str:
        """The bounds in words: "at least 1 and at most 4096"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        words = [w for w in (
            f"at least {_number(self.ge)}" if self.ge is not None else "",
            f"above {_number(self.gt)}" if self.gt is not None else "",
            f"at most {_number(self.le)}" if self.le is not None else "",
            f"below {_number(self.lt)}" if self.lt is not None else "",
        ) if w]
        return " and ".join(words)

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this setting, naming it and its bounds, or None if it is fine."""
        reason = self.reason(value)
        return f"{self.name}: {reason}" if reason else None

    def reason(self, value: Any) -> str | None:
        """What is wrong with `value` ("got 0; it must be a whole number at least 1 ..."), or None."""
        if value is None:
            return None if self.optional else "a value is required"
        if self.choices:
            ok = value in self.choices
        elif self.type is str:
            ok = isinstance(value, str)
        else:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and (self.type is float or float(value).is_integer())
                  and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if ok:
            return None
        kind = {int: "a whole number", float: "a number", str: "text"}[self.type]
        what = self.bounds() if self.choices else " ".join(w for w in (kind, self.bounds()) if w)
        return f"got {value!r}; it must be {what}"

def field_bounds(info: FieldInfo) -> str:
    """A pydantic field's bounds in the words Setting.bounds() uses ("at least 0 and at most 10")."""
    words = [f"{word} {_number(getattr(m, attr))}" for m in info.metadata
             for attr, word in (("ge", "at least"), ("gt", "above"), ("le", "at most"), ("lt", "below"))
             if getattr(m, attr, None) is not None]
    return " and ".join(words)


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def setting(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field that is a user-facing setting: its default, help and bounds, written once."""
    return field(default=default, metadata={_KEY: {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}})


@cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of a dataclass, in declaration order (fields not declared with `setting` are not)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if _KEY not in f.metadata:
            continue
        annotation, optional = hints[f.name], False
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional, annotation = len(args) < len(typing.get_args(annotation)), args[0]
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None
        base = str if choices else annotation
        default = None if f.default is MISSING else f.default
        out.append(Setting(f.name, base, optional, choices, default, **f.metadata[_KEY]))
    return tuple(out)


def setting_named(cls: type, name: str) -> Setting:
    return next(s for s in settings_of(cls) if s.name == name)


def check_settings(obj: Any) -> None:
    """Raise ConfigError for the first setting of `obj` (a dataclass instance) outside its bounds."""
    for s in settings_of(type(obj)):
        problem = s.problem(getattr(obj, s.name))
        if problem:
            raise ConfigError(problem)


def annotation_of(s: Setting) -> Any:
    return Literal[s.choices] if s.choices else s.type  # Literal[("a", "b")] is Literal["a", "b"]


def request_model(name: str, cls: type, describe, doc: str, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic request body with every setting of `cls` (bar `exclude`) optional (None: the default),
    bounded as the definition says; `describe(setting)` writes each field's description."""
    definitions = {
        s.name: (annotation_of(s) | None, Field(None, ge=s.ge, gt=s.gt, le=s.le, lt=s.lt, description=describe(s)))
        for s in settings_of(cls) if s.name not in exclude
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **definitions)
