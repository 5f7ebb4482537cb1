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
