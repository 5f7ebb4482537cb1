"""View 3, Gradient agreement: how far is one NAT gradient from the full one, and how fast does averaging close the gap?

On a real batch of rollouts (prompts × G responses sampled from the model) compute the
full-token GRPO gradient g_full and N NAT gradients g_1..g_N, one per independent selection
(`minnat.diagnostics.gradient_agreement`). Each g_k is unbiased, E[g_k] = g_full, with per-draw
variance V = E‖g_k − g_full‖² / ‖g_full‖² (relative to ‖g_full‖²). For the running average
ḡ_K = (1/K) Σ_{k≤K} g_k of independent draws

    E‖ḡ_K − g_full‖² / ‖g_full‖² = V / K,

so the root-mean-square relative error of a K-draw average is √(V/K): the 1/√K law. That is a
statement about the RMS over many sequences of draws, so the view measures it as such: the N
draws are cut into disjoint blocks of k (k = 2, 4, 8, …), and the RMS error of the block
averages is held against √(V/k) (`DrawStatistics`). The running average of the one sequence
drawn is plotted too; it wanders around √(V/K), the more so when the noise lies along g_full
(then the error is nearly a single number, and one average of K numbers can land far from its
RMS). The view also shows 1 − cos(ḡ_K, g_full) and V per method and budget.
V is what training on fewer tokens costs: one draw per step adds it to the rollouts' own noise.

The biased contrasts (rpc-unweighted, top-entropy; `minnat.nat.BIASED_METHODS`) can be run too.
Their draws centre on E[g_k] ≠ g_full; with the bias b = ‖E[g_k] − g_full‖/‖g_full‖

    E‖ḡ_K − g_full‖² / ‖g_full‖² = b² + (V − b²)/K,

so their error flattens at b instead of falling like 1/√K (`GradientAgreement.predicted_relative_error`).
Every method's b² is estimated from its N draws with a jackknife standard error (exactly, for
the deterministic top-entropy), and the view says, from those numbers, which biases are
significantly above 0 (z = b² / s.e. ≥ SIGNIFICANT_Z) and which are not.

Where the bias comes from: the lower panel plots each method's expected weight per response
position for the sampled batch, relative to full GRPO's (`minnat.diagnostics.expected_token_weights`,
exact from π_t and the normaliser, averaged by relative position t/|o_i|). URS and RPC sit at 1
everywhere — E[keep_t/π_t] = 1 is the whole point. rpc-unweighted falls along the response with π_t
(its early tokens weigh more than 1, its late ones far less); top-entropy is 1 on the high-entropy
tokens it keeps and 0 elsewhere.
"""
from __future__ import annotations

import math
import random
import threading

import gradio as gr
import torch
from matplotlib.figure import Figure

from minnat.diagnostics import expected_token_weights, expected_weight_profile, gradient_agreement, policy_gradient
from minnat.entropy import response_entropies
from minnat.explorer.helpers import (chosen_methods, counted, method_choices, method_label, note_box, parse_budgets,
                                     seeded, show_error, whole_number)
from minnat.explorer.library import LoadedModel, Shared
from minnat.explorer.style import legend_below, method_color
from minnat.explorer.tokens import MAX_GROUP_SIZE
from minnat.grpo import group_advantages
from minnat.nat import ALL_METHODS, RPC_CUT_DISTRIBUTIONS
from minnat.rollout import generate

MAX_AGREEMENT_DRAWS = 256
SIGNIFICANT_Z = 3.0      # a bias is called significant when b² is at least this many standard errors above 0
ROUNDING_BIAS = 1e-6     # an exact relative bias below this is float rounding, not a bias
DEFAULT_METHODS = ("urs", "rpc", "rpc-unweighted")  # top-entropy is one tick away
BIASED_HATCH = "///"


def sample_training_batch(loaded: LoadedModel, task, num_prompts: int, group_size: int, seed: int):
    """num_prompts training questions × G responses at temperature 1 (a `RolloutBatch`)."""
    examples = random.Random(seed).sample(task.train_examples, num_prompts)
    with loaded.lock, seeded(seed):
        return generate(loaded.model, loaded.tokenizer, task, examples, group_size=group_size,
                        max_new_tokens=loaded.max_new_tokens, temperature=1.0)


