"""bench/bench_loop.py: its accounting (labeler seconds per arm and budget, AP per labeler hour, the
goals, the curve plot) on made-up results, fast; and at a toy size (slow): killed with SIGKILL after its
first retraining, the same command finishes the run without redoing what was done, a second budget on
the same --out reuses what is done, and other settings on the same --out are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import argparse

import pytest

from bench import bench_loop as bl
from pipelines.review.effort import ActionCosts

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--images", "20", "--pool", "12", "--budget", "3", "--seeds", "2", "--start-steps", "3",
       "--stage1-steps", "2", "--stage2-steps", "2", "--batch-size", "4", "--threads", "1", "--procs", "1"]


def _counts(accepts=0, rejects=0, boxes=0, masks=0, images=0, opened=None, prompts=0, prompts_accepted=0) -> dict:
    opened = images if opened is None else opened
    return {"images": images, "images_opened": opened, "accepts": accepts, "rejects": rejects, "boxes_drawn": boxes,
            "masks_drawn": masks, "prompts": prompts, "prompts_accepted": prompts_accepted,
            "actions": accepts + rejects + boxes + prompts,
            "by_kind": {"accept": accepts, "reject": rejects, "draw_box": boxes - masks, "draw_mask": masks,
                        "image": opened, "prompt": prompts}, "pull": {}}


def test_arms_budgets_and_seeds_plan_the_review_rounds_and_retrainings():
    todo = bl.runs_to_do("ABCDEFG", [30, 60], 2)
    keys = [k for k, _, _, seed in todo if seed == 0]
    assert keys == ["A", "B-k30", "C-k30", "D-k30", "F-k30", "G-k30", "B-k60", "C-k60", "D-k60", "F-k60", "G-k60",
                    "E"]
    assert [seed for *_, seed in todo] == [0] * 12 + [1] * 12  # whole seeds first: a cut-short run is usable
    # the runs of before keep their names: a state file without F is read as it was written
    assert [k for k, _, _, _ in bl.runs_to_do("ABCDEG", [30], 1)] == ["A", "B-k30", "C-k30", "D-k30", "G-k30", "E"]
    assert bl.label_groups("ABCDEFG", 2) == [("B", "B", 0), ("G", "G", 0), ("D", "D", 0), ("F", "F", 0),
                                             ("E", "E", 0), ("C-s0", "C", 0), ("C-s1", "C", 1)]
    assert bl.label_groups("AD", 1) == [("B", "B", 0), ("D", "D", 0)]  # D labels B's images: B's round runs
    assert bl.label_groups("F", 1) == [("B", "B", 0), ("F", "F", 0)]  # and F, in B's order
    assert [k for k, *_ in bl.runs_to_do("F", [30, 60], 1)] == ["F-k30", "F-k60"]  # F alone: no other retraining
    assert bl._budgets("120,30,60,60") == [30, 60, 120]
    for bad in ("0,30", "30,x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bl._budgets(bad)
    assert bl._arms("a,b,g") == "ABG" and bl._arms("gf") == "FG"
    with pytest.raises(argparse.ArgumentTypeError, match="letters of ABCDEFGHIJKLM"):
        bl._arms("ABX")
    # H, I and J (boxes the model masks; a strict labeler; from scratch) work on B's images, on request only
    assert bl.DEFAULT_ARMS == "ABCDEFG" and bl._arms("ih") == "HI"
    assert bl.label_groups("HIJ", 1) == [("B", "B", 0), ("H", "H", 0), ("I", "I", 0), ("J", "J", 0)]
    # K (strict about masks too) works on B's images as well, and the goal "review reaches D" asks it too
    assert bl.label_groups("K", 1) == [("B", "B", 0), ("K", "K", 0)] and "K" in bl.REVIEW_ARMS
    assert [k for k, *_ in bl.runs_to_do("HI", [30, 60], 1)] == ["H-k30", "I-k30", "H-k60", "I-k60"]
    # L and M: the strict reviewer of K in random order (a round per seed, C's images) and in G's order
    assert bl.label_groups("CKLM", 2) == [("B", "B", 0), ("K", "K", 0), ("M", "M", 0), ("C-s0", "C", 0),
                                          ("C-s1", "C", 1), ("L-s0", "L", 0), ("L-s1", "L", 1)]
    assert bl._label_entry({"L-s1": {"budgets": {"30": "round"}}}, "L", 30, 1) == "round"
    assert [k for k, *_ in bl.runs_to_do("KLM", [30], 1)] == ["K-k30", "L-k30", "M-k30"]
    assert "M" in bl.REVIEW_ARMS and "L" not in bl.REVIEW_ARMS and bl.QUEUE_ORDER["M"] == bl.QUEUE_ORDER["G"]
    assert [k for k, *_ in bl.finished_runs({"I-k30": {"0": {}}, "E": {"0": {}}, "H-k30": {"0": {}}, "A": {"0": {}}})] \
        == ["A", "H-k30", "I-k30", "E"]
    assert bl._seconds_list("10,3,5") == [3.0, 5.0, 10.0]
    for bad in ("-1,3", "x", "", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            bl._seconds_list(bad)


def test_labeler_seconds_and_ap_per_labeler_hour_per_arm(tmp_path):
    costs = ActionCosts()
    labels = {
        "B": {"budgets": {"60": {"counts": _counts(accepts=100, rejects=80, boxes=90, masks=88, images=60)}}},
        "G": {"budgets": {"60": {"counts": _counts(accepts=150, rejects=40, boxes=30, masks=30, images=60)}}},
        "D": {"budgets": {"60": {"counts": _counts(boxes=200, masks=190, images=60)}}},
        "E": {"budgets": {"all": {"counts": _counts(images=240, opened=0)}}},
        "C-s0": {"budgets": {"60": {"counts": _counts(accepts=60, rejects=50, boxes=50, masks=50, images=60)}}},
        "C-s1": {"budgets": {"60": {"counts": _counts(accepts=70, rejects=40, boxes=54, masks=50, images=60)}}},
    }
    ap = {"A": (0.10, 0.12), "B-k60": (0.14, 0.15), "C-k60": (0.13, 0.14), "D-k60": (0.16, 0.17),
          "G-k60": (0.14, 0.16), "E": (0.09, 0.10)}
    runs = {k: {str(s): {"det_AP": v[s], "det_AP50": v[s] * 2, "segm_AP": v[s] / 2, "train_s": 10.0, "eval_s": 1.0,
                         "label_s": 5.0} for s in (0, 1)} for k, v in ap.items()}
    todo = bl.runs_to_do("ABCDEG", [60], 2)
    arms = bl.aggregate(runs, labels, todo, costs)

    b = arms["B-k60"]
    want_b = 2.0 * 180 + 7.0 * 2 + 79.2 * 88  # verify 180 shown labels, 2 boxes, 88 masks
    assert b["labeler_s"]["total"] == pytest.approx(want_b, abs=0.1)
    assert b["labeler_s"]["draw_mask"] == pytest.approx(79.2 * 88, abs=0.1)
    assert (b["boxes_drawn"], b["masks_drawn"], b["actions"], b["images_reviewed"]) == (90, 88, 270, 60)
    assert b["labeler_h"] == pytest.approx(want_b / 3600, abs=1e-3)
    assert b["det_AP_gain_per_h"] == pytest.approx((0.145 - 0.11) / (want_b / 3600), abs=1e-5)
    # C: the mean over its seeds' random orders
    c_s = [2.0 * 110 + 79.2 * 50, 2.0 * 110 + 7.0 * 4 + 79.2 * 50]
    assert arms["C-k60"]["labeler_s"]["total"] == pytest.approx(sum(c_s) / 2, abs=0.1)
    assert arms["C-k60"]["boxes_drawn"] == 52
    # no person: no time, no rate
    assert arms["A"]["labeler_s"]["total"] == arms["E"]["labeler_s"]["total"] == 0
    assert arms["A"]["det_AP_gain_per_h"] is None and arms["E"]["det_AP_gain_per_h"] is None
    assert arms["E"]["images_reviewed"] == 240

    g = bl.goals(arms, [60])["60"]
    assert g["G gains >= B's det AP per labeler hour"]["met"]  # as much AP for a third of the mask drawing
    assert g["B gains >= C's det AP per labeler hour"]["met"] is (b["det_AP_gain_per_h"] >= arms["C-k60"][
        "det_AP_gain_per_h"])
    assert not g["B reaches >= 90% of D's gain with <= half of D's labeler time"]["met"]  # 0.035 of 0.055
    assert set(bl.goals({k: v for k, v in arms.items() if k in ("A", "B-k60")}, [60])["60"]) == {
        "B beats A by more than the seed spread"}  # a goal needs its arms

    # other costs change the seconds, not the counts
    cheap_masks = bl.aggregate(runs, labels, todo, ActionCosts(draw_mask_s=20.0))
    assert cheap_masks["B-k60"]["labeler_s"]["total"] == pytest.approx(2.0 * 180 + 7.0 * 2 + 20.0 * 88, abs=0.1)
    assert cheap_masks["B-k60"]["boxes_drawn"] == 90

    png = tmp_path / "loop.png"
    bl.plot_curve(arms, png, "made-up results")
    assert png.stat().st_size > 10_000


def test_arm_f_is_timed_over_a_range_of_ask_costs_and_checked_against_b(tmp_path):
    """F asks for missed objects: its seconds at each cost of an ask (no study gives it) from the same counts,
    its goal against B at each; a state written before F (no `prompts_accepted`, G's costs without an ask cost
    that decides nothing) is still read."""
    costs = ActionCosts(prompt_s=5.0)
    old_b = _counts(accepts=100, rejects=80, boxes=90, masks=88, images=60)
    del old_b["prompts_accepted"]  # as a state file of before arm F has it
    labels = {
        "B": {"budgets": {"60": {"counts": old_b}}},
        # of B's 90 missed objects: 60 asked for (30 no words single out), 45 answers right, so 45 drawn
        "F": {"budgets": {"60": {"counts": _counts(accepts=100, rejects=80, boxes=45, masks=44, images=60,
                                                   prompts=60, prompts_accepted=45)}}},
    }
    ap = {"A": (0.10, 0.12), "B-k60": (0.14, 0.15), "F-k60": (0.145, 0.15)}
    runs = {k: {str(s): {"det_AP": v[s], "det_AP50": v[s] * 2, "segm_AP": v[s] / 2, "train_s": 10.0, "eval_s": 1.0,
                         "label_s": 5.0} for s in (0, 1)} for k, v in ap.items()}
    todo = bl.runs_to_do("ABF", [60], 2)
    arms = bl.aggregate(runs, labels, todo, costs, [3.0, 5.0, 10.0])
    f, b = arms["F-k60"], arms["B-k60"]
    want_b = 2.0 * 180 + 7.0 * 2 + 79.2 * 88
    f_at = {x: 2.0 * 180 + x * 60 + 7.0 * 1 + 79.2 * 44 for x in (3, 5, 10)}
    assert f["labeler_s"]["prompt"] == pytest.approx(5.0 * 60) and f["labeler_s"]["total"] == pytest.approx(f_at[5])
    assert f["labeler_h_by_ask_s"] == {k: pytest.approx(f_at[x] / 3600, abs=1e-3) for k, x in (("3", 3), ("5", 5),
                                                                                               ("10", 10))}
    assert (f["prompts"], f["prompts_accepted"], f["actions"]) == (60, 45, 180 + 45 + 60)
    assert (b["prompts"], b["prompts_accepted"]) == (0, 0) and "labeler_h_by_ask_s" not in b
    goal = bl.goals(arms, [60])["60"]["F needs <= 70% of B's labeler time for the same det AP"]
    assert goal["met"] and goal["time_share_of_B"] == pytest.approx(f_at[5] / want_b, abs=1e-3)
    assert goal["time_share_of_B_by_ask_s"]["10"] == pytest.approx(f_at[10] / want_b, abs=1e-3)
    worse = dict(runs, **{"F-k60": {str(s): dict(runs["F-k60"][str(s)], det_AP=0.10) for s in (0, 1)}})
    assert not bl.goals(bl.aggregate(worse, labels, todo, costs), [60])["60"][
        "F needs <= 70% of B's labeler time for the same det AP"]["met"]  # less time, but not the same AP
    table = bl.markdown_table(arms, costs).splitlines()
    assert len([r for r in table if r.startswith("| F ")]) == 1 and "| 60 |" in table[3]
    assert f"| {f_at[5]:,.0f} | 180 | 45 (44) | 60 (45) |" in next(r for r in table if r.startswith("| F "))
    png = tmp_path / "loop.png"
    bl.plot_curve(arms, png, "made-up results with F")
    assert png.stat().st_size > 10_000

    # G's order was made from the costs of verifying and drawing: an ask cost (new, or another) changes nothing
    before_f = {"G": {"costs": {**ActionCosts().as_dict(), "prompt_s": None}}}
    bl._check_g_costs(before_f, ActionCosts(prompt_s=10.0))
    with pytest.raises(SystemExit, match="arm G's order"):
        bl._check_g_costs(before_f, ActionCosts(draw_mask_s=30.0, prompt_s=10.0))


def test_report_puts_every_finished_run_of_an_out_in_one_table(tmp_path):
    """A run made in parts (other --arms / --budgets on the same --out): --report trains nothing and shows every
    finished arm, budget and seed; without a run's --out it says so in one line."""
    counts = {"B": _counts(accepts=10, rejects=5, boxes=4, masks=4, images=6),
              "F": _counts(accepts=10, rejects=5, boxes=1, masks=1, images=6, prompts=3, prompts_accepted=3)}
    labels = {g: {"budgets": {k: {"counts": c} for k in ("30", "240")}} for g, c in counts.items()}
    runs = {k: {str(s): {"det_AP": 0.5 + 0.01 * s, "det_AP50": 0.8, "segm_AP": 0.4, "train_s": 1.0, "eval_s": 1.0}
                for s in (1, 0)} for k in ("F-k240", "B-k30", "A", "F-k30")}
    assert [k for k, *_ in bl.finished_runs(runs)] == ["A", "A", "B-k30", "B-k30", "F-k30", "F-k30", "F-k240",
                                                       "F-k240"]
    (tmp_path / "loop_state.json").write_text(json.dumps({"settings": {}, "labels": labels, "runs": runs}))
    proc = subprocess.run([sys.executable, "bench/bench_loop.py", "--report", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in (tmp_path / "report.md").read_text().splitlines() if r.startswith("| ") and "AP" not in r]
    assert [r.split(" | ")[0:2] for r in rows] == [["| A no new data", "-"], ["| B K reviewed, errors-first order", "30"],
                                                   ["| F K reviewed, missed ones asked for", "30"],
                                                   ["| F K reviewed, missed ones asked for", "240"]]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["arms"]["F-k240"]["prompts_accepted"] == 3
    # every arm's two seeds are 0.50 and 0.51 box AP, its mask AP the same for both
    assert report["noise"]["det_AP"] == {"pooled_sd": 0.0071, "mean_spread": 0.01, "arms": 4}
    assert report["noise"]["segm_AP"]["pooled_sd"] == 0.0
    assert "box AP sd 0.007, mean seed range 0.010" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "bench/bench_loop.py", "--report", "--out", str(tmp_path / "none")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("(its loop_state.json)")


def test_retraining_noise_pools_the_seeds_of_each_arm_but_not_random_orders():
    def arm(name, box, mask):
        return {"arm": name, "det_AP": bl._stats(box), "segm_AP": bl._stats(mask)}

    arms = {"A": arm("A", [0.60, 0.62], [0.5, 0.5]), "B-k30": arm("B", [0.60, 0.61, 0.65], [0.5, 0.52, 0.54]),
            "C-k30": arm("C", [0.5, 0.7], [0.4, 0.6]), "G-k30": arm("G", [0.63], [0.55]),
            "L-k30": arm("L", [0.4, 0.8], [0.4, 0.6])}
    noise = bl.retraining_noise(arms)
    # A: variance 0.0002 (1 dof); B: variance 0.0007 (2 dof): pooled (0.0002 + 0.0014) / 3; C, L (random orders)
    # and one-seed G left out
    assert noise["det_AP"] == {"pooled_sd": round((0.0016 / 3) ** 0.5, 4), "mean_spread": 0.035, "arms": 2}
    assert noise["segm_AP"]["mean_spread"] == 0.02
    assert bl.retraining_noise({"G-k30": arm("G", [0.63], [0.55])}) == {}
    assert "not measured" in bl.noise_line({})


def _arm(ap: float, spread: float, seconds: float, segm: float | None = None) -> dict:
    """An aggregated arm as `aggregate` makes it, with only what the curve goals read."""
    return {"det_AP": {"mean": ap, "spread": spread}, "segm_AP": {"mean": ap if segm is None else segm,
                                                                  "spread": spread},
            "labeler_s": {"total": seconds}}


def test_curve_goals_compare_orders_at_equal_labeler_time_and_against_a_third_of_ds_time():
    """Random order is read off its own curve at the better order's seconds (linear between budgets, from A's model
    at 0 s; never extrapolated); review must reach D's AP at D's largest budget within a third of D's seconds."""
    arms = {"A": _arm(0.60, 0.01, 0),
            "C-k30": _arm(0.61, 0.01, 2000), "C-k60": _arm(0.62, 0.01, 4000), "C-k120": _arm(0.64, 0.01, 8000),
            # G at 3000 s: C's curve there is 0.615, G 0.64: +0.025 over a spread of 0.01
            "G-k30": _arm(0.64, 0.01, 3000), "G-k60": _arm(0.65, 0.01, 6000), "G-k120": _arm(0.66, 0.01, 12000),
            # B spends more seconds per image: at K=60 (7000 s) C reads 0.635; at K=120 (14000 s) past C's curve
            "B-k30": _arm(0.62, 0.01, 3500), "B-k60": _arm(0.64, 0.01, 7000), "B-k120": _arm(0.65, 0.01, 14000),
            "D-k30": _arm(0.63, 0.01, 12000), "D-k60": _arm(0.645, 0.01, 24000),
            "D-k120": _arm(0.655, 0.01, 45000, segm=0.70)}
    g = bl.curve_goals(arms, [30, 60, 120])
    order = g["best order beats random at equal labeler time by more than the seed spread, at 2 of 3 budgets"]
    assert order["per_budget"]["30"]["arm"] == "G" and order["per_budget"]["30"]["C_at_same_s"] == pytest.approx(0.615)
    assert order["per_budget"]["60"]["margin"] == pytest.approx(0.65 - 0.63)  # G at 6000 s against C's 0.63
    assert order["per_budget"]["120"] is None  # G's 12000 s and B's 14000 s lie past C's 8000 s: not compared
    assert order["budgets_compared"] == 2 and order["met"]  # two budgets compared, both won by more than the spread
    box = g["review reaches D's box AP at K=120 with <= 1/3 of D's labeler time"]
    # G reaches 0.655 halfway between 6000 s (0.65) and 12000 s (0.66): 9000 s <= 45000 / 3
    assert box["labeler_s_to_reach"]["G"] == 9000 and box["met"]
    mask = g["review reaches D's mask AP at K=120 with <= 1/3 of D's labeler time"]
    assert mask["labeler_s_to_reach"] == {"B": None, "G": None} and not mask["met"]  # nobody reaches 0.70

    # a run made in parts: F over the whole pool (K = 240) and D at 120 only; D's largest budget is the target
    parts = {"A": arms["A"], "D-k120": arms["D-k120"], "F-k120": _arm(0.64, 0.01, 6000),
             "F-k240": _arm(0.66, 0.01, 9000, segm=0.6)}
    box = bl.curve_goals(parts, [120, 240])["review reaches D's box AP at K=120 with <= 1/3 of D's labeler time"]
    assert box["labeler_s_to_reach"] == {"F": 8250} and box["met"]  # 0.655: 3/4 of the way from 6000 s to 9000 s

    close = dict(arms, **{"G-k30": _arm(0.62, 0.01, 3000), "G-k60": _arm(0.632, 0.01, 6000)})
    assert not bl.curve_goals(close, [30, 60, 120])[
        "best order beats random at equal labeler time by more than the seed spread, at 2 of 3 budgets"]["met"]
    # a strict reviewer's orders (K errors first, M gain per second) are compared with L, random order reviewed
    # strictly, never with C: here M beats L at two budgets while B and G (the family above) do not beat C
    strict = dict(close, **{"L-k30": _arm(0.65, 0.01, 3000), "L-k60": _arm(0.67, 0.01, 6000),
                            "L-k120": _arm(0.68, 0.01, 12000), "K-k120": _arm(0.69, 0.01, 11000),
                            "M-k30": _arm(0.68, 0.01, 2400), "M-k60": _arm(0.70, 0.01, 5000),
                            "M-k120": _arm(0.685, 0.01, 10000)})
    s = bl.curve_goals(strict, [30, 60, 120])
    assert not s[bl.ORDER_GOAL]["met"]
    strict_goal = s[f"strict: {bl.ORDER_GOAL}"]
    assert strict_goal["random"] == "L" and strict_goal["orders"] == ["K", "M"]
    # M at 2400 s: L's curve from A (0.60 at 0 s) to 0.65 at 3000 s reads 0.64: +0.04
    assert strict_goal["per_budget"]["30"]["L_at_same_s"] == pytest.approx(0.64)
    # at K = 120 the better of the two is K: +0.0117 over L's curve at 11000 s, M +0.0083 at 10000 s
    assert strict_goal["per_budget"]["120"]["arm"] == "K"
    assert strict_goal["per_budget"]["120"]["margin"] == pytest.approx(0.69 - (0.67 + 5 / 6 * 0.01), abs=1e-4)
    assert strict_goal["budgets_compared"] == 3 and strict_goal["met"]
    assert "strict: " + bl.ORDER_GOAL not in bl.curve_goals(arms, [30, 60, 120])  # no L: not reported
    assert bl.ap_at_time([(0, 0.6, 0.0), (100, 0.7, 0.02)], 150) is None
    assert bl.time_to_reach([(0, 0.6, 0.0), (100, 0.7, 0.0)], 0.65) == pytest.approx(50)


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    env.pop("FIFTYONE_DATABASE_URI", None)  # the bench starts its own embedded database under --out
    return env


def _bench(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "bench_loop.py"), *TOY, "--out", str(out), *extra]


