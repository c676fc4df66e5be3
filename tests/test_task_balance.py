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
        decoders = [(i, g) for i, g in zip(plan.keep, plan.groups) if tasks[i] != "vqa"]  # questions: own share
        return collections.Counter(tasks[i] for i, _ in decoders), dict(collections.Counter(decoders))

    (plain, plain_groups), (balanced, balanced_groups) = rows(False), rows(True)
    reps = task_repeats(list(plain.elements()))
    assert max(reps.values()) > 1, plain  # the fixture has a rare task, or this test shows nothing
    assert balanced == {t: n * reps[t] for t, n in plain.items()}
    # every repeat keeps its row's image group (the batch still encodes each image once)
    assert set(balanced_groups) == set(plain_groups)


def test_stage2_questions_are_short_answer_ones_at_their_share(model_shard_dirs, tmp_path):
    """Stage 2 trains the VQA readout on VQAv2's short-answer questions only, at most `question_share` of its
    rows, so that the decoders keep their places in the batches; 0 leaves them out."""
    def plan_rows(share: float):
        cfg = TrainConfig(stage=2, preset="tiny", shards=list(model_shard_dirs), out=str(tmp_path / str(share)),
                          max_steps=1, question_share=share, progress=False)
        plan = plan_training(cfg)
        tasks, sources = plan.dataset.column("task").to_pylist(), plan.dataset.column("source").to_pylist()
        return [(tasks[i], sources[i]) for i in plan.keep], plan

    rows, plan = plan_rows(0.1)
    questions = [src for task, src in rows if task == "vqa"]
    assert questions and set(questions) == {"vqav2"}
    assert abs(len(questions) / len(rows) - 0.1) < 0.01
    assert len(plan.groups) == len(plan.keep)
    none, _ = plan_rows(0.0)
    assert [r for r in rows if r[0] != "vqa"] == none  # the decoders' rows do not depend on the questions