class DrawStatistics:
    """What one sequence of N draws says about the 1/√K law, gathered draw by draw (`on_draw`).

    block_rms[k]     √(mean over the ⌊N/k⌋ disjoint blocks of k draws of
                     ‖ḡ_block − g_full‖²/‖g_full‖²):
                     a direct measurement of the RMS error of a k-draw average, to hold against
                     √(V/k). Only k = 2, 4, 8, … with at least MIN_BLOCKS blocks (fewer would be noise).
    along_share      Σ_k (d_k·ĝ)² / Σ_k ‖d_k‖² with d_k = g_k − g_full, ĝ = g_full/‖g_full‖: how much
                     of V lies along g_full (a step-size error) rather than across it (a turned
                     direction). Near 1, the cosine stays near 1 however large the error is.

    Memory: one [D] float64 vector per block size (log₂ N of them at most)."""

    MIN_BLOCKS = 8

    def __init__(self, full_gradient, num_draws: int):
        self.full = full_gradient.to(torch.float64)
        self.full_norm_sq = float(self.full @ self.full)
        self.block_sizes = [2 ** p for p in range(1, 12) if num_draws // 2 ** p >= self.MIN_BLOCKS]
        self.block_sums = {k: torch.zeros_like(self.full) for k in self.block_sizes}
        self.block_errors: dict[int, list[float]] = {k: [] for k in self.block_sizes}
        self.along, self.total = 0.0, 0.0

    def on_draw(self, draw: int, gradient) -> None:
        gradient = gradient.to(torch.float64)
        deviation = gradient - self.full
        self.along += float(deviation @ self.full) ** 2 / self.full_norm_sq
        self.total += float(deviation @ deviation)
        for k in self.block_sizes:
            self.block_sums[k] += gradient
            if draw % k == 0:
                error = self.block_sums[k] / k - self.full
                self.block_errors[k].append(float(error @ error) / self.full_norm_sq)
                self.block_sums[k].zero_()

    @property
    def block_rms(self) -> dict[int, float]:
        return {k: math.sqrt(sum(errors) / len(errors)) for k, errors in self.block_errors.items()
                if len(errors) >= self.MIN_BLOCKS}

    @property
    def along_share(self) -> float:
        return self.along / self.total if self.total > 0 else 0.0


POSITION_BINS = 20


def agreement_figure(results, statistics, profiles=None) -> Figure:
    """Relative error and 1 − cos of the K-draw average against K, each method's per-draw V and its bias²;
    below, each method's expected weight by position in the response (`profiles`: label -> (x, y))."""
    figure = Figure(figsize=(16, 8.2), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.0, 0.72])
    axes = top.subplots(1, 4, width_ratios=[1.2, 1.2, 0.75, 0.75], sharey=False)
    axes[3].sharey(axes[2])
    budgets = sorted({r.budget for r in results})
    styles = ["-", "--", "-.", ":"]
    for result, stats in zip(results, statistics):
        style = styles[budgets.index(result.budget) % len(styles)]
        color = method_color(result.method)
        axes[0].plot(result.draws, result.relative_error, style, color=color, lw=1.6, label=result.label)
        # What independent draws predict for the RMS error: √(b² + (V − b²)/K), √(V/K) when unbiased.
        axes[0].plot(result.draws, [result.predicted_relative_error(k) for k in result.draws], color=color, lw=1,
                     alpha=0.6, ls=(0, (1, 2)))
        if result.biased and result.bias > 0:  # the floor a contrast's error flattens at
            axes[0].axhline(result.bias, color=color, lw=0.9, alpha=0.7, ls=(0, (6, 3)))
        blocks = stats.block_rms
        if blocks:
            axes[0].plot(list(blocks), list(blocks.values()), "o", color=color, ms=6, mfc="white", mew=1.6)
        axes[1].plot(result.draws, [max(1 - c, 1e-16) for c in result.cosine], style, color=color, lw=1.6,
                     label=result.label)
    if results:
        axes[0].plot([], [], color="#374151", lw=1, ls=(0, (1, 2)),
                     label="√(b² + (V − b²)/K): predicted RMS error (NAT: √(V/K))")
        axes[0].plot([], [], "o", color="#374151", ms=6, mfc="white", mew=1.6,
                     label="measured RMS error of disjoint K-draw averages")
        if any(r.biased for r in results):
            axes[0].plot([], [], color="#374151", lw=0.9, ls=(0, (6, 3)), label="bias b of a contrast (its floor)")
    axes[0].set_yscale("log")
    axes[0].set_title("relative error ‖ḡ$_K$ − g$_{full}$‖ / ‖g$_{full}$‖")
    axes[1].set_yscale("log")
    axes[1].set_title("1 − cos(ḡ$_K$, g$_{full}$)   (0: same direction)")
    for axis in axes[:2]:
        axis.set_xscale("log")
        axis.set_xlabel("K = number of draws averaged")
        axis.grid(alpha=0.25, which="both")
    if results:
        variance_bars(axes[2], results)
        bias_bars(axes[3], results)
    axes[2].set_title("per-draw V = E‖g$_k$ − g$_{full}$‖² / ‖g$_{full}$‖²", fontsize=10)
    axes[2].grid(alpha=0.25, axis="x")
    axes[3].set_title("squared bias b² (± 2 s.e.)\nhatched: biased contrasts", fontsize=10)
    axes[3].grid(alpha=0.25, axis="x")
    legend_below(top, axes[:2], columns=min(len(results) + 3, 4))
    position_axis = bottom.subplots()
    position_weight_panel(position_axis, results, profiles or {})
    legend_below(bottom, [position_axis], columns=min(len(results) + 1, 4))
    return figure