@pytest.mark.slow
def test_a_killed_loop_bench_goes_on_where_it_stopped(tmp_path):
    out = tmp_path / "loop"
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_bench(out), stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 900
        while "arm A seed 0:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]  # still running: the kill lands mid-run
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = json.loads((out / "loop_state.json").read_text())
    assert state["runs"]["A"] == {"0": state["runs"]["A"]["0"]}  # A seed 0 was recorded before the kill
    assert set(state["labels"]) == {"B", "G", "D", "F", "E", "C-s0", "C-s1"}  # every review round came first
    assert state["labels"]["G"]["costs"] == ActionCosts(prompt_s=5.0).as_dict()  # G's order came from these costs
    f_counts = state["labels"]["F"]["budgets"]["3"]["counts"]
    assert state["labels"]["F"]["budgets"]["3"]["reviewed"] == state["labels"]["B"]["budgets"]["3"]["reviewed"]
    assert f_counts["pull"]["prompted"] == f_counts["prompts_accepted"] <= f_counts["prompts"]
    assert f_counts["by_kind"]["prompt"] == f_counts["prompts"]
    assert not (out / "loop.json").exists()

    second = subprocess.run(_bench(out), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=1800)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for phase in ("data", "starting model", "pool pseudo-labels", "review thresholds"):
        assert f"{phase}: done before" in second.stdout
    assert "arm A seed 0:" not in second.stdout and "] labeled " not in second.stdout  # nothing redone
    assert "arm A seed 1:" in second.stdout
    summary = json.loads((out / "loop.json").read_text())
    assert summary["resumed"] == 1
    assert summary["total_cpu_s"] > state["cpu_s"] > 0  # the first sitting's CPU time counts too
    keys = {"A", "B-k3", "C-k3", "D-k3", "F-k3", "G-k3", "E"}
    assert set(summary["arms"]) == keys and all(len(summary["runs"][k]) == 2 for k in keys)
    assert summary["runs"]["A"][0] == state["runs"]["A"]["0"]  # the result from before the kill, kept
    b = summary["arms"]["B-k3"]
    assert b["images_reviewed"] == 3 and b["labeler_s"]["total"] > 0 and summary["arms"]["A"]["labeler_s"]["total"] == 0
    assert b["labeler_s"]["total"] == pytest.approx(ActionCosts().seconds(
        state["labels"]["B"]["budgets"]["3"]["counts"]["by_kind"])["total"], abs=0.1)
    assert "labeler s" in second.stdout and (out / "loop.png").stat().st_size > 0
    assert "Traceback" not in second.stderr
    f = summary["arms"]["F-k3"]
    assert set(f["labeler_h_by_ask_s"]) == {"3", "5", "10"} and "s/ask" in second.stdout

    # another cost per ask: the seconds change, nothing is labeled or retrained again
    dearer = subprocess.run(_bench(out, "--ask-s", "10"), capture_output=True, text=True, env=_env(), cwd=ROOT,
                            timeout=600)
    assert dearer.returncode == 0, dearer.stdout[-3000:] + dearer.stderr[-3000:]
    assert "] labeled " not in dearer.stdout and " seed 0:" not in dearer.stdout
    f10 = json.loads((out / "loop.json").read_text())["arms"]["F-k3"]
    assert f10["det_AP"] == f["det_AP"]
    assert f10["labeler_s"]["total"] == pytest.approx(f["labeler_s"]["total"] + 5.0 * f["prompts"], abs=0.1)

    # a second budget on the same --out: the rounds are relabeled (the same for K=3), nothing retrained twice
    curve = subprocess.run(_bench(out, "--budgets", "2,3", "--seeds", "1", "--arms", "ABG"), capture_output=True,
                           text=True, env=_env(), cwd=ROOT, timeout=1800)
    assert curve.returncode == 0, curve.stdout[-3000:] + curve.stderr[-3000:]
    assert "arm B-k2 seed 0:" in curve.stdout and "arm B-k3 seed 0:" not in curve.stdout
    again = json.loads((out / "loop_state.json").read_text())
    assert again["labels"]["B"]["budgets"]["3"]["counts"] == state["labels"]["B"]["budgets"]["3"]["counts"]
    assert again["labels"]["B"]["budgets"]["2"]["reviewed"] == state["labels"]["B"]["budgets"]["3"]["reviewed"][:2]
    assert set(json.loads((out / "loop.json").read_text())["arms"]) == {"A", "B-k2", "G-k2", "B-k3", "G-k3"}

    other = subprocess.run(_bench(out, "--stage1-steps", "4"), capture_output=True, text=True, env=_env(),
                           cwd=ROOT, timeout=300)
    assert other.returncode != 0
    assert "other settings" in other.stderr and "stage1_steps" in other.stderr and "Traceback" not in other.stderr
    g_costs = subprocess.run(_bench(out, "--mask-s", "30"), capture_output=True, text=True, env=_env(),
                             cwd=ROOT, timeout=300)
    assert g_costs.returncode != 0 and "arm G's order" in g_costs.stderr and "Traceback" not in g_costs.stderr
