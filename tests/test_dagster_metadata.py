"""What the Dagster UI shows people: rounded numbers, inline tables, a loss line, smoothing per loss."""

import numpy as np

from assets_defs.metadata import number, sparkline, table
from lumen_model.train import smoothing_window


def test_numbers_are_rounded_for_people():
    assert number(1092.0) == 1092 and isinstance(number(1092.0), int)
    assert number(48.73265642748278) == 48.7
    assert number(0.00012345) == 0.000123
    assert number(7) == 7 and number(True) is True and number("x") == "x"


def test_tables_are_inline_tables_with_typed_columns():
    t = table([{"metric": "bbox/AP50", "value": 0.87654, "n": 12.0}, {"metric": "vqa/accuracy", "value": None, "n": 3}])
    cols = {c.name: c.type for c in t.value.schema.columns}
    assert cols == {"metric": "string", "value": "float", "n": "int"}
    assert t.value.records[0].data == {"metric": "bbox/AP50", "value": 0.877, "n": 12}


def test_loss_sparkline_fits_the_ui_inline_limit():
    md = sparkline(list(np.linspace(10, 1, 1200) + np.random.default_rng(0).normal(0, 0.5, 1200)), "loss")
    assert len(md.value) < 1000  # the UI draws markdown inline only below 1,000 characters
    assert "data:image/svg+xml;base64," in md.value


def test_noisy_losses_get_wider_windows():
    rng = np.random.default_rng(0)
    trend = np.linspace(5, 1, 300)
    quiet, noisy = trend + rng.normal(0, 0.01, 300), trend + rng.normal(0, 1.0, 300)
    assert smoothing_window(list(quiet)) < smoothing_window(list(noisy))
    assert smoothing_window(list(noisy)) >= 30  # 300 steps of this noise: the old len/50 = 6 left noise
