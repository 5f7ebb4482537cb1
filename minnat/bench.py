"""What NAT saves, measured side by side: `python -m minnat.bench`.

NAT's promise is cost: a policy update that trains on a fraction ρ of the response tokens
should cost less than the full-token update. This module measures how much less, for full
GRPO, URS and RPC, on the *same* batch and the *same* selection draws, so that every ratio
is a paired comparison.

Mode "update" (default) times the policy-update step alone — no rollout:

    logprobs = response_logprobs(model, batch, selection)        (minnat.logprobs)
    loss     = policy_loss(logprobs, logprobs.detach(), Â, mask,   (minnat.grpo, on-policy μ = 1)
                           weights = keep/π)
    loss.backward()

and reports, for each method, budget ρ and response length T:

    time_seconds        wall time of forward + backward; repeats interleaved across methods
                        (each repeat's time averaged over the selection draws; median over repeats)
    flops               FLOPs executed by forward + backward (torch.utils.flop_counter.FlopCounterMode;
                        the LM head's recomputation in backward included — it really runs)
    activation_bytes    bytes of tensors saved for backward (minnat.measure.ActivationMeter); with
                        --gradient-checkpointing that is each checkpointed layer's input, which the
                        checkpoint saves through the same hooks (the transient recomputation is not)
    peak_memory_bytes   torch.cuda.max_memory_allocated during the step (CUDA only; weights and
                        gradients included, as a GPU user sees it); peak_step_memory_bytes is the
                        part above what was allocated when the step began (the weights)
    tokens_to_model     rows × columns given to the transformer, padding included (LogprobStats)
    response_tokens_used  response tokens that enter the loss (kept tokens)

each also as a ratio to full on the same batch: time_ratio, flops_ratio, activation_ratio,
peak_memory_ratio (and tokens_to_model_ratio, peak_step_memory_ratio). RPC's cost is random
(it depends on where the cuts fall), so every point averages `--draws` selection draws: the
expected cost is what a training run pays. A few independent draws of a few cuts are a noisy
estimate of it (±12% of the kept tokens at ρ = 0.5 with 3 × 8 cuts), so by default the cut
levels of a point's draws are stratified (`stratified_rpc_selections`): each cut still has
exactly RPC's law, but together they keep ρ of the tokens to about ±1%.

The batch: B responses of a fixed prompt length P and ragged lengths L_b ~ Uniform{⌈T/2⌉..T}
(random token ids, right-padded, random advantages), drawn from a seed that depends only on
(seed, T): every method and every budget at one T sees byte-for-byte the same tensors, and
each row of bench.json carries a fingerprint of them to prove it.

What to expect. With Σ_b L_b response tokens and prompts of P tokens, RPC gives the model
P + C_b − 1 tokens per row with E[C_b] ≈ ρ·L_b, so its token ratio is about

    (P + ρ·L) / (P + L)        (= P/(P+L) + ρ·L/(P+L))

— the prompt is never cut, so short prompts (response-dominated RL workloads) show the most.
Attention costs grow like length², so RPC's FLOP ratio is a little below its token ratio;
the LM head runs only at kept positions, ratio ρ exactly. URS gives the transformer every
token (a kept token late in the response needs all the columns before it) and saves only the
LM head and log-softmax on dropped positions: a visible saving only with a large vocabulary
(Qwen's 151,936), which `--vocab-size` lets the tiny body show on CPU.

Padding, honestly. `response_logprobs` groups the rows of every method into micro-batches of
similar needed length (`plan_micro_batches`: padding traded against a per-pass overhead worth
`--micro-batch-overhead-tokens` tokens, default: response_logprobs' own), so full and URS get
the same padding savings as RPC, and RPC at ρ = 1 costs exactly what full costs (tests check
it): the ratios show what the cut removes, not padding that full could have removed too.

Mode "step" times whole training steps (rollout + update) of `minnat.train.Trainer` on the
embedded model, so one sees what share of a step's wall time NAT can touch at all.

Mode "verl" (`minnat.bench_verl`, needs `minnat[verl]`) runs one actor update through verl 0.9's
own FSDP2 engine on CPU, stock `ppo_loss` vs NAT-RPC (`minnat.integrations.verl`) at ρ on the same
batch: tokens given to the model and time, interleaved repeats; verl.json and verl.md.

Mode "memory" (`minnat.bench_memory`) measures the update step's peak memory — saved for
backward, peak above the step's start, total peak — for minnat full/URS/RPC, stock TRL's
`GRPOTrainer._compute_loss` and TRL+NAT on the same batch, each in a fresh process, and the LM
head alone (tiled against the previous design); then times them interleaved.

Mode "lora" (`minnat.bench_lora`) measures the same step for full/URS/RPC with every weight trained
and with LoRA adapters, and predicts the one-GPU budget of Qwen3-0.6B…8B (weights, training
states, activations with and without RPC) from per-token activation bytes measured on each
size's widths.

The modules share their presets, batches and selections through `minnat.bench_common`; imports
flow one way: bench -> bench_memory, bench_lora -> bench_common.

Time ratios are findings only when their repeats agree: each ratio is checked with
`minnat.measure.ratio_spread` (≥ 3 repeats, per-repeat ratios within 10% of their median);
otherwise it is printed as unreliable, with its spread and the remedy, never as met or missed.
On CPU the default is one torch thread (`--threads`), stated in every report with the load
average: torch's default of a thread per core collapses on a machine other jobs are using.

Outputs in --out: bench.json (list of rows), bench.md (table), bench.png (ratios vs budget
and vs response length); step mode writes step.json and step.md; memory mode memory.json and
memory.md; lora mode lora.json and lora.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from minnat.bench_common import (BENCH_PRESETS, DEFAULT_OVERHEAD_TOKENS, BenchBatch,
                                 batch_seed, build_model, describe_threads, draw_selection, make_batch,
                                 policy_update_loss, selection_seed, stratified_rpc_selections, tensor_fingerprint,
                                 zero_gradients)
from minnat.bench_lora import PREDICT_PRESETS, run_lora_benchmark
from minnat.bench_memory import run_memory_benchmark
from minnat.logprobs import LogprobStats
from minnat.measure import ActivationMeter, ratio_spread, stopwatch, synchronize
from minnat.models import choose_cpu_threads, resolve_device, resolve_dtype
from minnat.nat import RPC_CUT_DISTRIBUTIONS, Selection, check_budget

# The paper's headline (arXiv 2603.06619): RPC at about half the response tokens, Qwen3-8B, on GPU.
PAPER = {"model": "Qwen3-8B", "budget": 0.5, "time_ratio": 0.71, "peak_memory_ratio": 0.82}
# What this benchmark is expected to show for RPC at ρ = 0.5 on a response-dominated batch (issue 4).
RPC_TARGETS = {"flops_ratio": 0.55, "activation_ratio": 0.55, "time_ratio": 0.60}
CUT_SAMPLINGS = ("stratified", "independent")
# Each ratio and the field it divides by full's on the same batch.
RATIOS = {"time_ratio": "time_seconds", "time_ratio_best": "time_seconds_best", "flops_ratio": "flops", "activation_ratio": "activation_bytes",
          "peak_memory_ratio": "peak_memory_bytes", "peak_step_memory_ratio": "peak_step_memory_bytes",
          "tokens_to_model_ratio": "tokens_to_model"}


# ----------------------------------------------------------------------------- FLOP counting on CPU
def register_cpu_attention_flops() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels SDPA dispatches to on CPU.

    torch counts `_scaled_dot_product_{flash,efficient,cudnn}_attention` (the CUDA kernels) but
    not `_scaled_dot_product_flash_attention_for_cpu`, so on CPU attention would count 0 FLOPs
    and RPC's quadratic saving would be invisible. We register torch's own SDPA formulas
    (2 matmuls forward: Q·Kᵀ and P·V; the causal mask is not discounted, as for CUDA).
    """
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(forward)
        def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)
    if backward is not None and backward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(backward)
        def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                     out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


