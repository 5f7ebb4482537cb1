"""The token-budget curve: final accuracy against the fraction of tokens trained on, per estimator.

    python scripts/budget_curve.py                         # writes experiments/budget_curve/
    python scripts/budget_curve.py --smoke                 # a two-step rehearsal of every part (tests use it)

On the long-addition default (the trainer's defaults: 30 steps × 128 responses, ~250-token answers),
for each ρ ∈ {0.1, 0.25, 0.5, 0.75} and each of `urs`, `rpc` (NAT: unbiased) and `rpc-unweighted`
(RPC's cut with weight 1 normalised over the kept tokens: biased), plus `full` once, 3 seeds each:

1. Learning (resumable: a finished run is read back, a killed one continues from its checkpoint).
   Per (method, ρ): the mean and range over seeds of the final held-out greedy accuracy, best − final
   (worst seed), and the tokens given to the model / full-token GRPO's on the same batches (the
   trainer counts both on every batch it updates on).
2. Cost on the same batches (`compare_methods.paired_costs`): one trainer per (method, ρ) at
   learning rate 0 updates the same rollout batches, arms interleaved in shuffled order, on one
   thread: update time and activation memory held for backward, as ratios to full's (medians).
3. The price and the alternative, on one fixed batch: each (method, ρ)'s per-draw gradient variance
   V = E‖g_k − g_full‖²/‖g_full‖² and relative bias b = ‖E[g_k] − g_full‖/‖g_full‖, computed as the
   explorer's Gradient-agreement view computes them (`minnat.diagnostics.gradient_agreement` on the
   view's default batch: 4 training prompts × 8 responses of the embedded model, seed 0).

The step count is the trainer's default for every method and ρ: at small ρ 30 steps may be too
few to converge, and the curve says so rather than giving small budgets more steps.

Writes OUT/results.json (with date, machine and command), OUT/README.md (the table the README
quotes), OUT/budget_curve.png and OUT/runs/<arm>-seed<k>/ (metrics.jsonl, summary.json).
Parts 2 and 3 are saved as they finish (OUT/paired_costs.json, OUT/gradient_stats.json) and not
redone; delete a file to measure it again (part 2's times want an otherwise idle machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.compare_methods import COLOURS, arm_label, paired_costs, run_one  # noqa: E402
from scripts.experiment_record import record_header, write_record  # noqa: E402

BUDGETS = (0.1, 0.25, 0.5, 0.75)
METHODS = ("urs", "rpc", "rpc-unweighted")
SMOKE_FLAGS = ["--steps", "2", "--batch-size", "16", "--num-eval", "8", "--eval-every", "1", "--max-new-tokens", "64"]


def arms(methods, budgets) -> list[tuple[str, float]]:
    """(method, ρ) pairs: full once (ρ = 1), then every method at every budget."""
    return [("full", 1.0)] + [(method, budget) for method in methods for budget in budgets]


# ----------------------------------------------------------------------------- part 3: V and b on one batch

def gradient_statistics(arm_list, extra, draws: int, log=print) -> dict:
    """Per arm, on the Gradient-agreement view's default batch: V, b, its standard error and the kept fraction."""
    import torch

    from minnat.diagnostics import gradient_agreement, policy_gradient
    from minnat.explorer.agreement import sample_training_batch
    from minnat.explorer.library import ModelLibrary
    from minnat.grpo import group_advantages
    from minnat.tasks import get_task
    from minnat.train import parse_args

    torch.set_num_threads(1)
    config = parse_args(extra)  # the trainer's task and model (with any extra flags)
    task = get_task(config.task, seed=config.task_seed)
    loaded = ModelLibrary(task=config.task).get(config.model)  # as the explorer loads it (its response limit too)
    model = loaded.model
    prompts, group, seed = 4, 8, 0  # the view's defaults
    batch = sample_training_batch(loaded, task, prompts, group, seed)
    advantages = group_advantages(batch.rewards, group)
    tensors = (batch.input_ids, batch.attention_mask, batch.response_mask)
    full_gradient = policy_gradient(model, *tensors, advantages)
    report = {"batch": {"prompts": prompts, "group_size": group, "seed": seed, "draws": draws,
                        "mean_response_length": float(batch.response_mask.sum(dim=1).float().mean()),
                        "mixed_groups": int((batch.rewards.view(-1, group).std(dim=1) > 0).sum())}}
    for method, budget in arm_list:
        if method == "full":
            continue
        result = gradient_agreement(model, *tensors, advantages, method, budget, draws, seed=seed,
                                    full_gradient=full_gradient)
        report[arm_label(method, budget)] = {
            "per_draw_variance": result.per_draw_variance, "bias": result.bias,
            "bias_standard_error": result.bias_standard_error, "bias_squared": result.bias_squared,
            "bias_squared_standard_error": result.bias_squared_standard_error, "bias_z": result.bias_z,
            "kept_fraction": result.kept_fraction}
        log(f"  gradient statistics: {arm_label(method, budget)} V = {result.per_draw_variance:.3g}, "
            f"b = {result.bias:.3g} ± {result.bias_standard_error:.2g}")
    return report


