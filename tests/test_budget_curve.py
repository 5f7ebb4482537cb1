"""scripts/budget_curve.py on its two-step smoke configuration: every part runs, writes what the README
quotes, and a second invocation redoes nothing (finished runs and measurements are read back)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import budget_curve  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget-curve")
    budget_curve.main(["--smoke", "--out", str(out), "--budgets", "0.25", "--methods", "rpc", "rpc-unweighted",
                       "--seeds", "0", "--workers", "1"])
    return out


def test_smoke_writes_every_part(smoke):
    report = json.loads((smoke / "results.json").read_text())
    assert report["command"].startswith("python scripts/budget_curve.py") and report["date"] and report["machine"]
    assert set(report["arms"]) == {"full", "rpc-0.25", "rpc-unweighted-0.25"}
    for label, arm in report["arms"].items():
        assert arm["seeds"] == [0] and len(arm["final_accuracy"]) == 1
        assert 0.0 <= arm["min"] <= arm["mean"] <= arm["max"] <= 1.0
        assert 0.0 < arm["kept_fraction"] <= 1.0 and 0.0 < arm["tokens_to_model_fraction"] <= 1.0
        assert [point[0] for point in arm["curves"]["seed0"]] == [0, 1, 2]  # --eval-every 1 over 2 steps
    assert report["arms"]["full"]["kept_fraction"] == 1.0
    assert report["arms"]["rpc-0.25"]["kept_fraction"] < 0.6  # about ρ of the tokens (short, ragged answers)
    # Same-batch costs for every arm, full the yardstick; V and b on the view's batch for every non-full arm.
    assert set(report["paired_costs"]) == set(report["arms"])
    assert report["paired_costs"]["full"]["time_ratio_median"] == 1.0
    assert report["paired_costs"]["rpc-0.25"]["activation_ratio_median"] < 1.0
    assert set(report["gradient_statistics"]) == {"rpc-0.25", "rpc-unweighted-0.25"}
    assert all(stats["per_draw_variance"] > 0 for stats in report["gradient_statistics"].values())
    readme = (smoke / "README.md").read_text()
    assert "| rpc-unweighted | 0.25 |" in readme and "budget_curve.png" in readme
    assert (smoke / "budget_curve.png").stat().st_size > 10_000


def test_a_second_invocation_redoes_nothing(smoke, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished part was measured again")

    monkeypatch.setattr(budget_curve, "paired_costs", refuse)
    monkeypatch.setattr(budget_curve, "gradient_statistics", refuse)
    before = {path: path.stat().st_mtime_ns for path in (smoke / "runs").glob("*/summary.json")}
    budget_curve.main(["--smoke", "--out", str(smoke), "--budgets", "0.25", "--methods", "rpc", "rpc-unweighted",
                       "--seeds", "0", "--workers", "1"])
    assert {path: path.stat().st_mtime_ns for path in (smoke / "runs").glob("*/summary.json")} == before


def test_a_new_clone_reads_the_finished_runs_back_from_the_committed_results(smoke, monkeypatch, tmp_path):
    """OUT/runs/ is git-ignored: with only the committed files, the runs recorded in results.json
    are read back, not trained again, and the rewritten record keeps their numbers."""
    def refuse(job):
        raise AssertionError(f"a recorded run was trained again: {job[:3]}")

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("results.json", "paired_costs.json", "gradient_stats.json"):
        (clone / name).write_text((smoke / name).read_text())
    monkeypatch.setattr(budget_curve, "run_one", refuse)
    budget_curve.main(["--smoke", "--out", str(clone), "--budgets", "0.25", "--methods", "rpc", "rpc-unweighted",
                       "--seeds", "0", "--workers", "1"])
    before, after = (json.loads((folder / "results.json").read_text())["arms"] for folder in (smoke, clone))
    assert after == before


def test_reuse_takes_an_earlier_comparisons_runs_and_checks_one_reproduces(tmp_path):
    """--reuse: full's and the comparison's-ρ arms come from its results.json (same flags but the
    evaluation cadence); a re-run that disagrees anywhere both evaluated stops the script."""
    curve = [[0, 0.37, 0.0], [5, 0.5, 1.0], [10, 0.8, 2.0]]
    earlier = {"date": "2026-12-01", "budget": 0.5, "seeds": [0, 1], "extra_flags": ["--eval-every", "5"],
               "methods": {method: {"final_accuracy": [0.8, 0.9], "accuracy_before": 0.37, "used_fraction": 0.5,
                                    "tokens_to_model_fraction": 0.58} for method in ("full", "rpc")},
               "curves": {f"{method}-seed{seed}": curve for method in ("full", "rpc") for seed in (0, 1)}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    arm_list = budget_curve.arms(["rpc", "urs"], [0.25, 0.5])
    runs = budget_curve.reusable_runs(path, arm_list, [0, 1, 2], [])
    assert set(runs) == {("full", 1.0, 0), ("full", 1.0, 1), ("rpc", 0.5, 0), ("rpc", 0.5, 1)}
    assert runs[("rpc", 0.5, 1)]["summary"]["accuracy_after"] == 0.9
    summary = budget_curve.summarise_arm([runs[("rpc", 0.5, 0)], runs[("rpc", 0.5, 1)]])
    assert summary["mean"] == pytest.approx(0.85) and summary["tokens_to_model_fraction"] == pytest.approx(0.58)
    with pytest.raises(SystemExit, match="trainer flags"):
        budget_curve.reusable_runs(path, arm_list, [0], ["--steps", "5"])

    rerun = {"method": "rpc", "budget": 0.5, "seed": 0, "curve": [(0, 0.37, 0.0), (10, 0.8, 1.5)]}
    check = budget_curve.check_reproduced(rerun, runs[("rpc", 0.5, 0)])
    assert check["identical"] and check["steps_compared"] == [0, 10]
    with pytest.raises(SystemExit, match="did not reproduce"):
        budget_curve.check_reproduced({**rerun, "curve": [(0, 0.37, 0.0), (10, 0.79, 1.5)]}, runs[("rpc", 0.5, 0)])
