"""The training knobs of the Dagster retrain config, generated from `lumen_model.train_config`.

Each knob that `TrainConfig` marks as shared (learning rate, weight decay, hflip, ...) becomes a
Launchpad field of the same name, default, description and allowed values, so the CLI and Dagster
cannot drift apart: a knob's `choices` become a `Literal[...]` (an enum the Launchpad itself
refuses to launch with a wrong value) and its declared range becomes `Field(ge=/gt=/le=)`.
The Launchpad has no "null", so a knob whose default is None shows as "" and goes back to None on
the way into `TrainConfig`.

Dagster checks types and enums before a run starts, but pydantic ranges only when the step builds
its config; `CheckedConfig` turns pydantic's multi-line report into one `dg.Failure` line there,
before any slow work.
"""


import dataclasses
from typing import Literal

import dagster as dg
import pydantic
from pydantic import Field

from lumen_model.train_config import knob_bounds, knob_type, shared_fields


class CheckedConfig(dg.Config):
    """A Dagster config whose bad values fail the step in one line naming each bad setting."""

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data, handler):
        try:
            return handler(data)
        except pydantic.ValidationError as e:
            raise dg.Failure(f"{config_name(cls)}: {describe_errors(e)}", allow_retries=False) from None


def config_name(cls) -> str:
    return {"RetrainConfig": "retrain config", "EvaluationConfig": "evaluation config",
            "PseudoLabelConfig": "pseudo_labels config"}.get(cls.__name__, cls.__name__)


def describe_errors(e: pydantic.ValidationError) -> str:
    """`lr=-1: must be > 0; hflip=1.5: must be <= 1` (pydantic's words, one line)."""
    parts = []
    for err in e.errors():
        name = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].replace("Value error, ", "").replace("Input should be ", "must be ").replace("greater than or equal to", ">=") \
            .replace("less than or equal to", "<=").replace("greater than", ">").replace("less than", "<")
        parts.append(f"{name}={err.get('input')!r}: {msg}")
    return "; ".join(parts)


def _launchpad_field(f: dataclasses.Field) -> tuple[type, object]:
    want = knob_type(f)
    default = "" if f.default is None else f.default
    if want is list:  # a literal default: the Launchpad shows no default_factory
        return list[str], Field(default=list(default or []), description=f.metadata["help"])
    if f.metadata.get("choices"):
        want = Literal[tuple(f.metadata["choices"])]
    return want, Field(default=default, description=f.metadata["help"], **knob_bounds(f))


TrainingKnobs = pydantic.create_model(
    "TrainingKnobs", __base__=CheckedConfig, __module__=__name__,
    **{f.name: _launchpad_field(f) for f in shared_fields()})
TrainingKnobs.__doc__ = "The shared training knobs (lumen_model.train_config.TrainConfig)."


def knob_values(config: TrainingKnobs) -> dict:
    """The shared knobs of a Dagster config as `TrainConfig` keyword arguments."""
    return {f.name: (None if f.default is None and getattr(config, f.name) == "" else getattr(config, f.name))
            for f in shared_fields()}