# ----------------------------------------------------------------------------- reusing an earlier comparison

def without_eval_cadence(flags: list[str]) -> list[str]:
    """Trainer flags minus `--eval-every K`: how often one evaluates does not change what is trained."""
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "--eval-every":
            skip = True
        elif not flag.startswith("--eval-every="):
            kept.append(flag)
    return kept


def run_record(method: str, budget: float, seed: int, accuracy_before: float, accuracy_after: float,
               kept_fraction: float, tokens_to_model_fraction: float, curve) -> dict:
    """One finished run read back from an earlier record, in the shape `run_one` returns."""
    summary = {"accuracy_before": accuracy_before, "accuracy_after": accuracy_after, "used_fraction": kept_fraction,
               "tokens_to_model_in_updates": tokens_to_model_fraction, "full_tokens_to_model_in_updates": 1.0}
    return {"method": method, "budget": budget, "seed": seed, "summary": summary,
            "curve": [tuple(point) for point in curve]}


def reusable_runs(path: Path, arm_list, seeds, extra) -> dict:
    """Runs of an earlier `compare_methods.py` with the same trainer flags, as `run_one` returns them.

    Keyed by (method, ρ, seed), for full and every method of `arm_list` at the comparison's ρ. Its
    per-seed curves and finals are exact; its token fractions are per-method means (all we use)."""
    earlier = json.loads(path.read_text())
    if without_eval_cadence(earlier["extra_flags"]) != without_eval_cadence(extra):
        raise SystemExit(f"--reuse {path}: that comparison ran with trainer flags {earlier['extra_flags']}, these "
                         f"runs use {extra}; run without --reuse, or with the same flags.")
    runs = {}
    for method, budget in arm_list:
        if (method != "full" and budget != earlier["budget"]) or method not in earlier["methods"]:
            continue
        row = earlier["methods"][method]
        for index, seed in enumerate(earlier["seeds"]):
            if seed not in seeds:
                continue
            runs[(method, budget, seed)] = {
                **run_record(method, budget, seed, row["accuracy_before"], row["final_accuracy"][index],
                             row["used_fraction"], row["tokens_to_model_fraction"],
                             earlier["curves"][f"{method}-seed{seed}"]),
                "reused_from": str(path), "reused_date": earlier["date"]}
    return runs


def recorded_runs(earlier: dict, extra) -> dict:
    """The runs an earlier invocation recorded in OUT/results.json (`earlier`, as loaded), as `run_one` returns them.

    OUT/runs/ is not committed (it is git-ignored), so on a new clone the committed results.json is
    what remains of the finished runs: each recorded (method, ρ, seed) is read back from it instead of
    trained again. Only records with each run's own token fractions (`per_seed`) or a single seed
    are exact enough to read back; a record made with other trainer flags is ignored."""
    if without_eval_cadence(earlier.get("extra_flags", [])) != without_eval_cadence(extra):
        return {}
    runs = {}
    for arm in earlier.get("arms", {}).values():
        per_seed = arm.get("per_seed")
        if per_seed is None and len(arm["seeds"]) != 1:
            continue
        for index, seed in enumerate(arm["seeds"]):
            fractions = per_seed[index] if per_seed else {key: arm[key] for key in ("kept_fraction",
                                                                                   "tokens_to_model_fraction")}
            runs[(arm["method"], arm["budget"], seed)] = run_record(
                arm["method"], arm["budget"], seed, arm["accuracy_before"], arm["final_accuracy"][index],
                fractions["kept_fraction"], fractions["tokens_to_model_fraction"], arm["curves"][f"seed{seed}"])
    return runs


