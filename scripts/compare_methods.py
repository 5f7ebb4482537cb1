"""Full vs URS vs RPC (and the biased contrasts) on an embedded task: several seeds each, one plot, one JSON.

    python scripts/compare_methods.py --out experiments/compare --seeds 0 1 2 --budget 0.5
    python scripts/compare_methods.py --methods full rpc rpc-unweighted -- --steps 10   # other methods, flags
    python scripts/compare_methods.py --out experiments/late_credit --methods full urs rpc rpc-unweighted \
        top-entropy -- --task late-credit --eval-every 5                              # another task

Two measurements, both with the trainer's defaults (by default the embedded tiny Qwen3 made for
the "long-addition" task, ~250-token answers; flags after -- change them for every run) and
differing only in --method (and the seed):

1. Learning. Every (method, seed) is one training run. Runs go in parallel worker processes
   with one CPU thread each (`--workers`), so a 2-core machine does two at a time. Held-out
   greedy accuracy is recorded against the step and against the run's cumulative update
   seconds (the part of a step NAT changes; rollout and evaluation are the same for all).
2. Cost on the same batches. One trainer per method, all at learning rate 0 (identical
   weights, AdamW still runs), updates the *same* rollout batches in shuffled order, batch
   after batch, serially on one thread: the update's wall time and the activation memory it
   holds for backward, as a ratio to full's on each batch (median over batches). The
   in-run times of part 1 are not paired (each run sees its own rollouts, and two runs share
   the CPU), so the ratios come from here.

Writes

    OUT/results.json   per method: final and best accuracy of each seed, mean, spread, tokens, times,
                       the paired cost ratios; every curve (step, accuracy, cumulative update s)
    OUT/accuracy.png   accuracy vs step and vs cumulative update seconds, mean and min–max over seeds
    OUT/README.md      the table the project's README quotes, with date, machine and command
    OUT/runs/<method>-seed<k>/   each run's folder (metrics.jsonl, summary.json; checkpoints removed)

Timing figures depend on what else the machine runs: take them on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLOURS = {"full": "#444444", "urs": "#1f77b4", "rpc": "#d62728",
           "rpc-unweighted": "#ff7f0e", "top-entropy": "#9467bd"}  # the biased contrasts


def arm_label(method: str, budget: float) -> str:
    """"full", or e.g. "rpc-0.5": the name of one (method, ρ) arm in folders and result tables."""
    return "full" if method == "full" else f"{method}-{budget:g}"


def run_one(job):
    """One training run in a worker process -> its summary and curve.

    Resumable: a run whose summary.json exists is read back, not redone; a run killed part-way
    continues from its last checkpoint (`--resume`, saved every 5 steps), so its metrics equal an
    uninterrupted run's."""
    method, seed, budget, run_dir, extra = job
    import torch

    from minnat import checkpoint as ckpt
    from minnat.train import Trainer, parse_args

    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        if ckpt.latest_checkpoint(run_dir) is not None:
            args = ["--resume", str(run_dir)]
        else:
            args = ["--method", method, "--budget", str(budget), "--seed", str(seed), "--out", str(run_dir),
                    "--overwrite", "--num-threads", "1", "--save-every", "5", *extra]
        Trainer(parse_args(args), progress=False).train()
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are not needed for the comparison
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve, update_seconds = [], 0.0
    for record in metrics:  # (step, accuracy, update seconds spent up to and including this step)
        update_seconds += record.get("update_seconds", 0.0)
        if "eval_accuracy" in record:
            curve.append((record["step"], record["eval_accuracy"], round(update_seconds, 3)))
    # The sampled (temperature-1) reward of every training batch: a smoother view of learning than
    # greedy accuracy, which can flip between a few answer habits when one token's argmax changes.
    rewards = [(record["step"], record["reward_mean"]) for record in metrics if "reward_mean" in record]
    return {"method": method, "budget": budget, "seed": seed, "summary": summary, "curve": curve,
            "reward_curve": rewards}


