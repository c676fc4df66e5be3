"""The training knobs of the Dagster retrain config, generated from `lumen_model.train_config`.

Each knob that `TrainConfig` marks as shared (learning rate, weight decay, hflip, ...) becomes a
Launchpad field of the same name, default and description, so the CLI and Dagster cannot drift
apart. The Launchpad has no "null", so a knob whose default is None shows as "" and goes back to
None on the way into `TrainConfig`.
"""


import dataclasses

import dagster as dg
import pydantic
from pydantic import Field

from lumen_model.train_config import knob_type, shared_fields


def _launchpad_field(f: dataclasses.Field) -> tuple[type, object]:
    want = knob_type(f)
    default = "" if f.default is None else f.default
    if want is list:  # a literal default: the Launchpad shows no default_factory
        return list[str], Field(default=list(default or []), description=f.metadata["help"])
    return want, Field(default=default, description=f.metadata["help"])


TrainingKnobs = pydantic.create_model(
    "TrainingKnobs", __base__=dg.Config, __module__=__name__,
    **{f.name: _launchpad_field(f) for f in shared_fields()})
TrainingKnobs.__doc__ = "The shared training knobs (lumen_model.train_config.TrainConfig)."


def knob_values(config: TrainingKnobs) -> dict:
    """The shared knobs of a Dagster config as `TrainConfig` keyword arguments."""
    return {f.name: (None if f.default is None and getattr(config, f.name) == "" else getattr(config, f.name))
            for f in shared_fields()}