register_cpu_attention_flops()


def count_step(model, batch: BenchBatch, selection: Selection, **options) -> dict:
    """FLOPs, bytes saved for backward and what the model was given, for one forward + backward."""
    zero_gradients(model)
    stats = LogprobStats()
    counter = FlopCounterMode(display=False)
    with counter:
        with ActivationMeter(model) as meter:
            loss = policy_update_loss(model, batch, selection, stats=stats, **options)
        loss.backward()
    zero_gradients(model)
    return {"flops": int(counter.get_total_flops()), "activation_bytes": int(meter.bytes),
            "tokens_to_model": stats.tokens_to_model, "real_tokens_to_model": stats.real_tokens_to_model,
            "positions_scored": stats.positions_scored, "micro_batches": stats.micro_batches}


def timed_step(model, batch: BenchBatch, selection: Selection, device: str,
               **options) -> tuple[float, int | None, int | None]:
    """One policy update: (wall seconds of forward + backward, peak CUDA bytes, peak CUDA bytes above
    what was allocated when the step began — weights and the batch). The peaks are None off CUDA."""
    zero_gradients(model)
    is_cuda = str(device).startswith("cuda")
    if is_cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        at_start = torch.cuda.memory_allocated(device)
    times = {}
    with stopwatch(times, "step", device):
        loss = policy_update_loss(model, batch, selection, **options)
        loss.backward()
    peak = int(torch.cuda.max_memory_allocated(device)) if is_cuda else None
    del loss
    zero_gradients(model)
    return times["step"], peak, (peak - at_start if is_cuda else None)


def calibrate_pass_overhead(model, device: str, vocab_size: int, longest: int, repeats: int = 5) -> int:
    """What one extra forward + backward pass is worth in tokens, on this model and device.

    `plan_micro_batches` trades padding against a fixed per-pass cost given in tokens; the right
    value depends on the model and the hardware (a 2-layer model on a CPU pays a few
    milliseconds per pass, a few dozen tokens' worth). We time single-row policy updates of
    n₁ = 32 and n₂ = `longest` tokens (median of `repeats`), fit t(n) = a + b·n, and return a/b.
    """
    def seconds(tokens: int) -> float:
        batch = make_batch(1, 8, max(tokens - 8, 1), vocab_size, seed=0, shortest_fraction=1.0).to(device)
        selection = draw_selection(batch, "full", 1.0, seed=0).to(device)
        timed_step(model, batch, selection, device)  # warm-up
        return statistics.median(timed_step(model, batch, selection, device)[0]
                                 for _ in range(repeats))

    short, long = 32, max(longest, 64)
    short_seconds, long_seconds = seconds(short), seconds(long)
    per_token = max(long_seconds - short_seconds, 1e-12) / (long - short)
    return max(0, round((short_seconds - per_token * short) / per_token))


# ----------------------------------------------------------------------------- one benchmark point
@dataclass
class Case:
    """One (method, budget, draw) measured at a response length."""

    method: str
    budget: float
    draw: int
    selection: Selection