def paired_costs(arms, batches, seed, extra, log=print) -> dict:
    """Per (method, ρ) arm: update seconds and activation bytes on the same rollout batches, and
    their ratios to full's batch by batch (medians), keyed by `arm_label`. Full is always
    measured, as the yardstick. Every arm's trainer sits at learning rate 0 (identical weights),
    and the arms run in a shuffled order on each batch, serially on one thread."""
    import torch

    from minnat.rollout import generate
    from minnat.train import Trainer, parse_args

    torch.set_num_threads(1)
    arms = [("full", 1.0)] + [(method, budget) for method, budget in arms if method != "full"]
    labels = [arm_label(method, budget) for method, budget in arms]
    with tempfile.TemporaryDirectory(prefix="minnat-compare-") as scratch:
        trainers = {}
        for label, (method, budget) in zip(labels, arms):
            args = ["--method", method, "--budget", str(budget), "--seed", str(seed),
                    "--out", str(Path(scratch) / label), "--num-threads", "1", *extra,
                    "--learning-rate", "0", "--warmup-steps", "0"]
            trainers[label] = Trainer(parse_args(args), progress=False)
        source = trainers["full"]
        rows = {label: [] for label in labels}
        for index in range(batches + 1):  # batch 0 warms up and is not reported
            torch.manual_seed(seed * 1_000_003 + index)
            config = source.config
            batch = generate(source.model, source.tokenizer, source.task, source.questions_for_step(index),
                             group_size=config.group_size, max_new_tokens=config.max_new_tokens,
                             temperature=config.temperature, top_p=config.top_p)
            order = list(labels)
            random.Random(seed * 31 + index).shuffle(order)
            for label in order:
                trainer = trainers[label]
                trainer.config.measure_activation_memory = False  # time without the memory hooks ...
                started = time.perf_counter()
                trainer.update(batch)
                seconds = time.perf_counter() - started
                trainer.config.measure_activation_memory = True   # ... then count the memory on its own pass
                memory = trainer.update(batch)
                if index:
                    rows[label].append({"update_seconds": seconds, "activation_bytes": memory["activation_bytes"],
                                        "tokens_to_model": memory["tokens_to_model"],
                                        "full_tokens_to_model": memory["full_tokens_to_model"]})
            log(f"  paired costs: batch {index}/{batches}" + (" (warm-up, not reported)" if index == 0 else ""))
        trainers.clear()
    report = {}
    for label in labels:
        time_ratios = [row["update_seconds"] / full["update_seconds"] for row, full in zip(rows[label], rows["full"])]
        memory_ratios = [row["activation_bytes"] / full["activation_bytes"]
                         for row, full in zip(rows[label], rows["full"])]
        report[label] = {
            "update_seconds_median": statistics.median(row["update_seconds"] for row in rows[label]),
            "activation_bytes_median": statistics.median(row["activation_bytes"] for row in rows[label]),
            "tokens_to_model_mean": statistics.fmean(row["tokens_to_model"] for row in rows[label]),
            "time_ratio_median": statistics.median(time_ratios), "time_ratio_range": [min(time_ratios), max(time_ratios)],
            "activation_ratio_median": statistics.median(memory_ratios),
            "activation_ratio_range": [min(memory_ratios), max(memory_ratios)],
            "tokens_to_model_ratio": sum(r["tokens_to_model"] for r in rows[label]) /
                                     sum(r["full_tokens_to_model"] for r in rows[label]),
            "batches": rows[label],
        }
    return report


def mean_curve(runs):
    """Steps, mean accuracy (%), min, max and mean cumulative update seconds over the runs."""
    import numpy as np

    length = min(len(run["curve"]) for run in runs)
    steps = [step for step, _, _ in runs[0]["curve"][:length]]
    accuracy = np.array([[point[1] for point in run["curve"][:length]] for run in runs]) * 100
    seconds = np.array([[point[2] for point in run["curve"][:length]] for run in runs])
    return steps, accuracy.mean(axis=0), accuracy.min(axis=0), accuracy.max(axis=0), seconds.mean(axis=0)


