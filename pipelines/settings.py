"""Settings: one typed, validated model per front, from which the `lumen` flags and the Dagster configs come.

Each group of settings (training, prediction, pseudo-labels, review, evaluation) is a pydantic model
defined once: name, type, default, help (`description`), allowed values (`Literal[...]`) and range
(`Field(ge=/gt=/le=)`). The CLI gets its flags from it (`add_arguments`: `--kebab-name`, the type,
the default, the help, the choices, `--x/--no-x` for a bool) and the Dagster layer derives its
`Config` classes from the same fields (`assets_defs/settings.py`), so a default cannot differ
between the fronts. A bad value is one line naming the setting (`describe_errors`), never pydantic's
multi-line report or a traceback.

Where they live: training and prediction settings in `lumen_model/`, review, pseudo-label and
evaluation settings in `pipelines/`; `assets_defs/` only derives Dagster configs from them.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import InputError


class InvalidSettings(InputError, ValueError):
    """A setting of the wrong type or outside its allowed values (one line, no traceback); `detail` is the
    line without the front's prefix (`lr=-1.0: must be > 0.0`)."""

    detail = ""


class Settings(BaseModel):
    """A front's settings. Strict: "16" is not an int and "yes" not a bool (an int is a float);
    unknown names are refused. A bad value raises `error` with one line naming each bad setting."""

    model_config = ConfigDict(strict=True, extra="forbid")
    label: ClassVar[str] = "setting"  # "invalid <label> lr=-1.0: must be > 0.0"
    error: ClassVar[type[InvalidSettings]] = InvalidSettings

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except pydantic.ValidationError as e:
            detail = describe_errors(type(self), e, data)
            err = self.error(f"invalid {self.label} {detail}")
            err.detail = detail
            raise err from None


# -- one definition of the settings several fronts share ------------------------------------------------------

FLIP_TTA_HELP = ("detection / instance segmentation: also predict on each image's mirror image and fuse the two "
                 "(tighter boxes, fewer false positives; twice the passes)")
# flip TTA is one setting with two defaults, one per purpose:
PREDICT_FLIP_TTA = False  # `lumen predict`, `lumen ask`, evaluation: one view, the metrics the registry compares
PSEUDO_LABEL_FLIP_TTA = True  # pseudo-labels (and the review thresholds chosen for them): labelers get the fused boxes


def flip_tta_field(default: bool):
    return Field(default=default, description=FLIP_TTA_HELP)


def batch_size_field(default: int = 16):
    return Field(default=default, ge=1, description="instructions per forward pass")


# -- one-line errors ---------------------------------------------------------------------------------------------

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def describe_errors(model: type[BaseModel], error: pydantic.ValidationError, data: Mapping | None = None) -> str:
    """`lr=-1.0: must be > 0.0; hflip=1.5: must be within [0.0, 1.0]`: one part per bad setting."""
    parts, seen = [], set()
    for err in error.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name and name in seen:  # one part per setting (a list with two bad items)
            continue
        seen.add(name)
        parts.append(_describe(model, name, err, data or {}))
    return "; ".join(parts)


def _describe(model: type[BaseModel], name: str, err: dict, data: Mapping) -> str:
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    field = model.model_fields.get(name)
    if not name or field is None:
        return f"{name}: unknown setting" if kind == "extra_forbidden" else msg
    if kind == "missing":
        return f"{name}: required"
    value = err["input"] if len(err["loc"]) == 1 else data.get(name, err["input"])
    if kind in _RANGE_ERRORS:
        bounds = field_bounds(model, name)
        if any(isinstance(b, float) for b in bounds.values()) and type(value) is int:
            value = float(value)  # the setting holds a float: compare in its type
        problem = _range_text(bounds)
    elif kind == "literal_error":
        problem = "expected one of " + ", ".join(map(str, get_args(plain_type(field.annotation))))
    elif kind == "too_short":
        problem = f"must hold at least {err['ctx']['min_length']}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        problem = f"expected {_type_name(field.annotation)}"
    else:
        problem = msg.replace("Input should be ", "must be ")
    return f"{name}={value!r}: {problem}"


def _range_text(b: dict) -> str:
    if "ge" in b and "le" in b:
        return f"must be within [{b['ge']}, {b['le']}]"
    return " and ".join(f"must be {op} {b[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                     if k in b)


def field_bounds(model: type[BaseModel], name: str) -> dict:
    """The declared range of a setting, as `Field` takes it: {"ge": 0.0, "le": 1.0}."""
    out = {}
    for m in model.model_fields[name].metadata:
        for k in ("ge", "gt", "le", "lt"):
            if getattr(m, k, None) is not None:
                out[k] = getattr(m, k)
    return out


def plain_type(annotation):
    """`X | None` -> X."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _type_name(annotation) -> str:
    t = plain_type(annotation)
    if get_origin(t) is list:
        return "a list of strings" if get_args(t) == (str,) else "a list"
    return getattr(t, "__name__", str(t))


# -- the command line ----------------------------------------------------------------------------------------

def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, model: type[BaseModel], names: Iterable[str] | None = None) -> None:
    """One flag per setting: `--kebab-name`, its type, default, help, choices (a `Literal`), required when the
    model has no default; a bool is `--x/--no-x`. Values are checked when the model is built from them."""
    for name in names or model.model_fields:
        f = model.model_fields[name]
        t = plain_type(f.annotation)
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        kw: dict[str, Any] = dict(dest=name, help=f.description or "")
        if default is not None:
            kw["help"] += f" (default: {'on' if default else 'off'})" if t is bool else " (default: %(default)s)"
        if t is bool:
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, **kw)
            continue
        if get_origin(t) is list:
            kw.update(nargs="+", type=get_args(t)[0])
        elif get_origin(t) is Literal:
            choices = get_args(t)
            kw.update(type=type(choices[0]), choices=choices)
        else:
            kw.update(type=t)
        parser.add_argument(flag(name), default=default, required=f.is_required(), **kw)


def values_from_args(args: argparse.Namespace, model: type[BaseModel], names: Iterable[str] | None = None) -> dict:
    return {n: getattr(args, n) for n in (names or model.model_fields)}


def to_argv(settings: BaseModel, names: Iterable[str]) -> list[str]:
    """The flags (of `add_arguments`) that give these values back; a None value is left out (its default)."""
    argv = []
    for name in names:
        v = getattr(settings, name)
        if isinstance(v, bool):
            argv.append(flag(name) if v else "--no-" + name.replace("_", "-"))
        elif isinstance(v, list):
            argv += [flag(name), *map(str, v)] if v else []
        elif v is not None:
            argv += [flag(name), repr(v) if isinstance(v, float) else str(v)]
    return argv


def defaults(model: type[BaseModel]) -> dict:
    """Every setting's default (None where the model requires a value)."""
    return {n: (None if f.is_required() else f.get_default(call_default_factory=True))
            for n, f in model.model_fields.items()}