def check_reproduced(rerun: dict, earlier: dict) -> dict:
    """The re-run of one reused (method, ρ, seed) must give the same accuracy wherever both evaluated."""
    before = {step: accuracy for step, accuracy, *_ in earlier["curve"]}
    common = [(step, accuracy, before[step]) for step, accuracy, *_ in rerun["curve"] if step in before]
    differing = [(step, now, then) for step, now, then in common if abs(now - then) > 1e-9]
    if not common or differing:
        raise SystemExit(f"--reuse: re-running {arm_label(rerun['method'], rerun['budget'])} seed {rerun['seed']} "
                         f"did not reproduce the earlier run (step, now, then: {differing or 'no common step'}); "
                         "the code under it has changed: run without --reuse.")
    return {"arm": arm_label(rerun["method"], rerun["budget"]), "seed": rerun["seed"],
            "steps_compared": [step for step, *_ in common], "identical": True}


def reuse_note(report: dict) -> str:
    reused = report.get("reused")
    if not reused:
        return ""
    check = reused["reproduction_check"]
    return (f"Reused, not re-trained: {', '.join(reused['runs'])} from `{reused['from']}` ({reused['date']}, same "
            f"trainer flags but the evaluation cadence). Re-training {check['arm']} seed {check['seed']} here gave "
            f"identical held-out accuracy at steps {check['steps_compared']}.\n\n")


# ----------------------------------------------------------------------------- summary, table, plot

def summarise_arm(runs: list[dict]) -> dict:
    finals = [run["summary"]["accuracy_after"] for run in runs]
    bests = [max(point[1] for point in run["curve"]) for run in runs]
    return {
        "seeds": [run["seed"] for run in runs], "final_accuracy": finals,
        "mean": statistics.fmean(finals), "min": min(finals), "max": max(finals),
        "best_minus_final_worst_seed": max(best - final for best, final in zip(bests, finals)),
        "accuracy_before": statistics.fmean(run["summary"]["accuracy_before"] for run in runs),
        "kept_fraction": statistics.fmean(run["summary"]["used_fraction"] for run in runs),
        "tokens_to_model_fraction": statistics.fmean(
            run["summary"]["tokens_to_model_in_updates"] / run["summary"]["full_tokens_to_model_in_updates"]
            for run in runs),
        "curves": {f"seed{run['seed']}": run["curve"] for run in runs},
        "per_seed": [{"kept_fraction": run["summary"]["used_fraction"],
                      "tokens_to_model_fraction": run["summary"]["tokens_to_model_in_updates"]
                      / run["summary"]["full_tokens_to_model_in_updates"]} for run in runs],
    }


def percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def ratio(cost: dict | None, key: str) -> str:
    return "—" if not cost else f"{cost[key]:.2f}"


