"""The regression gate's memory: which stage-2 version is in use, and why."""

import threading

import pytest

from pipelines.errors import InputError
from pipelines.model_registry import IN_USE, REJECTED, RETIRED, ModelRegistry


def _entry(v, ap):
    return {"version": v, "checkpoint_dir": f"/m/stage2/{v}", "init_dir": f"/m/stage1/{v}", "partitions": ["coco"],
            "metrics": {"bbox": {"AP50": ap}}}


def test_a_regressed_version_is_kept_but_never_in_use(tmp_path):
    reg = ModelRegistry(tmp_path / "registry.json")
    assert reg.in_use() is None
    reg.decide(_entry("v0001", 0.6), passed=True, reason="first evaluated model")
    reg.decide(_entry("v0002", 0.3), passed=False, reason="regressed vs v0001: bbox/AP50 0.6->0.3")
    assert reg.in_use()["version"] == "v0001"
    assert reg.get("v0002")["status"] == REJECTED and "0.6->0.3" in reg.get("v0002")["reason"]
    reg.decide(_entry("v0003", 0.7), passed=True, reason="passed no_regression vs v0001")
    assert reg.in_use()["version"] == "v0003"
    assert reg.get("v0001")["status"] == RETIRED and "replaced by v0003" in reg.get("v0001")["reason"]
    assert [e["status"] for e in reg.entries().values()].count(IN_USE) == 1


def test_promotion_on_purpose_needs_an_evaluated_version(tmp_path):
    reg = ModelRegistry(tmp_path / "registry.json")
    reg.decide(_entry("v0001", 0.6), passed=True, reason="first evaluated model")
    reg.decide(_entry("v0002", 0.3), passed=False, reason="regressed")
    reg.promote("v0002", "the drop is the new hard classes")
    assert reg.in_use()["version"] == "v0002" and reg.in_use()["reason"].startswith("promoted: ")
    with pytest.raises(InputError, match="never evaluated"):
        reg.promote("v0009", "typo")
    assert reg.in_use()["version"] == "v0002"


def test_concurrent_decisions_are_all_kept(tmp_path):
    reg = ModelRegistry(tmp_path / "registry.json")
    threads = [threading.Thread(target=reg.decide, args=(_entry(f"v{i:04d}", 0.1), False, "r")) for i in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.entries()) == 20
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_version_measured_again_keeps_its_status_verdict_and_old_numbers(tmp_path):
    reg = ModelRegistry(tmp_path / "registry.json")
    reg.decide({**_entry("v0001", 0.6), "metrics": {"bbox": {"AP50": 0.6}, "segm": {"AP": 0.5}}}, passed=True,
               reason="first evaluated model")  # written before protocols were kept: protocol 1
    history = reg.history()
    again = reg.reevaluated("v0001", {"segm": {"AP": 0.7}}, protocol=2, metrics_file="/p/protocol-2/metrics.json")
    assert again == reg.get("v0001") and again["protocol"] == 2 and again["status"] == IN_USE
    # the task measured again takes its new numbers, the others keep theirs; the old ones are kept with their protocol
    assert again["metrics"] == {"bbox": {"AP50": 0.6}, "segm": {"AP": 0.7}}
    assert again["metrics_file"] == "/p/protocol-2/metrics.json" and again["verdict"] == "first evaluated model"
    (earlier,) = again["earlier_metrics"]
    assert earlier["protocol"] == 1 and earlier["metrics"]["segm"] == {"AP": 0.5}
    assert reg.history() == history  # no status changed
    with pytest.raises(InputError, match="not in"):
        reg.reevaluated("v0009", {}, protocol=2)