def measure_response_length(model, batch: BenchBatch, budgets: list[float], *, draws: int, repeats: int,
                            device: str, seed: int, overhead_tokens: int,
                            cut_distribution: str, cut_sampling: str = "stratified", log=print) -> list[dict]:
    """All rows (full, then URS and RPC at every budget) for one batch, every ratio against full on it."""
    cases = [Case("full", 1.0, draw, draw_selection(batch, "full", 1.0, selection_seed(seed, draw)))
             for draw in range(draws)]
    for budget in budgets:
        cases += [Case("urs", budget, draw, draw_selection(batch, "urs", budget, selection_seed(seed, draw)))
                  for draw in range(draws)]
        if cut_sampling == "stratified":
            rpc = stratified_rpc_selections(batch, budget, draws, selection_seed(seed, 0), cut_distribution)
        else:
            rpc = [draw_selection(batch, "rpc", budget, selection_seed(seed, draw), cut_distribution)
                   for draw in range(draws)]
        cases += [Case("rpc", budget, draw, selection) for draw, selection in enumerate(rpc)]
    device_batch = batch.to(device)
    options = dict(overhead_tokens=overhead_tokens)

    # Warm-up: the first passes pay for allocator growth and kernel selection.
    for case in cases[:1] + [c for c in cases if c.method == "rpc"][:1]:
        timed_step(model, device_batch, case.selection.to(device), device, **options)

    counts = {}
    for case in cases:  # deterministic quantities: counted once per case
        counts[id(case)] = count_step(model, device_batch, case.selection.to(device), **options)

    times = {id(case): [] for case in cases}
    peaks = {id(case): [] for case in cases}
    step_peaks = {id(case): [] for case in cases}
    for repeat in range(repeats):  # every repeat visits every case, in a fresh random order
        order = list(cases)
        random.Random(seed * 31 + repeat).shuffle(order)
        for case in order:
            seconds, peak, step_peak = timed_step(model, device_batch, case.selection.to(device), device, **options)
            times[id(case)].append(seconds)
            peaks[id(case)].append(peak)
            step_peaks[id(case)].append(step_peak)
        log(f"    repeat {repeat + 1}/{repeats} done")

    fingerprint = batch.fingerprint()
    rows = []
    groups = [("full", 1.0)] + [(method, budget) for budget in budgets for method in ("urs", "rpc")]
    for method, budget in groups:
        members = [case for case in cases if case.method == method and case.budget == budget]
        # repeat r's time of this method, averaged over draws: pairs with full's repeat r below
        per_repeat = [statistics.fmean(times[id(case)][r] for case in members) for r in range(repeats)]
        row = {
            "method": method, "budget": budget, "response_length": batch.response_length,
            "prompt_length": batch.prompt_length, "batch_size": int(batch.input_ids.shape[0]),
            "draws": len(members), "repeats": repeats,
            "time_seconds": statistics.median(per_repeat),
            "time_seconds_best": min(per_repeat),
            "time_seconds_min": min(min(times[id(case)]) for case in members),
            "time_seconds_max": max(max(times[id(case)]) for case in members),
            "time_seconds_per_repeat": per_repeat,
            "flops_per_draw": [counts[id(case)]["flops"] for case in members],
            "activation_bytes_per_draw": [counts[id(case)]["activation_bytes"] for case in members],
            "tokens_to_model_per_draw": [counts[id(case)]["tokens_to_model"] for case in members],
            "response_tokens": int(batch.response_mask.sum()),
            "response_tokens_used_per_draw": [int(case.selection.keep.sum()) for case in members],
            "batch_fingerprint": fingerprint,
            "selection_fingerprints": [tensor_fingerprint(case.selection.keep) for case in members],
        }
        for key in ("flops", "activation_bytes", "tokens_to_model", "real_tokens_to_model", "positions_scored",
                    "micro_batches"):
            row[key] = statistics.fmean(counts[id(case)][key] for case in members)
        row["response_tokens_used"] = statistics.fmean(row["response_tokens_used_per_draw"])
        row["used_fraction"] = row["response_tokens_used"] / max(row["response_tokens"], 1)
        for key, values in (("peak_memory_bytes", peaks), ("peak_step_memory_bytes", step_peaks)):
            measured = [max(values[id(case)]) for case in members if values[id(case)][0] is not None]
            row[key] = statistics.fmean(measured) if measured else None
        rows.append(row)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """X_ratio = X / X of full, for the rows of one batch (full is the first row)."""
    full = rows[0]
    if full["method"] != "full":
        raise ValueError("add_ratios needs the full-token row first.")
    for row in rows:
        for ratio, key in RATIOS.items():
            mine, reference = row.get(key), full.get(key)
            row[ratio] = mine / reference if mine is not None and reference else None
        paired = [mine / reference for mine, reference in zip(row["time_seconds_per_repeat"],
                                                               full["time_seconds_per_repeat"])]
        row["time_ratio_min"], row["time_ratio_max"] = min(paired), max(paired)
        spread = ratio_spread(paired) if row is not full else {"reliable": True, "note": "the reference"}
        row["time_ratio_reliable"], row["time_ratio_note"] = spread["reliable"], spread["note"]


