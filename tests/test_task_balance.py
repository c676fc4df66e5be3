"""`balance_tasks`: rare tasks' rows repeated per epoch (repeat-factor sampling over tasks)."""

from __future__ import annotations

import collections

from lumen_model.train import TrainConfig, plan_training, task_repeats


def test_a_rare_task_is_repeated_by_the_square_root_of_its_shortfall():
    rows = ["referring_segmentation"] * 2628 + ["instance_segmentation"] * 1304 + ["pose"] * 140  # the demo's stage 2
    assert task_repeats(rows) == {"referring_segmentation": 1, "instance_segmentation": 1, "pose": 3}
    assert task_repeats(["vqa"] * 5) == {"vqa": 1}
    assert task_repeats(["detection"] * 50 + ["pose"] * 50) == {"detection": 1, "pose": 1}  # balanced: as is


def test_training_sees_the_rare_tasks_rows_more_often_and_nothing_else_changes(model_shard_dirs, tmp_path):
    def rows(balance: bool):
        cfg = TrainConfig(stage=2, preset="tiny", shards=list(model_shard_dirs), out=str(tmp_path / str(balance)),
                          max_steps=1, balance_tasks=balance, progress=False)
        plan = plan_training(cfg)
        tasks = plan.dataset.column("task").to_pylist()
        return collections.Counter(tasks[i] for i in plan.keep), dict(collections.Counter(zip(plan.keep, plan.groups)))

    (plain, plain_groups), (balanced, balanced_groups) = rows(False), rows(True)
    reps = task_repeats(list(plain.elements()))
    assert max(reps.values()) > 1, plain  # the fixture has a rare task, or this test shows nothing
    assert balanced == {t: n * reps[t] for t, n in plain.items()}
    # every repeat keeps its row's image group (the batch still encodes each image once)
    assert set(balanced_groups) == set(plain_groups)
