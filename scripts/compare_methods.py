"""Full vs URS vs RPC on the embedded task: several seeds each, one plot and one JSON.

    python scripts/compare_methods.py --out experiments/compare --seeds 0 1 2 --budget 0.5

Every run uses the trainer's defaults (the embedded tiny Qwen3 on the arithmetic task) and
differs only in --method (and the seed). Runs go in parallel worker processes with one
CPU thread each (`--workers`), so a 2-core machine does two at a time. Writes

    OUT/results.json   per method: final accuracy of each seed, mean, spread, tokens used, times
    OUT/accuracy.png   held-out greedy accuracy vs step, mean ± min/max over seeds, per method
    OUT/runs/<method>-seed<k>/   each run's folder (metrics.jsonl, summary.json; checkpoints removed)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_one(job):
    method, seed, budget, out, extra = job
    import torch

    from minnat.train import Trainer, parse_args

    torch.set_num_threads(1)
    run_dir = Path(out) / "runs" / f"{method}-seed{seed}"
    args = ["--method", method, "--budget", str(budget), "--seed", str(seed), "--out", str(run_dir),
            "--overwrite", "--num-threads", "1", "--eval-every", "2", *extra]
    summary = Trainer(parse_args(args), progress=False).train()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are not needed for the comparison
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(record["step"], record["eval_accuracy"]) for record in metrics if "eval_accuracy" in record]
    update_seconds = [record["update_seconds"] for record in metrics if "update_seconds" in record]
    activation = [record["activation_bytes"] for record in metrics if record.get("activation_bytes")]
    return {"method": method, "seed": seed, "summary": summary, "curve": curve,
            "median_update_seconds": statistics.median(update_seconds) if update_seconds else None,
            "median_activation_bytes": statistics.median(activation) if activation else None}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for method, colour in zip(("full", "urs", "rpc"), ("#444444", "#1f77b4", "#d62728")):
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        steps = [step for step, _ in runs[0]["curve"]]
        values = np.array([[accuracy for _, accuracy in r["curve"]] for r in runs]) * 100
        axis.plot(steps, values.mean(axis=0), color=colour, label=f"{method} (n={len(runs)})")
        axis.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
    axis.set_xlabel("training step")
    axis.set_ylabel("held-out greedy accuracy (%)")
    axis.set_title("Embedded task: full GRPO vs NAT at ρ = 0.5\n(mean over seeds, band = min–max)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/compare", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method")
    parser.add_argument("--methods", nargs="+", default=["full", "urs", "rpc"], help="methods to compare")
    parser.add_argument("--budget", type=float, default=0.5, help="ρ for URS and RPC")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one CPU thread each)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --, more flags for every run")
    args = parser.parse_args(argv)
    extra = [flag for flag in args.extra if flag != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(method, seed, args.budget if method != "full" else 1.0, str(out), extra)
            for seed in args.seeds for method in args.methods]
    start = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = []
        for result in pool.map(run_one, jobs):
            summary = result["summary"]
            print(f"{result['method']:>4} seed {result['seed']}: accuracy {summary['accuracy_before']:.1%} -> "
                  f"{summary['accuracy_after']:.1%}, tokens used {summary['used_fraction']:.0%}", flush=True)
            results.append(result)
    per_method = {}
    for method in args.methods:
        runs = [r for r in results if r["method"] == method]
        finals = [r["summary"]["accuracy_after"] for r in runs]
        per_method[method] = {
            "final_accuracy": finals, "mean": statistics.mean(finals),
            "min": min(finals), "max": max(finals),
            "accuracy_before": statistics.mean(r["summary"]["accuracy_before"] for r in runs),
            "used_fraction": statistics.mean(r["summary"]["used_fraction"] for r in runs),
            "update_seconds_total": statistics.mean(r["summary"]["wall_seconds"]["update"] for r in runs),
            "rollout_seconds_total": statistics.mean(r["summary"]["wall_seconds"]["rollout"] for r in runs),
            "median_update_seconds": statistics.mean(r["median_update_seconds"] for r in runs),
            "median_activation_bytes": statistics.mean(r["median_activation_bytes"] or 0 for r in runs),
        }
    report = {"date": time.strftime("%Y-%m-%d"), "budget": args.budget, "seeds": args.seeds,
              "extra_flags": extra, "wall_seconds": time.time() - start, "methods": per_method,
              "curves": {f"{r['method']}-seed{r['seed']}": r["curve"] for r in results}}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "accuracy.png")
    print(f"\n{'method':>6} {'before':>8} {'after (mean [min, max])':>26} {'tokens used':>12}")
    for method, row in per_method.items():
        print(f"{method:>6} {row['accuracy_before']:8.1%} {row['mean']:10.1%} [{row['min']:.1%}, {row['max']:.1%}]"
              f" {row['used_fraction']:12.0%}")
    print(f"\nwrote {out / 'results.json'} and {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