# ----------------------------------------------------------------------------- reports
def fmt_count(value, unit="") -> str:
    if value is None:
        return "–"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def fmt_ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per (response length, method, budget), ratios against full on the same batch."""
    has_peak = any(row.get("peak_memory_bytes") is not None for row in rows)
    header = ["T", "method", "ρ", "tokens to model", "resp. tokens used", "time (s)", "time ratio [min–max]", "best",
              "FLOPs", "FLOPs ratio", "act. bytes", "act. ratio"]
    if has_peak:
        header += ["peak mem", "peak ratio", "peak above weights", "ratio"]
    header.append(f"paper ({PAPER['model']}, GPU)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["response_length"]), row["method"], f"{row['budget']:g}",
                 f"{row['tokens_to_model']:.0f} ({row['tokens_to_model_ratio']:.2f})",
                 f"{row['response_tokens_used']:.0f} ({row['used_fraction']:.2f})",
                 f"{row['time_seconds']:.3f}",
                 f"{row['time_ratio']:.3f} [{row['time_ratio_min']:.2f}–{row['time_ratio_max']:.2f}]"
                 + ("" if row.get("time_ratio_reliable", True) else " unreliable"),
                 f"{row['time_ratio_best']:.3f}",
                 fmt_count(row["flops"]), fmt_ratio(row["flops_ratio"]),
                 fmt_count(row["activation_bytes"], "B"), fmt_ratio(row["activation_ratio"])]
        if has_peak:
            cells += [fmt_count(row.get("peak_memory_bytes"), "B"), fmt_ratio(row.get("peak_memory_ratio")),
                      fmt_count(row.get("peak_step_memory_bytes"), "B"), fmt_ratio(row.get("peak_step_memory_ratio"))]
        is_paper_point = row["method"] == "rpc" and abs(row["budget"] - PAPER["budget"]) < 1e-9
        cells.append(f"time {PAPER['time_ratio']}, peak mem {PAPER['peak_memory_ratio']}" if is_paper_point else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RESPONSE_DOMINATED_PROMPT_SHARE = 0.16  # the targets are for batches whose prompts are at most 16% of a row


def prompt_share(row: dict) -> float:
    """P / (P + L̄): the part of an average row RPC can never cut."""
    mean_response = row["response_tokens"] / row["batch_size"]
    return row["prompt_length"] / (row["prompt_length"] + mean_response)


def rpc_rows_at(rows: list[dict], budget: float) -> list[dict]:
    return [row for row in rows if row["method"] == "rpc" and abs(row["budget"] - budget) < 1e-9]


def target_checks(rows: list[dict], budget: float = 0.5) -> list[str]:
    """Where RPC at ρ = 0.5 stands against the issue's targets and the paper's figures, one line per T."""
    lines = []
    for row in rpc_rows_at(rows, budget):
        share = prompt_share(row)
        expected = share + budget * (1 - share)
        in_scope = share <= RESPONSE_DOMINATED_PROMPT_SHARE + 1e-9
        verdicts = []
        for name, limit in RPC_TARGETS.items():
            value = row.get(name)
            if value is None:
                continue
            if name == "time_ratio" and not row.get("time_ratio_reliable", True):
                verdicts.append(f"time_ratio not a finding ({row['time_ratio_note']})")
                continue
            verdict = ("met" if value <= limit else f"MISSED by {value - limit:.3f}") if in_scope else "n/a"
            verdicts.append(f"{name} {value:.3f} (target ≤ {limit}: {verdict})")
        if row.get("time_ratio_reliable", True):
            verdicts.append(f"best-of-{row['repeats']} time ratio {row['time_ratio_best']:.3f}")
        if row.get("peak_memory_ratio") is not None:
            verdicts.append(f"peak_memory_ratio {row['peak_memory_ratio']:.3f}")
        scope = "" if in_scope else (f" — prompt share {share:.0%} > {RESPONSE_DOMINATED_PROMPT_SHARE:.0%}: not the "
                                     "response-dominated workload the targets are for")
        lines.append(f"T={row['response_length']} (prompt share {share:.0%}): " + "; ".join(verdicts) +
                     f"; tokens to model {row['tokens_to_model_ratio']:.3f} of full (expected ≈ P/(P+L̄) + "
                     f"ρ·L̄/(P+L̄) = {expected:.3f}){scope}")
    return lines


def explain_misses(rows: list[dict], budget: float = 0.5) -> list[str]:
    """Why a missed target was missed, from the numbers themselves (response-dominated points only)."""
    notes, full_by_length = [], {row["response_length"]: row for row in rows if row["method"] == "full"}
    for row in rpc_rows_at(rows, budget):
        if prompt_share(row) > RESPONSE_DOMINATED_PROMPT_SHARE + 1e-9:
            continue
        missed_count = [name for name in ("flops_ratio", "activation_ratio")
                        if row.get(name) is not None and row[name] > RPC_TARGETS[name]]
        if missed_count:
            notes.append(f"T={row['response_length']}: {', '.join(missed_count)} above target: RPC never cuts the "
                         f"prompt ({prompt_share(row):.0%} of a row) and its micro-batches carry padding; the model "
                         f"was given {row['tokens_to_model_ratio']:.3f} of full's tokens, which bounds these ratios "
                         "from below.")
        if row.get("time_ratio") is not None and row["time_ratio"] > RPC_TARGETS["time_ratio"] \
                and row.get("time_ratio_reliable", True):
            full = full_by_length[row["response_length"]]
            note = (f"T={row['response_length']}: median time ratio {row['time_ratio']:.3f} vs FLOPs ratio "
                    f"{row['flops_ratio']:.3f}; per-repeat ratios spread {row['time_ratio_min']:.2f}–"
                    f"{row['time_ratio_max']:.2f}, ")
            if row["time_ratio_best"] <= RPC_TARGETS["time_ratio"]:
                note += (f"and the fastest repeats give {row['time_ratio_best']:.3f}: the median is disturbed by other "
                         "work on the machine (repeat more, or run on an idle machine).")
            else:
                note += (f"best {row['time_ratio_best']:.3f}: RPC ran {row['micro_batches']:.1f} micro-batches (full "
                         f"{full['micro_batches']:.1f}); smaller matrix products run less efficiently and every pass "
                         "pays a fixed overhead, so time falls less than FLOPs.")
            notes.append(note)
    return notes


def write_plot(rows: list[dict], path: Path, title: str) -> bool:
    """bench.png: left, ratios vs budget at the longest T; right, ratios vs T at ρ = 0.5 (or nearest)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed; bench.png not written.", file=sys.stderr)
        return False
    lengths = sorted({row["response_length"] for row in rows})
    budgets = sorted({row["budget"] for row in rows if row["method"] != "full"})
    if not budgets:
        return False
    middle = min(budgets, key=lambda value: abs(value - 0.5))
    longest = lengths[-1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"flops": "-", "activation": "--", "time": ":", "peak_memory": "-."}
    colors = {"rpc": "tab:red", "urs": "tab:blue"}
    for method in ("rpc", "urs"):
        for name, style in styles.items():
            points = sorted((row["budget"], row[f"{name}_ratio"]) for row in rows
                            if row["method"] == method and row["response_length"] == longest
                            and row.get(f"{name}_ratio") is not None)
            if points:
                left.plot(*zip(*points), style, marker="o", color=colors[method], label=f"{method.upper()} {name}")
            points = sorted((row["response_length"], row[f"{name}_ratio"]) for row in rows
                            if row["method"] == method and row["budget"] == middle
                            and row.get(f"{name}_ratio") is not None)
            if points:
                right.plot(*zip(*points), style, marker="o", color=colors[method], label=f"{method.upper()} {name}")
    left.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="ratio = ρ")
    left.scatter([PAPER["budget"]], [PAPER["time_ratio"]], marker="*", s=160, color="black",
                 label=f"paper RPC time ({PAPER['model']})", zorder=5)
    left.scatter([PAPER["budget"]], [PAPER["peak_memory_ratio"]], marker="P", s=120, color="black",
                 label=f"paper RPC peak memory ({PAPER['model']})", zorder=5)
    left.set(xlabel="budget ρ (expected fraction of response tokens kept)", ylabel="cost / full on the same batch",
             title=f"vs budget, T = {longest}", xlim=(0, 1.05), ylim=(0, 1.15))
    right.axhline(middle, color="grey", linewidth=0.8)
    right.set(xlabel="response length T (L ~ U[T/2, T])", ylabel="cost / full on the same batch",
              title=f"vs response length, ρ = {middle:g}", ylim=(0, 1.15))
    if len(lengths) > 1:
        right.set_xscale("log", base=2)
    right.set_xticks(lengths, [str(length) for length in lengths])
    right.minorticks_off()
    for axes in (left, right):
        axes.grid(alpha=0.3)
    left.legend(fontsize=7, loc="center left")
    figure.suptitle("\n".join(textwrap.wrap(title, 150)), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def describe_run(options, model, dtype, device) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    config = model.config
    return (f"preset {options.preset} ({parameters / 1e6:.1f}M parameters, {config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}, vocab {config.vocab_size}), {str(dtype).replace('torch.', '')} on "
            f"{device}{', gradient checkpointing' if options.gradient_checkpointing else ''}; batch "
            f"{options.batch_size} × (prompt {options.prompt_length} + response L ~ U[T/2, T]); "
            f"{options.draws} selection draws ({options.cut_sampling} RPC cuts) × {options.repeats} interleaved "
            f"repeats; micro-batch pass overhead {options.micro_batch_overhead_tokens} "
            f"tokens{' (calibrated)' if getattr(options, 'overhead_calibrated', False) else ''}; "
            f"{describe_threads(options)}")


def write_reports(rows: list[dict], out: Path, header: str, final: bool) -> str:
    """bench.json always; bench.md and bench.png once the run is complete. Returns the Markdown."""
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    checks, notes = target_checks(rows), explain_misses(rows)
    markdown = "\n".join([
        f"# NAT cost benchmark\n\n{header}\n",
        "Ratios are against full GRPO on the same batch. Time: each repeat's time is averaged over the draws; "
        "'time ratio' divides the medians over repeats, [min–max] is the range of the per-repeat ratios (each repeat "
        "paired with full's same repeat), 'best' divides the fastest repeats (the least disturbed by other work on "
        "the machine).\n",
        markdown_table(rows), "",
        f"Paper ({PAPER['model']}, GPU, RPC at ~{PAPER['budget']:.0%} of tokens): time ratio {PAPER['time_ratio']}, "
        f"peak memory ratio {PAPER['peak_memory_ratio']}.", "",
        "## RPC at ρ = 0.5 against the targets (flops, activation ≤ 0.55; time ≤ 0.6 on CPU)", "",
        *[f"- {line}" for line in checks], *[f"- why: {note}" for note in notes], ""])
    if final:
        (out / "bench.md").write_text(markdown)
    return markdown


# ----------------------------------------------------------------------------- mode "update"
def run_update_benchmark(options, log=print) -> list[dict]:
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    out = Path(options.out)
    model = build_model(options.preset, vocab_size=options.vocab_size, dtype=dtype, device=device,
                        gradient_checkpointing=options.gradient_checkpointing, seed=options.seed)
    if options.micro_batch_overhead_tokens == "auto":
        longest = options.prompt_length + max(options.response_lengths)
        options.micro_batch_overhead_tokens = calibrate_pass_overhead(model, device, model.config.vocab_size, longest)
        options.overhead_calibrated = True
        log(f"calibrated: one extra pass costs about {options.micro_batch_overhead_tokens} tokens' worth of compute")
    header = describe_run(options, model, dtype, device)
    log(f"benchmark: {header}")
    rows = []
    for response_length in options.response_lengths:
        batch = make_batch(options.batch_size, options.prompt_length, response_length, model.config.vocab_size,
                           batch_seed(options.seed, response_length), options.shortest_response)
        log(f"  T = {response_length}: {int(batch.response_mask.sum())} response tokens, "
            f"{len(options.budgets)} budgets × (urs, rpc) × {options.draws} draws + full")
        started = time.perf_counter()
        point = measure_response_length(model, batch, options.budgets, draws=options.draws, repeats=options.repeats,
                                        device=device, seed=options.seed,
                                        overhead_tokens=options.micro_batch_overhead_tokens,
                                        cut_distribution=options.cut_distribution,
                                        cut_sampling=options.cut_sampling, log=log)
        for row in point:
            row.update(preset=options.preset, vocab_size=model.config.vocab_size, device=device,
                       dtype=str(dtype).replace("torch.", ""), gradient_checkpointing=options.gradient_checkpointing,
                       micro_batch_overhead_tokens=options.micro_batch_overhead_tokens,
                       micro_batch_overhead_calibrated=getattr(options, "overhead_calibrated", False),
                       cut_distribution=options.cut_distribution, cut_sampling=options.cut_sampling)
        rows += point
        write_reports(rows, out, header, final=False)  # partial results survive an interruption
        log(f"  T = {response_length} took {time.perf_counter() - started:.1f}s")
    markdown = write_reports(rows, out, header, final=True)
    write_plot(rows, out / "bench.png", header)
    log("\n" + markdown)
    return rows


# ----------------------------------------------------------------------------- mode "step"
def run_step_benchmark(options, log=print) -> list[dict]:
    """Whole trainer steps (rollout + update) per method, interleaved, on identical rollouts.

    The learning rate is 0, so the weights — and with a per-step seed, the sampled rollouts — are
    the same for every method; AdamW still runs, so the update costs what it costs in training.
    """
    from transformers.utils import logging as transformers_logging

    from minnat.train import TrainConfig, Trainer

    transformers_logging.disable_progress_bar()  # the per-step checkpoint writes would print bars

    cases = [("full", 1.0)] + [(method, budget) for budget in options.budgets for method in ("urs", "rpc")]
    total_steps = options.steps + 1  # the first step warms up and is not reported
    with tempfile.TemporaryDirectory(prefix="minnat-bench-step-") as scratch:
        trainers = {}
        for method, budget in cases:
            config = TrainConfig(model=options.model, task=options.task, data_path=options.data_path,
                                 method=method, budget=budget, steps=total_steps, batch_size=options.batch_size,
                                 group_size=options.group_size, max_new_tokens=options.max_new_tokens,
                                 learning_rate=0.0, warmup_steps=0, eval_every=0, num_eval=options.num_eval,
                                 eval_batch_size=options.num_eval, log_samples=0, save_every=10 ** 9,
                                 measure_activation_memory=False, out=str(Path(scratch) / f"{method}-{budget:g}"),
                                 seed=options.seed, device=options.device, dtype=options.dtype,
                                 gradient_checkpointing=options.gradient_checkpointing)
            trainers[(method, budget)] = Trainer(config, progress=False)
        records = {case: [] for case in cases}
        for step in range(total_steps):
            order = list(cases)
            random.Random(options.seed * 31 + step).shuffle(order)
            for case in order:
                torch.manual_seed(options.seed * 1_000_003 + step)  # the same rollout for every method
                trainers[case].train(on_step=records[case].append, should_stop=lambda: True)
            log(f"  step {step + 1}/{total_steps} done" + (" (warm-up, not reported)" if step == 0 else ""))
        # The third part of a step's cost, the same for every method: one held-out greedy evaluation
        # at the trainer's default size, which a default run pays every eval_every steps.
        eval_defaults = TrainConfig()
        evaluator = trainers[cases[0]]
        evaluator.config.num_eval, evaluator.config.eval_batch_size = eval_defaults.num_eval, eval_defaults.eval_batch_size
        started = time.perf_counter()
        evaluator.evaluate()
        eval_seconds_per_step = (time.perf_counter() - started) / max(eval_defaults.eval_every, 1)
        trainers.clear()
    rows = []
    for method, budget in cases:
        measured = records[(method, budget)][1:]
        rollout = statistics.median(r["rollout_seconds"] for r in measured)
        update = statistics.median(r["update_seconds"] for r in measured)
        rows.append({"method": method, "budget": budget, "steps": len(measured),
                     "rollout_seconds": rollout, "update_seconds": update, "step_seconds": rollout + update,
                     "update_share": update / (rollout + update),
                     "response_tokens_generated": statistics.fmean(r["response_tokens_generated"] for r in measured),
                     "response_tokens_used": statistics.fmean(r.get("response_tokens_used", 0) for r in measured),
                     "tokens_to_model": statistics.fmean(r.get("tokens_to_model", 0) for r in measured),
                     "response_tokens_generated_per_step": [r["response_tokens_generated"] for r in measured],
                     "reward_mean_per_step": [r["reward_mean"] for r in measured]})
    # The rollouts are identical for every method, so their times differ only by measurement noise:
    # the step ratio with their common median isolates what NAT changes.
    shared_rollout = statistics.median(r["rollout_seconds"] for case in cases for r in records[case][1:])
    full = rows[0]
    full_steps = records[cases[0]][1:]
    for case, row in zip(cases, rows):
        paired = [mine["update_seconds"] / reference["update_seconds"]
                  for mine, reference in zip(records[case][1:], full_steps)]
        spread = ratio_spread(paired) if case != cases[0] else {"reliable": True, "note": "the reference"}
        row["update_ratio_per_step"], row["update_ratio_reliable"] = paired, spread["reliable"]
        row["update_ratio_note"] = spread["note"]
        row["update_note_short"] = spread["note"] if not spread["reliable"] else \
            f"{statistics.median(paired):.3f} per step, {spread['note']}" if paired else spread["note"]
    for row in rows:
        whole = row["rollout_seconds"] + row["update_seconds"] + eval_seconds_per_step
        row["eval_seconds_per_step"] = eval_seconds_per_step
        row["shares_of_whole_step"] = {"rollout": row["rollout_seconds"] / whole,
                                       "update": row["update_seconds"] / whole, "eval": eval_seconds_per_step / whole}
        row["update_ratio"] = row["update_seconds"] / full["update_seconds"]
        row["step_ratio"] = row["step_seconds"] / full["step_seconds"]
        row["shared_rollout_seconds"] = shared_rollout
        row["step_ratio_shared_rollout"] = (shared_rollout + row["update_seconds"]) / \
            (shared_rollout + full["update_seconds"])
    out = Path(options.out)
    (out / "step.json").write_text(json.dumps(rows, indent=1))
    header = ["method", "ρ", "rollout (s)", "update (s)", "step (s)", "update share of step", "update ratio",
              "step ratio", "step ratio, shared rollout", "resp. tokens used / generated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(f"| {row['method']} | {row['budget']:g} | {row['rollout_seconds']:.2f} | "
                     f"{row['update_seconds']:.2f} | {row['step_seconds']:.2f} | {row['update_share']:.0%} | "
                     f"{row['update_ratio']:.3f}{'' if row['update_ratio_reliable'] else ' unreliable'} | "
                     f"{row['step_ratio']:.3f} | {row['step_ratio_shared_rollout']:.3f} | "
                     f"{row['response_tokens_used']:.0f} / {row['response_tokens_generated']:.0f} |")
    rollouts = [row["rollout_seconds"] for row in rows]
    markdown = (f"# NAT: whole training steps\n\nmodel {options.model}, task {options.task}, batch "
                f"{options.batch_size} (group {options.group_size}), max {options.max_new_tokens} new tokens; median of "
                f"{options.steps} steps after one warm-up step, methods interleaved, identical rollouts "
                "(learning rate 0).\n\n" + "\n".join(lines) + "\n\nNAT only changes the update; the rollout "
                "(generation) is untouched, so the step ratio is bounded below by the rollout's share. The rollouts "
                f"are identical for every method, so their spread ({min(rollouts):.2f}–{max(rollouts):.2f} s) is "
                f"measurement noise; the last ratio uses their common median ({shared_rollout:.2f} s). "
                f"{describe_threads(options)}.\n" +
                "".join(f"\n- {row['method']} ρ={row['budget']:g}: update ratio {row['update_note_short']}"
                        for row in rows[1:]) + "\n" +
                f"\nA whole step of a default run also evaluates: one held-out evaluation ({eval_defaults.num_eval} "
                f"questions, greedy) every {eval_defaults.eval_every} steps, {eval_seconds_per_step:.2f} s per step. "
                "Shares of a whole step (rollout / update / eval): " +
                "; ".join(f"{row['method'] if row['method'] == 'full' else row['method'] + ' ρ=' + format(row['budget'], 'g')}"
                          f" {row['shares_of_whole_step']['rollout']:.0%} / {row['shares_of_whole_step']['update']:.0%} / "
                          f"{row['shares_of_whole_step']['eval']:.0%}" for row in rows) + ".\n")
    (out / "step.md").write_text(markdown)
    log("\n" + markdown)
    return rows


# ----------------------------------------------------------------------------- command line
def comma_list(kind, name):
    def parse(text: str):
        try:
            values = [kind(piece) for piece in text.split(",") if piece.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list of numbers; got {text!r}.")
        if not values:
            raise argparse.ArgumentTypeError(f"{name} must list at least one value.")
        return values
    return parse


def overhead_tokens_arg(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--micro-batch-overhead-tokens takes a whole number of tokens or 'auto'; "
                                         f"got {text!r}.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minnat.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--mode", choices=("update", "step", "memory", "lora", "verl"), default="update",
        help="update: the policy-update step alone (default); step: whole trainer steps, rollout + update; "
             "memory: the update step's peak memory per configuration in fresh processes, minnat vs stock TRL "
             "(minnat.bench_memory); lora: full / URS / RPC with every weight and with LoRA, measured, and the "
             "predicted one-GPU budget of Qwen3-0.6B…8B (minnat.bench_lora); verl: one actor update through "
             "verl's FSDP2 engine on CPU, stock vs RPC (minnat.bench_verl; needs minnat[verl])")
    add("--preset", choices=BENCH_PRESETS, default="tiny",
        help="model architecture with random weights: the embedded tiny Qwen3, a Qwen3 size, or 'small' (4 layers, "
             "hidden 512: the memory configuration) (update and memory modes)")
    add("--shortest-response", type=float, default=0.5,
        help="each row's response length is uniform in [this fraction × T, T] (update and memory modes)")
    add("--engines", type=comma_list(str, "--engines"), default=["minnat", "trl", "trl+nat", "head"],
        help="memory mode: which rows — minnat (full/URS/RPC), trl (stock GRPOTrainer), trl+nat "
             "(minnat.integrations.trl), head (the LM head alone, tiled vs the previous design)")
    add("--vocab-size", type=int, default=None,
        help="override the vocabulary size, e.g. 151936 (Qwen's) to show URS's LM-head saving on the tiny body")
    add("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    add("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    add("--gradient-checkpointing", action="store_true",
        help="recompute each layer in backward (needed to fit the large presets with long responses)")
    add("--batch-size", type=int, default=None,
        help="responses per batch (None: 8 in update mode, the trainer's default in step mode)")
    add("--prompt-length", type=int, default=64, help="P: prompt tokens per row (update mode)")
    add("--response-lengths", type=comma_list(int, "--response-lengths"), default=[256, 512, 1024],
        help="comma-separated T values; each row's response length is uniform in [T/2, T] (update mode)")
    add("--budgets", type=comma_list(float, "--budgets"), default=[0.25, 0.5, 0.75],
        help="comma-separated budgets ρ for URS and RPC (in step mode default: 0.5)")
    add("--draws", type=int, default=3, help="NAT selection draws averaged per point (update mode)")
    add("--repeats", type=int, default=5, help="interleaved timing repeats per draw (update mode)")
    add("--verl-max-token-len", type=int, default=4096,
        help="verl mode: the engine's token budget per micro-batch (dynamic batch sizes, verl's ppo_max_token_len_per_gpu)")
    add("--micro-batch-overhead-tokens", type=overhead_tokens_arg, default=DEFAULT_OVERHEAD_TOKENS,
        help="what one extra forward pass is worth in padded tokens when rows are grouped into micro-batches "
             "(minnat.logprobs.plan_micro_batches; 0 = no padding, one pass per length; 'auto' = measure it on "
             "this model and device first); the default is response_logprobs' default")
    add("--cut-distribution", choices=RPC_CUT_DISTRIBUTIONS, default="uniform-floor", help="RPC cut distribution")
    add("--cut-sampling", choices=CUT_SAMPLINGS, default="stratified",
        help="RPC draws of a point: stratified cut fractions (exact RPC law per row, balanced across draws, "
             "default) or independent select_tokens draws")
    add("--seed", type=int, default=0, help="seed of the batch and of the selection draws")
    add("--threads", type=int, default=1,
        help="CPU threads for torch. 1 (default) keeps time ratios stable on a shared machine: torch's default of "
             "one thread per core collapses when other processes hold cores. 0 = auto: the cores the load "
             "average leaves free")
    add("--out", default=None, help="output folder (default: a new folder runs/bench-<time>)")
    # lora mode
    add("--lora-rank", type=int, default=16, help="lora mode: the adapters' rank r")
    add("--predict-presets", type=comma_list(str, "--predict-presets"), default=list(PREDICT_PRESETS),
        help="lora mode: the Qwen3 sizes whose GPU budget is predicted (their per-token activation bytes are "
             "measured on 1- and 2-layer bodies of their widths)")
    add("--predict-rows", type=int, default=16, help="lora mode: rows per backward pass in the prediction "
                                                      "(the trainer's --update-micro-batch-rows)")
    add("--predict-prompt-length", type=int, default=256, help="lora mode: prompt tokens per row in the prediction")
    add("--predict-response-length", type=int, default=1024,
        help="lora mode: response tokens per row in the prediction (every row full length: the worst case)")
    add("--predict-dtype", default="bfloat16", choices=("bfloat16", "float32"),
        help="lora mode: the dtype the per-token activation bytes are measured in (a GPU run's: bfloat16)")
    add("--skip-measured", action="store_true", help="lora mode: only the prediction (parts 2 and 3)")
    # step mode
    add("--model", default="embedded", help="step mode: the model the trainer loads (default: the embedded one)")
    add("--task", default=None, help="step mode: long-addition (embedded; default: the trainer's), arithmetic or gsm8k")
    add("--data-path", default=None, help="step mode: GSM8K-format JSONL file or folder")
    add("--steps", type=int, default=3, help="step mode: measured trainer steps per method (after one warm-up step)")
    add("--group-size", type=int, default=None, help="step mode: responses per question (None: the trainer's default)")
    add("--max-new-tokens", type=int, default=None, help="step mode: longest response (None: the trainer's default)")
    add("--num-eval", type=int, default=8, help="step mode: questions in the trainer's (unreported) evaluations")
    return parser


def check_options(options) -> None:
    options.budgets = [check_budget(budget) for budget in options.budgets]
    from minnat.train import TrainConfig

    trainer_defaults = TrainConfig()
    if getattr(options, "task", None) is None:
        options.task = trainer_defaults.task
    if options.batch_size is None:
        options.batch_size = 8 if options.mode in ("update", "memory", "lora", "verl") else trainer_defaults.batch_size
    if options.group_size is None:
        options.group_size = trainer_defaults.group_size
    if options.max_new_tokens is None:
        options.max_new_tokens = trainer_defaults.max_new_tokens
    if options.mode == "memory" and options.repeats < 0:
        raise ValueError(f"--repeats must be ≥ 0 in memory mode (0 = memory only, no timing); got {options.repeats}.")
    if options.mode in ("memory", "lora") and len(options.response_lengths) != 1:
        raise ValueError(f"{options.mode} mode measures one response length; give one --response-lengths value, got "
                         f"{options.response_lengths}.")
    if options.mode == "lora":
        unknown = [preset for preset in options.predict_presets if preset not in PREDICT_PRESETS]
        if unknown:
            raise ValueError(f"unknown --predict-presets {unknown}; choose from {', '.join(PREDICT_PRESETS)}.")
        for name in ("lora_rank", "predict_rows", "predict_prompt_length", "predict_response_length"):
            if getattr(options, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(options, name)}.")
    if not 0 < options.shortest_response <= 1:
        raise ValueError(f"--shortest-response must be a fraction in (0, 1]; got {options.shortest_response}.")
    unknown = [engine for engine in options.engines if engine not in ("minnat", "trl", "trl+nat", "head")]
    if unknown:
        raise ValueError(f"unknown --engines {unknown}; choose from minnat, trl, trl+nat, head.")
    for name in ("batch_size", "prompt_length", "draws", "repeats", "steps", "group_size", "max_new_tokens",
                 "num_eval"):
        if name == "repeats" and options.mode in ("memory", "lora"):
            continue
        if getattr(options, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(options, name)}.")
    if any(length < 1 for length in options.response_lengths):
        raise ValueError(f"--response-lengths must be positive; got {options.response_lengths}.")
    if options.micro_batch_overhead_tokens != "auto" and options.micro_batch_overhead_tokens < 0:
        raise ValueError(f"--micro-batch-overhead-tokens must be ≥ 0 or 'auto'; got {options.micro_batch_overhead_tokens}.")
    if options.threads < 0:
        raise ValueError(f"--threads must be ≥ 0; got {options.threads}.")
    if options.vocab_size is not None and options.vocab_size < 2:
        raise ValueError(f"--vocab-size must be at least 2; got {options.vocab_size}.")


def main(argv=None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if options.mode in ("step", "memory", "lora", "verl") and "--budgets" not in given:
        options.budgets = [0.5]
    if options.mode == "verl" and "--response-lengths" not in given:
        options.response_lengths = [256]
    if options.mode in ("memory", "lora"):
        if "--response-lengths" not in given:
            options.response_lengths = [256]
        if "--repeats" not in given:
            options.repeats = 3
    try:
        check_options(options)
        options.threads, options.threads_reason = choose_cpu_threads(options.threads)
        if "--threads" not in given:
            options.threads_reason = ("the benchmark's default: one thread keeps time ratios stable on a shared "
                                      "machine; --threads 0 = the cores the load leaves free")
        torch.set_num_threads(options.threads)
        if options.out is None:
            options.out = str(Path("runs") / f"bench-{options.mode}-{options.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        out = Path(options.out)
        out.mkdir(parents=True, exist_ok=True)
        command = "python -m minnat.bench " + " ".join(given)
        options.command = command.strip()
        print(f"writing to {out}  ({command.strip()}; torch {torch.__version__}, python {platform.python_version()})")
        print(f"CPU threads: {describe_threads(options)}")
        if options.mode == "update":
            run_update_benchmark(options)
        elif options.mode == "memory":
            run_memory_benchmark(options)
        elif options.mode == "lora":
            run_lora_benchmark(options)
        elif options.mode == "verl":
            from minnat.bench_verl import run_verl_benchmark

            run_verl_benchmark(options)
        else:
            run_step_benchmark(options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
