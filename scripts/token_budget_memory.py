"""Does --token-budget hold the update's activation memory steady when response lengths vary 2×?

    python scripts/token_budget_memory.py          # writes experiments/token_budget/{results.json,README.md}

Item 5 of issue 12. Runs `minnat.train.Trainer.update` — the trainer's own update, with its
activation meter (bytes autograd saves for backward, `minnat.measure.ActivationMeter`) — on
rollout batches whose response lengths are drawn around a mean m that changes from step to
step over a 2× range (m, 1.5m, 2m; L_b ~ Uniform{⌈m/2⌉..⌈3m/2⌉}, B = 64, a fixed prompt
length). The batches are synthetic (random token ids, rewards that mix 0 and 1 in each
group) so that the lengths are exactly what we ask for; the update does not care what the
tokens say. Three settings on the same batches:

* `--budget 0.5`                       ρ fixed: memory follows the lengths;
* `--token-budget N`                   ρ = min(1, N / Σ|o_i|) per step;

each with `--cut-sampling independent` and `stratified` (the trainer's default).

Memory (bytes saved for backward) does not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minnat.rollout import RolloutBatch  # noqa: E402
from minnat.train import Trainer, TrainConfig  # noqa: E402
from scripts.experiment_record import record_header, write_record  # noqa: E402


def synthetic_batch(mean_length: int, batch_size: int, group_size: int, prompt_length: int, vocab_size: int,
                    columns: int, seed: int) -> RolloutBatch:
    """B right-padded responses with L_b ~ Uniform{⌈m/2⌉..⌈3m/2⌉}, random ids, rewards mixed in every group."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(math.ceil(mean_length / 2), math.ceil(1.5 * mean_length) + 1, (batch_size,),
                            generator=generator)
    response_mask = torch.arange(columns).unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.randint(3, vocab_size, (batch_size, prompt_length + columns), generator=generator)
    attention_mask = torch.cat([torch.ones(batch_size, prompt_length, dtype=torch.long), response_mask.long()], 1)
    rewards = (torch.arange(batch_size) % 2).float()[torch.randperm(batch_size, generator=generator)]
    rewards.view(-1, group_size)[:, 0], rewards.view(-1, group_size)[:, 1] = 0.0, 1.0  # every group mixes
    return RolloutBatch(ids * attention_mask, attention_mask, response_mask, rewards,
                        torch.zeros(batch_size, dtype=torch.bool), [""] * batch_size, [None] * batch_size, group_size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mean-lengths", type=int, nargs="+", default=[60, 90, 120],
                        help="mean response length of each step's batch (a 2× range by default)")
    parser.add_argument("--repeats", type=int, default=3, help="batches (and draws) per mean length")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=None,
                        help="N; default: ρ = 0.5 of the shortest setting's expected total, B·m_min/2")
    parser.add_argument("--task", default="arithmetic", help="the embedded model of this task is updated")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "token_budget"))
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    token_budget = args.token_budget or args.batch_size * min(args.mean_lengths) // 2
    columns = math.ceil(1.5 * max(args.mean_lengths))
    settings = {"budget 0.5, independent cuts": dict(budget=0.5, cut_sampling="independent"),
                "budget 0.5, stratified cuts": dict(budget=0.5, cut_sampling="stratified"),
                f"token-budget {token_budget}, independent cuts": dict(token_budget=token_budget,
                                                                       cut_sampling="independent"),
                f"token-budget {token_budget}, stratified cuts": dict(token_budget=token_budget,
                                                                      cut_sampling="stratified")}
    steps = [(m, repeat) for m in args.mean_lengths for repeat in range(args.repeats)]
    results = {**record_header("scripts/token_budget_memory.py", argv),
               "batch_size": args.batch_size, "prompt_length": args.prompt_length, "token_budget": token_budget,
               "mean_lengths": args.mean_lengths, "settings": {}}
    for name, overrides in settings.items():
        with tempfile.TemporaryDirectory() as run_dir:
            config = TrainConfig(task=args.task, method="rpc", batch_size=args.batch_size,
                                 group_size=args.group_size, max_new_tokens=columns, out=run_dir, overwrite=True,
                                 seed=0, **overrides)
            trainer = Trainer(config, progress=False)
            vocab = trainer.model.config.vocab_size
            rows = []
            for index, (mean_length, repeat) in enumerate(steps):
                batch = synthetic_batch(mean_length, args.batch_size, args.group_size, args.prompt_length, vocab,
                                        columns, seed=1000 * mean_length + repeat)
                metrics = trainer.update(batch)
                rows.append({"mean_length": mean_length, "response_tokens": int(batch.response_mask.sum()),
                             "budget": metrics["budget"], "kept_tokens": metrics["response_tokens_used"],
                             "activation_bytes": metrics["activation_bytes"]})
        memory = torch.tensor([row["activation_bytes"] for row in rows], dtype=torch.float64)
        mean = float(memory.mean())
        results["settings"][name] = {
            "steps": rows, "activation_mean_bytes": mean,
            "max_deviation_from_mean": float((memory - mean).abs().max() / mean),
            "max_over_min": float(memory.max() / memory.min())}
    write_record(args.out, results, markdown(results))
    return 0


def markdown(results: dict) -> str:
    lengths = results["mean_lengths"]
    lines = [f"# Activation memory of the update with and without --token-budget", "",
             f"{results['date']}, {results['machine']}, torch {results['torch']}. Command: "
             f"`{results['command'].strip()}`. Bytes autograd saves for backward in `Trainer.update` (not "
             "load-sensitive).", "",
             f"B = {results['batch_size']} responses per step, prompts of {results['prompt_length']} tokens, mean "
             f"response length per step {', '.join(map(str, lengths))} (a {max(lengths) / min(lengths):g}× range), "
             "RPC.", "",
             "| setting | mean activation | largest deviation from the mean | max / min |", "|---|---|---|---|"]
    for name, row in results["settings"].items():
        lines.append(f"| {name} | {row['activation_mean_bytes'] / 2 ** 20:.1f} MiB | "
                     f"±{row['max_deviation_from_mean']:.1%} | {row['max_over_min']:.2f} |")
    lines += ["", "Per step (mean length → response tokens, ρ of the step, kept tokens, activation MiB):", ""]
    for name, row in results["settings"].items():
        steps = "; ".join(f"{s['mean_length']}→{s['response_tokens']}, ρ={s['budget']:.3f}, {s['kept_tokens']}, "
                          f"{s['activation_bytes'] / 2 ** 20:.1f}" for s in row["steps"])
        lines.append(f"- **{name}**: {steps}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
