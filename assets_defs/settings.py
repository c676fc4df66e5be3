"""Dagster configs derived from the settings models (`pipelines/settings.py`): nothing is redefined here.

`dagster_config(name, SettingsModel, names)` builds a `dg.Config` (itself a pydantic model) with
`pydantic.create_model(__base__=CheckedConfig)` from the settings model's own fields: the same
names, types, defaults, descriptions, `Literal` choices and `Field` ranges as the `lumen` flags.
(Subclassing both `dg.Config` and the settings model would mix two model configs, strict and
Dagster's own, and two `__init__`s; copying the fields keeps each model what it is.)

What the Launchpad can and cannot check (Dagster 1.13, verified in tests/test_settings.py):
- checked before the run is launched: the types (a string for a float is refused) and the
  choices of a `Literal`, which Dagster turns into an enum (`stage: '3'`, `preset: huge`);
- not checked there: ranges (`Field(ge=/gt=/le=)`) and the settings models' own validators
  (`lr: -1`, `hflip: 1.5`, `stage1_steps: 0`, an unknown evaluation task). Dagster's config
  schema has no ranges; pydantic checks them when the step builds its config, the first thing
  the step does, and `CheckedConfig` turns that into one `dg.Failure` line naming each bad
  setting (no retry, before any slow work). Settings that need the instance (an unknown source
  partition) are checked by the asset as it starts.

The Launchpad has no "null", so a setting whose default is None (a `str | None`) shows as "" and
goes back to None on the way into the settings model (`settings_values`).
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import ClassVar

import dagster as dg
import pydantic
from pydantic import BaseModel, Field

from lumen_model.train_config import TrainConfig
from pipelines.settings import InvalidSettings, describe_errors, field_bounds, plain_type

# the retrain's size, as the `retrain` job's config and the corrections loop's `LoopRetrain` resource both take it
RETRAIN_STAGES = ("1+2", "1", "2")
RETRAIN_STEPS_RANGE = field_bounds(TrainConfig, "max_steps")


class CheckedConfig(dg.Config):
    """A Dagster config whose bad values fail the step in one line naming each bad setting."""

    label: ClassVar[str] = ""  # "retrain config: lr=-1.0: must be > 0.0"
    settings_model: ClassVar[type[BaseModel] | None] = None  # what it was derived from
    settings_names: ClassVar[tuple[str, ...]] = ()  # its fields that are settings of that model
    validate_whole: ClassVar[bool] = False  # it holds every setting of the model: run the model's own validators

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data, handler):
        try:
            config = handler(data)
            if cls.settings_model is not None and cls.validate_whole:
                cls.settings_model(**settings_values(config))  # its own validators: field copies do not carry them
            return config
        except pydantic.ValidationError as e:
            described = describe_errors(cls, e, data if isinstance(data, Mapping) else None)
        except InvalidSettings as e:
            described = e.detail
        raise dg.Failure(f"{cls.label or cls.__name__}: {described}", allow_retries=False)


def _launchpad_field(f) -> tuple[object, object]:
    """A settings field as a Launchpad field: the same type, default, description and range."""
    ann, plain = f.annotation, plain_type(f.annotation)
    default = ... if f.is_required() else f.get_default(call_default_factory=True)  # a literal list: no factory
    if plain is not ann and default is None:
        if plain is not str:
            raise TypeError(f"{f}: the Launchpad has no null; only a str | None setting maps to ''")
        ann, default = str, ""
    # the constraints as Field keywords (ge=0.0, min_length=1); not Annotated[float, Gt(0.0)], which typing's cache
    # may hand back as an earlier, equal Annotated[float, Gt(0)]
    constraints = {k: v for m in f.metadata for k, v in dataclasses.asdict(m).items()}
    return ann, Field(default=default, description=f.description, **constraints)


def dagster_config(name: str, settings: type[BaseModel], names: Iterable[str] | None = None, *, label: str,
                   doc: str, module: str) -> type[CheckedConfig]:
    """The `dg.Config` of these settings of `settings` (all of them when `names` is None)."""
    names = list(names or settings.model_fields)
    cls = pydantic.create_model(name, __base__=CheckedConfig, __module__=module, __doc__=doc,
                                **{n: _launchpad_field(settings.model_fields[n]) for n in names})
    cls.label, cls.settings_model, cls.settings_names = label, settings, tuple(names)
    cls.validate_whole = set(names) == set(settings.model_fields)
    return cls


def settings_values(config: CheckedConfig) -> dict:
    """The settings of a derived Dagster config as the settings model's keyword arguments ("" -> None)."""
    fields = type(config).settings_model.model_fields
    out = {}
    for n in type(config).settings_names:
        v, f = getattr(config, n), fields[n]
        out[n] = None if v == "" and not f.is_required() and f.get_default() is None else v
    return out