def position_weight_panel(axis, results, profiles) -> None:
    """E[weight] / full GRPO's weight against relative position t/|o_i|, one line per method and budget."""
    budgets = sorted({r.budget for r in results})
    styles = ["-", "--", "-.", ":"]
    axis.axhline(1.0, color=method_color("full"), lw=2.2, alpha=0.5, label="full GRPO (1 at every position)")
    for result in results:
        if result.label not in profiles:
            continue
        x, y = profiles[result.label]
        axis.plot(x, y, styles[budgets.index(result.budget) % len(styles)], marker="o", ms=3,
                  color=method_color(result.method), lw=1.6, label=result.label)
    axis.set_yscale("symlog", linthresh=0.1)
    axis.set_xlim(0, 1)
    axis.set_xlabel("position in the response, t / |o$_i$| (the batch's tokens averaged in "
                    f"{POSITION_BINS} bins)")
    axis.set_ylabel("expected weight / full's")
    axis.set_title("expected weight of a token by its position (exact, from π$_t$ and the normaliser): "
                   "NAT restores full's 1 everywhere", fontsize=10)
    axis.grid(alpha=0.25, which="both")


def position_profiles(model, batch, results) -> dict:
    """label -> (bin centres, expected weight per bin) for each finished result on this batch."""
    entropies = None
    profiles = {}
    for result in results:
        if result.method == "top-entropy" and entropies is None:
            entropies = response_entropies(model, batch.input_ids, batch.attention_mask, batch.response_mask)
        weights = expected_token_weights(batch.response_mask, result.method, result.budget,
                                         cut_distribution=result.cut_distribution or "uniform-floor",
                                         entropies=entropies)
        profiles[result.label] = expected_weight_profile(weights, batch.response_mask, POSITION_BINS)
    return profiles