def markdown_table(report: dict) -> str:
    lines = ["| method | ρ | final accuracy: mean [min, max] | mean − full (points) | best − final (worst seed) | "
             "kept / generated | tokens to the model / full's | update time / full's | activation memory / full's | "
             "per-draw V | bias b |", "|" + "---|" * 11]
    full_mean = report["arms"]["full"]["mean"]
    for label, row in report["arms"].items():
        cost = report["paired_costs"].get(label)
        gradient = report["gradient_statistics"].get(label)
        if gradient is None:
            v_text, b_text = "0", "0"
        else:
            v_text = f"{gradient['per_draw_variance']:.3g}"
            significant = gradient["bias_z"] >= 3.0
            b_text = (f"{gradient['bias']:.2f} (z = {gradient['bias_z']:.1f})" if significant
                      else f"not significant (z = {gradient['bias_z']:.1f})")
        lines.append(
            f"| {row['method']} | {row['budget']:g} | {percent(row['mean'])} [{percent(row['min'])}, "
            f"{percent(row['max'])}] | {(row['mean'] - full_mean) * 100:+.1f} | "
            f"{row['best_minus_final_worst_seed'] * 100:.1f} points | {row['kept_fraction']:.2f} | "
            f"{row['tokens_to_model_fraction']:.2f} | {ratio(cost, 'time_ratio_median')} | "
            f"{ratio(cost, 'activation_ratio_median')} | {v_text} | {b_text} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    full = report["arms"]["full"]
    axis.axhspan(full["min"] * 100, full["max"] * 100, color=COLOURS["full"], alpha=0.18,
                 label=f"full: seed range [{full['min']:.1%}, {full['max']:.1%}]")
    axis.axhline(full["mean"] * 100, color=COLOURS["full"], linewidth=1, linestyle="--")
    for method in report["methods"]:
        rows = sorted((row for row in report["arms"].values() if row["method"] == method),
                      key=lambda row: row["kept_fraction"])
        x = [row["kept_fraction"] for row in rows]
        mean = [row["mean"] * 100 for row in rows]
        low = [(row["mean"] - row["min"]) * 100 for row in rows]
        high = [(row["max"] - row["mean"]) * 100 for row in rows]
        label = method + (" (biased)" if method == "rpc-unweighted" else "")
        axis.errorbar(x, mean, yerr=[low, high], color=COLOURS.get(method), marker="o", capsize=3, label=label)
    axis.axhline(full["accuracy_before"] * 100, color="#999999", linewidth=1, linestyle=":",
                 label=f"before training ({full['accuracy_before']:.1%})")
    axis.set_xlabel("fraction of response tokens in the loss (kept / generated, mean over seeds)")
    axis.set_ylabel("final held-out greedy accuracy (%)")
    axis.set_xlim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    seeds = len(full["seeds"])
    over = "1 seed" if seeds == 1 else f"{seeds} seeds, bars = seed range"
    axis.set_title(f"{report['task']}: final accuracy vs token budget — mean over {over}",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------- main

def cached(path: Path, arm_list, compute, arms_of=lambda value: value):
    """Part 2 or 3, read back from `path` for the arms an earlier invocation measured; `compute(arms)`
    measures only the missing ones (all arms the first time) and the merged result is saved.

    `arms_of(value)` is the dict keyed by arm label inside a saved value."""
    value = json.loads(path.read_text()) if path.exists() else None
    have = set(arms_of(value)) if value is not None else set()
    missing = [arm for arm in arm_list if arm[0] != "full" and arm_label(*arm) not in have]
    if value is None or missing:
        fresh = compute(arm_list if value is None else [("full", 1.0)] + missing)
        if value is None:
            value = fresh
        else:
            arms_of(value).update({label: row for label, row in arms_of(fresh).items() if label not in have})
        path.write_text(json.dumps(value, indent=2))
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "budget_curve"))
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="parallel training runs, one CPU thread each")
    parser.add_argument("--paired-batches", type=int, default=3, help="rollout batches for the same-batch costs")
    parser.add_argument("--gradient-draws", type=int, default=32, help="draws for V and b (the view's default)")
    parser.add_argument("--reuse", metavar="RESULTS_JSON",
                        help="take full's arm and the arms at its ρ from an earlier scripts/compare_methods.py "
                             "results.json with the same trainer flags instead of training them again; the first "
                             "seed of one reused arm is trained again, and the script stops unless it reproduces")
    parser.add_argument("--smoke", action="store_true",
                        help=f"rehearse every part in seconds: trainer flags {' '.join(SMOKE_FLAGS)}, one paired "
                             "batch, 4 gradient draws")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --, more trainer flags for every run")
    args = parser.parse_args(argv)
    extra = (SMOKE_FLAGS if args.smoke else []) + [flag for flag in args.extra if flag != "--"]
    if args.smoke:
        args.paired_batches, args.gradient_draws = 1, 4
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    header = record_header("scripts/budget_curve.py", argv)
    load_at_start = os.getloadavg()[0]
    arm_list = arms(args.methods, args.budgets)
    started = time.time()

    reused = reusable_runs(Path(args.reuse), arm_list, args.seeds, extra) if args.reuse else {}
    check_key = next((key for key in reused if key[0] != "full"), None)  # re-trained to check reproduction
    earlier = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    earlier_check = (earlier.get("reused") or {}).get("reproduction_check")
    recorded = {key: run for key, run in recorded_runs(earlier, extra).items()
                if key[2] in args.seeds and (key[0], key[1]) in arm_list
                and (key not in reused or (key == check_key and earlier_check))
                and not (out / "runs" / f"{arm_label(key[0], key[1])}-seed{key[2]}" / "summary.json").exists()}
    to_train = [(method, seed, budget) for method, budget in arm_list for seed in args.seeds
                if (method, budget, seed) not in recorded
                and ((method, budget, seed) not in reused or (method, budget, seed) == check_key)]
    to_train.sort(key=lambda job: (job[0], job[2], job[1]) != check_key)  # the check first: a mismatch stops early
    jobs = [(method, seed, budget, str(out / "runs" / f"{arm_label(method, budget)}-seed{seed}"), extra)
            for method, seed, budget in to_train]
    if recorded:
        print(f"read back from {out / 'results.json'}: {len(recorded)} finished runs", flush=True)
    results = [run for key, run in reused.items() if key != check_key] + list(recorded.values())
    reproduction = earlier_check if check_key in recorded else None  # checked when it was recorded
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(run_one, jobs):
            summary = result["summary"]
            print(f"{arm_label(result['method'], result['budget']):>20} seed {result['seed']}: accuracy "
                  f"{summary['accuracy_before']:.1%} -> {summary['accuracy_after']:.1%}", flush=True)
            if (result["method"], result["budget"], result["seed"]) == check_key:
                reproduction = check_reproduced(result, reused[check_key])
                print(f"  reproduces the reused run at steps {reproduction['steps_compared']}", flush=True)
            results.append(result)
    training_seconds = time.time() - started

    paired = cached(out / "paired_costs.json", arm_list, lambda todo: {
        "load_average_at_start": os.getloadavg()[0], "threads": 1, "batches": args.paired_batches,
        "arms": paired_costs(todo, args.paired_batches, args.seeds[0], extra)}, arms_of=lambda value: value["arms"])
    gradients = cached(out / "gradient_stats.json", arm_list,
                       lambda todo: gradient_statistics(todo, extra, args.gradient_draws))  # keyed by arm (+ "batch")
    from minnat.train import parse_args
    report = {**header, "load_average_at_start": load_at_start, "threads_per_run": 1,
              "task": parse_args(extra).task, "methods": args.methods, "budgets": args.budgets, "seeds": args.seeds,
              "extra_flags": extra, "training_wall_seconds": round(training_seconds, 1),
              "reused": None if not reused else {
                  "from": args.reuse, "date": next(iter(reused.values()))["reused_date"],
                  "runs": sorted(f"{arm_label(method, budget)}-seed{seed}" for method, budget, seed in reused
                                 if (method, budget, seed) != check_key),
                  "reproduction_check": reproduction},
              "arms": {}, "paired_costs": paired["arms"], "paired_costs_conditions": {
                  key: value for key, value in paired.items() if key != "arms"},
              "gradient_statistics": {key: value for key, value in gradients.items() if key != "batch"},
              "gradient_batch": gradients["batch"]}
    for method, budget in arm_list:
        runs = [r for r in results if r["method"] == method and r["budget"] == budget]
        report["arms"][arm_label(method, budget)] = {"method": method, "budget": budget, **summarise_arm(runs)}
    plot(report, out / "budget_curve.png")
    table = markdown_table(report)
    readme = (f"# The token-budget curve ({report['task']})\n\n{header['date']}, {header['machine']}, torch "
              f"{header['torch']}, one thread per run; `{header['command']}`\n\n"
              f"Same-batch costs: {paired['batches']} rollout batches, arms interleaved, one thread, load average "
              f"{paired['load_average_at_start']:.2f} when they started. V and b: the Gradient-agreement view's "
              f"default batch ({gradients['batch']['prompts']} prompts × {gradients['batch']['group_size']}, seed "
              f"{gradients['batch']['seed']}, {gradients['batch']['draws']} draws, "
              f"{gradients['batch']['mixed_groups']} group(s) with mixed rewards).\n\n{reuse_note(report)}{table}\n"
              "![final accuracy vs token budget](budget_curve.png)\n")
    write_record(out, report, readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