def plot(results, methods, budget, path, task):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_seconds) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    extra_colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][3:])
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        colour = COLOURS.get(method) or next(extra_colours)
        steps, mean, low, high, seconds = mean_curve(runs)
        label = f"{method} (n={len(runs)})" if method == "full" else f"{method} ρ={budget:g} (n={len(runs)})"
        for axis, x in ((by_step, steps), (by_seconds, seconds)):
            axis.plot(x, mean, color=colour, marker="o", markersize=3, label=label)
            axis.fill_between(x, low, high, color=colour, alpha=0.15)
    by_step.set_xlabel("training step")
    by_seconds.set_xlabel("cumulative update seconds (mean over seeds; rollout and eval excluded)")
    by_step.set_ylabel("held-out greedy accuracy (%)")
    for axis in (by_step, by_seconds):
        axis.grid(alpha=0.3)
    by_step.legend()
    figure.suptitle(f"{task}: held-out accuracy by method — mean over seeds, band = min–max", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def cost_text(cost: dict, key: str) -> str:
    """A same-batch ratio, or "not measured" when the run skipped that measurement (--paired-batches 0)."""
    return f"{cost[key]:.2f}" if key in cost else "not measured"


def markdown(report) -> str:
    header = ("| method | accuracy before | after: mean [min, max] | best − final (worst seed) | "
              "tokens to the model / full's | update time / full's (same batches) | "
              "activation memory / full's (same batches) | sampled training reward, first 5 → last 5 steps "
              "(mean over seeds) |")
    lines = [header, "|" + "---|" * 8]
    for method, row in report["methods"].items():
        cost = report["paired_costs"].get(arm_label(method, report["budget"]), {})
        lines.append(
            f"| {method} | {row['accuracy_before']:.1%} | {row['mean']:.1%} [{row['min']:.1%}, {row['max']:.1%}] | "
            f"{row['worst_drop_from_best'] * 100:.1f} points | {row['tokens_to_model_fraction']:.2f} | "
            f"{cost_text(cost, 'time_ratio_median')} | {cost_text(cost, 'activation_ratio_median')} | "
            f"{statistics.fmean(row['train_reward_first5']):.2f} → {statistics.fmean(row['train_reward_last5']):.2f} |")
    return "\n".join(lines) + "\n" + accuracy_by_step(report)


def accuracy_by_step(report) -> str:
    """Held-out accuracy at every evaluated step, mean [min, max] over seeds: when each method learned."""
    curves = {method: [report["curves"][f"{method}-seed{seed}"] for seed in report["seeds"]]
              for method in report["methods"]}
    steps = [point[0] for point in min(next(iter(curves.values())), key=len)]
    lines = ["\nHeld-out greedy accuracy at each evaluation, mean over seeds [min, max]:\n",
             "| method | " + " | ".join(f"step {step}" for step in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for method, runs in curves.items():
        cells = []
        for index in range(len(steps)):
            values = [run[index][1] for run in runs]
            cells.append(f"{statistics.fmean(values):.1%} [{min(values):.1%}, {max(values):.1%}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarise(results, methods, budget, seeds, extra, paired, wall_seconds, load_at_start) -> dict:
    per_method = {}
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        finals = [r["summary"]["accuracy_after"] for r in runs]
        bests = [max(point[1] for point in r["curve"]) for r in runs]
        per_method[method] = {
            "final_accuracy": finals, "mean": statistics.mean(finals), "min": min(finals), "max": max(finals),
            "best_accuracy": bests, "worst_drop_from_best": max(b - f for b, f in zip(bests, finals)),
            "accuracy_before": statistics.mean(r["summary"]["accuracy_before"] for r in runs),
            "used_fraction": statistics.mean(r["summary"]["used_fraction"] for r in runs),
            "tokens_to_model_fraction": statistics.mean(
                r["summary"]["tokens_to_model_in_updates"] / r["summary"]["full_tokens_to_model_in_updates"]
                for r in runs),
            "update_seconds_total": statistics.mean(r["summary"]["wall_seconds"]["update"] for r in runs),
            "rollout_seconds_total": statistics.mean(r["summary"]["wall_seconds"]["rollout"] for r in runs),
            "eval_seconds_total": statistics.mean(r["summary"]["wall_seconds"]["eval"] for r in runs),
            # mean sampled training reward over the first and the last 5 steps, per seed
            "train_reward_first5": [statistics.fmean(reward for _, reward in r["reward_curve"][:5]) for r in runs],
            "train_reward_last5": [statistics.fmean(reward for _, reward in r["reward_curve"][-5:]) for r in runs],
        }
    full_mean = per_method["full"]["mean"] if "full" in per_method else None
    for method, row in per_method.items():
        row["mean_minus_full_points"] = None if full_mean is None else (row["mean"] - full_mean) * 100
    from scripts.experiment_record import describe_machine

    from minnat.train import parse_args

    return {"date": time.strftime("%Y-%m-%d"), "machine": describe_machine(load_at_start), "threads_per_run": 1,
            "task": parse_args(extra).task, "budget": budget, "seeds": seeds,
            "extra_flags": extra, "wall_seconds": round(wall_seconds, 1),
            "command": "python scripts/compare_methods.py " + " ".join(sys.argv[1:]),
            "methods": per_method, "paired_costs": paired,
            "curves": {f"{r['method']}-seed{r['seed']}": r["curve"] for r in results},
            "train_reward_curves": {f"{r['method']}-seed{r['seed']}": r["reward_curve"] for r in results}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/compare", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method")
    parser.add_argument("--methods", nargs="+", default=["full", "urs", "rpc"],
                        help="trainer --method values to compare (full is the yardstick of the cost ratios)")
    parser.add_argument("--budget", type=float, default=0.5, help="ρ for every method but full")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one CPU thread each)")
    parser.add_argument("--paired-batches", type=int, default=5,
                        help="rollout batches for the same-batch cost ratios (0 = skip that measurement)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --, more flags for every run")
    args = parser.parse_args(argv)
    extra = [flag for flag in args.extra if flag != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]  # the 1-minute load average: was the machine idle?
    jobs = [(method, seed, args.budget if method != "full" else 1.0, str(out / "runs" / f"{method}-seed{seed}"), extra)
            for seed in args.seeds for method in args.methods]
    start = time.time()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(run_one, jobs):
            summary = result["summary"]
            print(f"{result['method']:>6} seed {result['seed']}: accuracy {summary['accuracy_before']:.1%} -> "
                  f"{summary['accuracy_after']:.1%}, tokens to the model {summary['tokens_to_model_in_updates']} "
                  f"of full's {summary['full_tokens_to_model_in_updates']}", flush=True)
            results.append(result)
    paired = paired_costs([(method, args.budget) for method in args.methods], args.paired_batches, args.seeds[0], extra) \
        if args.paired_batches else {}
    report = summarise(results, args.methods, args.budget, args.seeds, extra, paired, time.time() - start,
                       load_at_start)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(results, args.methods, args.budget, out / "accuracy.png", report["task"])
    table = markdown(report)
    (out / "README.md").write_text(f"# Methods compared on {report['task']}\n\n{report['date']}, {report['machine']}, "
                                   f"one thread per run; `{report['command']}`\n\n{table}\n"
                                   "![held-out accuracy by method](accuracy.png)\n")
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, {out / 'README.md'} and {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
