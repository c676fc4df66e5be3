"""The unlabeled pool in partitions (issue 33): the rule, the planner, the sensor, per-partition labels."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import InputError
from pipelines.pool_partitions import (assign, partition_images, plan_pool, read_assignments, read_plan,
                                       read_quarantine)

CATS = [{"id": 1, "name": "square"}, {"id": 2, "name": "star"}]


def pool_json(path, images, categories=CATS):
    path.write_text(json.dumps({"images": images, "categories": categories}))
    return path


def images(lo, hi):
    return [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(lo, hi)]


def test_the_rule_is_stable_under_growth_and_bounded(tmp_path):
    plan_dir = tmp_path / "plan"
    first = plan_pool([pool_json(tmp_path / "a.json", images(0, 250))], plan_dir, max_size=100)
    assert first.new_partitions == ["pool-0000", "pool-0001", "pool-0002"]
    assert sorted(first.partitions.values()) == [50, 100, 100]
    before = dict(zip(*(read_assignments(plan_dir).column(c).to_pylist() for c in ("file_name", "partition"))))

    # the pool grows (the old images listed again, in another order, plus 130 new ones)
    grown = images(0, 380)[::-1]
    second = plan_pool([pool_json(tmp_path / "b.json", grown)], plan_dir, max_size=100)
    after = dict(zip(*(read_assignments(plan_dir).column(c).to_pylist() for c in ("file_name", "partition"))))
    assert {n: after[n] for n in before} == before  # no image moved
    assert second.images_known == 250 and second.images_new == 130
    assert second.new_partitions == ["pool-0003", "pool-0004"]  # new images open new partitions only
    assert max(second.partitions.values()) <= 100 and sum(second.partitions.values()) == 380
    assert partition_images(plan_dir, "pool-0000") == json.loads((plan_dir / "partitions/pool-0000.json").read_text())

    # re-planning the same file writes nothing and adds nothing
    stamp = (plan_dir / "manifest.json").stat().st_mtime_ns
    third = plan_pool([tmp_path / "b.json"], plan_dir, max_size=100)
    assert third.new_partitions == [] and third.images_known == 380
    assert (plan_dir / "manifest.json").stat().st_mtime_ns == stamp


def test_the_order_of_the_pool_file_does_not_matter():
    names = [f"{i}.jpg" for i in range(30)]
    assert assign(names, 0, 7) == assign(names[::-1], 0, 7)


def test_bad_records_are_quarantine_rows_saying_why(tmp_path):
    bad = [{"id": 1, "file_name": "ok.jpg"},
           {"id": "2", "file_name": "a.jpg"},  # id not a number
           {"id": 3, "file_name": "../etc/passwd"},  # outside the images folder
           {"id": 4, "file_name": "b.jpg", "width": 0, "height": 5},
           {"id": 1, "file_name": "c.jpg"},  # id names another file
           {"id": 5, "file_name": "ok.jpg"},  # name listed twice, another id
           "not an object",
           {"id": 6}]
    plan = plan_pool([pool_json(tmp_path / "p.json", bad)], tmp_path / "plan", max_size=10)
    assert plan.images_new == 1 and plan.quarantined == 7 and plan.images_read == 8
    rows = read_quarantine(tmp_path / "plan")
    reasons = {r["record_id"]: r["reason"] for r in rows}
    assert "whole number" in reasons["2"] and "outside the images folder" in reasons["3"]
    assert "width" in reasons["4"] and "already names another file" in reasons["1"]
    assert "already has image id 1" in reasons["5"] and "must be an object" in reasons["#7"]
    assert "file_name" in reasons["6"]
    assert all(r["source_file"].endswith("p.json") for r in rows)
    # a re-plan of the same file does not count its bad records twice
    plan_pool([tmp_path / "p.json"], tmp_path / "plan", max_size=10)
    assert len(read_quarantine(tmp_path / "plan")) == 7 and read_plan(tmp_path / "plan")["quarantined"] == 7


def test_a_bad_pool_file_is_one_line(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [{"id": 1,')
    with pytest.raises(InputError, match="broken.json"):
        plan_pool([tmp_path / "broken.json"], tmp_path / "plan")
    with pytest.raises(InputError, match="no categories"):
        plan_pool([pool_json(tmp_path / "nocats.json", images(0, 3), categories=[])], tmp_path / "plan2")