def variance_bars(axis, results) -> None:
    """V per method as horizontal bars (the labels read once, on the left), with the kept fraction."""
    values = [r.per_draw_variance for r in results]
    bars = axis.barh(range(len(values)), values, color=[method_color(r.method) for r in results], alpha=0.85,
                     hatch=[BIASED_HATCH if r.biased else None for r in results], edgecolor="white")
    for bar, result in zip(bars, results):
        axis.annotate(f" kept {result.kept_fraction:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                      ha="left", va="center", fontsize=7, color="#374151")
    axis.set_yticks(range(len(values)), [r.label for r in results], fontsize=8)
    axis.invert_yaxis()  # the first method on top, as in the table
    if max(values) > 30 * max(min(values), 1e-300):  # orders of magnitude apart: bars on a log axis
        axis.set_xscale("log")
        axis.set_xlim(max(min(values), 1e-300) / 3, max(values) * 30)  # room for the labels on the right
    else:
        axis.margins(x=0.35)


def bias_bars(axis, results) -> None:
    """b² per method with ± 2 standard errors (none for the exact, deterministic ones), and its z."""
    values = [r.bias_squared for r in results]
    errors = [2 * r.bias_squared_standard_error if math.isfinite(r.bias_squared_standard_error) else 0.0
              for r in results]
    axis.barh(range(len(values)), values, xerr=errors, capsize=3, color=[method_color(r.method) for r in results],
              alpha=0.85, hatch=[BIASED_HATCH if r.biased else None for r in results], edgecolor="white",
              error_kw=dict(lw=1, ecolor="#111827"))
    axis.axvline(0, color="#111827", lw=0.8)
    for index, result in enumerate(results):
        axis.annotate(" " + bias_z_text(result), (max(values[index], 0) + errors[index], index), ha="left",
                      va="center", fontsize=7, color="#374151")
    axis.tick_params(axis="y", labelleft=False)
    axis.margins(x=0.3)


def bias_exact(result) -> bool:
    """True when the bias has no sampling error: a deterministic method (every draw is the same), or
    draws that all equal g_full up to rounding (NAT at ρ = 1)."""
    return result.bias_squared_standard_error == 0.0 or result.per_draw_variance < ROUNDING_BIAS ** 2


def bias_z_text(result) -> str:
    if bias_exact(result):
        return "exact"
    return f"z = {result.bias_z:.1f}" if math.isfinite(result.bias_z) else "z: needs N ≥ 3"


def bias_cell(result) -> str:
    """The table's bias: b, with b² ± its standard error and z (or "exact")."""
    if bias_exact(result):
        return f"{result.bias:.2g} (exact: every draw is the same)"
    if not math.isfinite(result.bias_squared_standard_error):
        return "— (needs N ≥ 3)"
    measured = f"b² = {result.bias_squared:.2g} ± {result.bias_squared_standard_error:.2g}, z = {result.bias_z:.1f}"
    if result.bias_z < SIGNIFICANT_Z:  # b = √max(b², 0) of a b² within noise of 0 is not a measured bias
        return f"not significant ({measured})"
    return f"{result.bias:.3f} ({measured})"


def bias_sentence(results) -> str:
    """Which biases are significantly above 0 and which are not, in words chosen from the measured numbers."""
    parts = []
    measured = [r for r in results if not bias_exact(r) and math.isfinite(r.bias_squared_standard_error)]
    nat = [r for r in measured if not r.biased]
    quiet = [r for r in nat if r.bias_z < SIGNIFICANT_Z]
    if quiet:
        zs = [r.bias_z for r in quiet]
        span = f"z = {zs[0]:.1f}" if len(zs) == 1 else f"z from {min(zs):.1f} to {max(zs):.1f}"
        parts.append(f"NAT's bias is not significantly different from 0 ({', '.join(r.label for r in quiet)}: "
                     f"{span}), as E[keep<sub>t</sub>/π<sub>t</sub>] = 1 requires.")
    for r in nat:
        if r.bias_z >= SIGNIFICANT_Z:
            parts.append(f"{r.label}'s estimate sits z = {r.bias_z:.1f} standard errors above 0 at N = "
                         f"{r.num_draws}. NAT is unbiased by construction (E[keep<sub>t</sub>/π<sub>t</sub>] = 1), "
                         "so this is chance or too few draws for the jackknife error: raise N to check.")
    for r in measured:
        if not r.biased:
            continue
        if r.bias_z >= SIGNIFICANT_Z:
            parts.append(f"{r.label}: the bias is significantly non-zero, b = {r.bias:.3f} ± "
                         f"{r.bias_standard_error:.3f} (z = {r.bias_z:.1f}); the average of all N = {r.num_draws} "
                         f"draws is still {r.relative_error[-1]:.3f} from g<sub>full</sub>, as averaging does not "
                         "remove a bias.")
        else:
            parts.append(f"{r.label}: the bias is not significantly different from 0 at N = {r.num_draws} "
                         f"(z = {r.bias_z:.1f}), although the method is biased by construction: raise N to "
                         "resolve it.")
    for r in results:
        if not bias_exact(r) or not r.biased:
            continue
        if r.bias < ROUNDING_BIAS:
            parts.append(f"{r.label}: deterministic given θ, so every draw is the same and the bias is "
                         f"measured exactly: {r.bias:.1g}, zero up to float rounding.")
        else:
            parts.append(f"{r.label}: deterministic given θ, so every draw is the same and its error is its "
                         f"bias at every K, measured exactly (no sampling error): b = {r.bias:.2g}, non-zero — "
                         "the size of the gradient of the tokens it drops (π<sub>t</sub> = 0), "
                         f"{100 * r.bias:.2g}% of ‖g<sub>full</sub>‖ on this batch.")
    if not parts:
        return ""
    return (f"**Bias** (b² is significant at z = b²/s.e. ≥ {SIGNIFICANT_Z:g}). " + " ".join(parts))


def law_sentence(results, statistics) -> str:
    """Whether the measured RMS errors of k-draw averages sit near √(V/k), in words that fit the numbers."""
    ratios = [rms / result.predicted_relative_error(k) for result, stats in zip(results, statistics)
              for k, rms in stats.block_rms.items()]
    if not ratios:
        return ("With fewer than 16 draws there are not enough disjoint groups to measure the RMS error of an "
                "average; raise N to see the 1/√K law measured (the circles).")
    low, high = min(ratios), max(ratios)
    verdict = ("they sit close to the dotted lines" if 0.67 <= low and high <= 1.5 else
               "they scatter around the dotted lines (an RMS over a few groups is itself noisy)")
    return (f"The circles measure that RMS directly: the N draws are split into disjoint groups of k, each group "
            f"averaged, and the RMS of their errors taken. Measured ÷ predicted lies between {low:.2f} and "
            f"{high:.2f}: {verdict}.")


def agreement_summary(results, statistics, batch_note: str) -> str:
    rows = [batch_note, "", "| method | kept fraction | per-draw V | share of V along g<sub>full</sub> | "
            "RMS error of disjoint k-draw averages: measured vs predicted | error of the average of all N draws: "
            "this sequence vs predicted | 1 − cos at N | bias b = ‖E[g<sub>k</sub>] − g<sub>full</sub>‖ / "
            "‖g<sub>full</sub>‖ |", "|---|---|---|---|---|---|---|---|"]
    for r, stats in zip(results, statistics):
        blocks = stats.block_rms
        if blocks:
            k = max(blocks)
            block_text = (f"k = {k} ({len(stats.block_errors[k])} groups): {blocks[k]:.3f} vs "
                          f"{r.predicted_relative_error(k):.3f}")
        else:
            block_text = "— (needs N ≥ 16)"
        rows.append(f"| **{r.label}** | {r.kept_fraction:.2f} | {r.per_draw_variance:.3g} | "
                    f"{stats.along_share:.1%} | {block_text} | N = {r.num_draws}: {r.relative_error[-1]:.3f} vs "
                    f"{r.predicted_relative_error(r.num_draws):.3f} | {max(1 - r.cosine[-1], 0.0):.2e} | "
                    f"{bias_cell(r)} |")
    along = min((stats.along_share for stats in statistics), default=0.0)
    contrasts = any(r.biased for r in results)
    rows.append(
        "\nEach NAT draw is an unbiased but noisy estimate of the full gradient. For independent draws the "
        "*root-mean-square* error of a K-draw average is √(V/K): the dotted lines of slope −½. "
        + ("A (biased) contrast's draws centre on E[g<sub>k</sub>] ≠ g<sub>full</sub>: the RMS error is "
           "√(b² + (V − b²)/K), whose dotted line flattens at the bias b (dashed) instead of falling like 1/√K. "
           if contrasts else "")
        + law_sentence(results, statistics) +
        " The solid curve is one sequence of running averages, a single realisation that wanders around its RMS"
        + (f": here at least {along:.0%} of V lies along g<sub>full</sub>, so the error is nearly one number (a "
           "random step size, not a turned direction; hence 1 − cos stays tiny), and one average of K such "
           "numbers can land far below or above √(V/K)." if along >= 0.5 else ".")
        + " V is the price of training on fewer tokens; in training, one draw per step adds V to the "
        "rollouts' own sampling noise.")
    sentence = bias_sentence(results)
    if sentence:
        rows.append("\n" + sentence)
    return "\n".join(rows)


def batch_description(batch, prompts: int, size: int) -> tuple[str, int]:
    """(one sentence about the batch, how many groups mix right and wrong answers)."""
    groups = batch.rewards.view(-1, size)
    mixed = int((groups.max(dim=1).values > groups.min(dim=1).values).sum())
    if mixed == prompts:
        groups_text = ("its group mixes" if prompts == 1 else f"all {prompts} groups mix") + " right and wrong answers"
    else:
        uniform = prompts - mixed
        groups_text = (f"{mixed} of {counted(prompts, 'group')} {'mixes' if mixed == 1 else 'mix'} right and wrong "
                       f"answers; in the other {counted(uniform, 'group')} every response gets the same reward, "
                       f"so Â = 0 there and {'it adds' if uniform == 1 else 'they add'} nothing to the gradient")
    note = (f"Batch: {prompts} prompts × {size} responses, {int(batch.response_mask.sum()):,} response tokens, "
            f"mean reward {float(batch.rewards.mean()):.2f}; {groups_text}.")
    return note, mixed


def finite(value: float) -> float | None:
    """JSON has no infinity: None stands for "no finite value" (an exact bias has z = ∞)."""
    return value if math.isfinite(value) else None


def bias_significant(result) -> bool:
    """The verdict the page states: b² at least SIGNIFICANT_Z standard errors above 0, or exact and non-zero."""
    if bias_exact(result):
        return result.bias >= ROUNDING_BIAS
    return math.isfinite(result.bias_z) and result.bias_z >= SIGNIFICANT_Z


def result_numbers(results, statistics, prompts: int, size: int, mixed: int, profiles=None) -> dict:
    return {"batch": {"prompts": prompts, "group_size": size, "mixed_groups": mixed,
                      "full_gradient_norm": results[0].full_gradient_norm},
            "expected_weight_by_position": {label: {"position": x, "weight": [finite(v) for v in y]}
                                            for label, (x, y) in (profiles or {}).items()},
            "results": [{"method": r.method, "budget": r.budget, "label": r.label,
                         "cut_distribution": r.cut_distribution, "draws": r.draws,
                         "relative_error": r.relative_error, "cosine": r.cosine,
                         "one_minus_cosine": [1 - c for c in r.cosine],
                         "per_draw_variance": r.per_draw_variance, "kept_fraction": r.kept_fraction,
                         "variance_share_along_full": stats.along_share,
                         "block_rms_error": {str(k): v for k, v in stats.block_rms.items()},
                         "predicted_rms_error": {str(k): r.predicted_relative_error(k) for k in stats.block_rms},
                         "biased": r.biased, "bias": r.bias, "bias_standard_error": finite(r.bias_standard_error),
                         "bias_squared": r.bias_squared,
                         "bias_squared_standard_error": finite(r.bias_squared_standard_error),
                         "bias_z": finite(r.bias_z), "bias_exact": bias_exact(r),
                         "bias_significant": bias_significant(r)}
                        for r, stats in zip(results, statistics)]}


def run_agreement(shared: Shared, model, prompts, size, shown, budget_text, draws, distribution, seed):
    """Compute button (a generator): yields (plot, table, numbers, status, stop event) as curves finish."""
    stop = threading.Event()
    keep = (gr.update(), gr.update(), gr.update())
    try:
        prompts = whole_number(prompts, "the number of prompts", 1, 64)
        size = whole_number(size, "the number of responses per prompt G", 2, MAX_GROUP_SIZE)
        draws = whole_number(draws, "the number of draws N", 1, MAX_AGREEMENT_DRAWS)
        seed = whole_number(seed, "the seed", 0, 2**31 - 1)
        budgets = parse_budgets(budget_text)
        shown = chosen_methods(shown, include_full=False, methods=ALL_METHODS,
                               what="choose at least one NAT method (URS or RPC) or a contrast.")
        loaded = shared.session_model(model)
    except ValueError as error:
        yield *keep, show_error(error), stop
        return
    yield *keep, note_box(f"Sampling {prompts} × {size} responses…"), stop
    batch = sample_training_batch(loaded, shared.task, prompts, size, seed)
    advantages = group_advantages(batch.rewards, size)
    note, mixed = batch_description(batch, prompts, size)
    tensors = (batch.input_ids, batch.attention_mask, batch.response_mask)
    with loaded.lock:
        full_gradient = policy_gradient(loaded.model, *tensors, advantages)
    if not float(full_gradient.norm()) > 0:
        yield *keep, show_error(
            "every group in this batch has equal rewards, so every advantage Â is 0 and the GRPO "
            "gradient is zero: nothing to compare. Try another seed or more prompts."), stop
        return
    results, statistics, runs = [], [], [(m, b) for m in shown for b in budgets]
    def computing(index: int) -> str:
        method, rho = runs[index]
        return note_box(f"Computing {method_label(method, rho)} ({index + 1} of {len(runs)}): "
                        f"{draws} selection gradients…")

    yield *keep, computing(0), stop
    for index, (method, rho) in enumerate(runs):
        if stop.is_set():
            break
        statistics.append(DrawStatistics(full_gradient, draws))
        with loaded.lock:
            results.append(gradient_agreement(
                loaded.model, *tensors, advantages, method, rho, draws, seed=seed, cut_distribution=distribution,
                full_gradient=full_gradient, on_draw=statistics[-1].on_draw, should_stop=stop.is_set))
        with loaded.lock:
            profiles = position_profiles(loaded.model, batch, results)
        # The status keeps saying "Computing" until the last curve is in (a script can wait for that).
        still_running = index + 1 < len(runs) and not stop.is_set()
        yield (agreement_figure(results, statistics, profiles), agreement_summary(results, statistics, note),
               result_numbers(results, statistics, prompts, size, mixed, profiles),
               computing(index + 1) if still_running else "", stop)
    if stop.is_set():
        yield *keep, note_box(f"Stopped: showing the {len(results)} finished or partial curve(s)."), stop


def build_agreement_tab(shared: Shared) -> None:
    """The Gradient-agreement tab's controls and events (call inside `with gr.Tab(...)`)."""
    gr.Markdown("Sample a real batch, compute the full-token GRPO gradient g<sub>full</sub>, then N NAT "
                "gradients g<sub>k</sub> (one per random selection). NAT is unbiased, so the root-mean-square "
                "error of an average of K draws falls like 1/√K; the per-draw variance V is its price. The "
                "*(biased)* contrasts weigh kept tokens 1 instead of 1/π<sub>t</sub>: their error flattens at "
                "their bias b.")
    stop_state = gr.State(None)
    choices = method_choices(include_full=False, include_biased=True)
    with gr.Row():
        prompts = gr.Slider(1, 16, value=4, step=1, label="prompts", info="questions in the batch")
        group = gr.Slider(2, MAX_GROUP_SIZE, value=8, step=1, label="responses per prompt G",
                          info="batch = prompts × G responses")
        methods = gr.CheckboxGroup(choices, value=list(DEFAULT_METHODS), label="methods",
                                   info="full is the reference; the (biased) contrasts show what 1/π_t is for")
        budgets = gr.Textbox("0.25, 0.5", label="budgets ρ", info="comma-separated, each in (0, 1]")
    with gr.Row():
        draws = gr.Number(32, precision=0, label="draws N (largest K)",
                          info=f"gradients per method and budget, at most {MAX_AGREEMENT_DRAWS}")
        cut = gr.Radio(list(RPC_CUT_DISTRIBUTIONS), value="uniform-floor", label="RPC cut distribution",
                       info="as in the Tokens view")
        seed = gr.Number(0, precision=0, label="seed", info="fixes the batch and the draws")
    with gr.Row():
        button = gr.Button("Compute", variant="primary")
        stop_button = gr.Button("Stop", variant="stop")
    status = gr.Markdown(elem_id="nat-agreement-status")
    plot = gr.Plot(label="agreement with the full gradient", format="png", show_label=False)
    table = gr.Markdown(elem_id="nat-agreement-table")
    with gr.Accordion("the curves as numbers", open=False):
        numbers = gr.JSON()

    def compute_clicked(model, num_prompts, size, shown, budget_text, num_draws, distribution, seed_value):
        yield from run_agreement(shared, model, num_prompts, size, shown, budget_text, num_draws, distribution,
                                 seed_value)

    def stop_clicked(stop):
        if stop is not None:
            stop.set()
        return note_box("Stopping after the current draw…")

    button.click(compute_clicked, [shared.model_state, prompts, group, methods, budgets, draws, cut, seed],
                 [plot, table, numbers, status, stop_state], api_name="gradient_agreement")
    stop_button.click(stop_clicked, [stop_state], [status], api_name="stop_gradient_agreement")
