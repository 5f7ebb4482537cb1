"""View 3, Gradient agreement: how far is one NAT gradient from the full one, and how fast does averaging close the gap?

On a real batch of rollouts (prompts × G responses sampled from the model) compute the
full-token GRPO gradient g_full and N NAT gradients g_1..g_N, one per independent selection
(`minnat.diagnostics.gradient_agreement`). Each g_k is unbiased, E[g_k] = g_full, with per-draw
variance V = E‖g_k − g_full‖² / ‖g_full‖² (relative to ‖g_full‖²). For the running average
ḡ_K = (1/K) Σ_{k≤K} g_k of independent draws

    E‖ḡ_K − g_full‖² / ‖g_full‖² = V / K,

so the root-mean-square relative error of a K-draw average is √(V/K): the 1/√K law. The
view plots the relative error and the cosine of ḡ_K against K, and V per method and budget.
V is what training on fewer tokens costs: one draw per step adds it to the rollouts' own noise.
"""
from __future__ import annotations

import math
import random
import threading

import gradio as gr
from matplotlib.figure import Figure

from minnat.diagnostics import gradient_agreement, policy_gradient
from minnat.explorer.helpers import (chosen_methods, method_choices, method_label, note_box, parse_budgets, seeded,
                                     show_error, whole_number)
from minnat.explorer.library import LoadedModel, Shared
from minnat.explorer.style import method_color
from minnat.explorer.tokens import MAX_GROUP_SIZE
from minnat.grpo import group_advantages
from minnat.nat import RPC_CUT_DISTRIBUTIONS
from minnat.rollout import generate

MAX_AGREEMENT_DRAWS = 256


def sample_training_batch(loaded: LoadedModel, task, num_prompts: int, group_size: int, seed: int):
    """num_prompts training questions × G responses at temperature 1 (a `RolloutBatch`)."""
    examples = random.Random(seed).sample(task.train_examples, num_prompts)
    with loaded.lock, seeded(seed):
        return generate(loaded.model, loaded.tokenizer, task, examples, group_size=group_size,
                        max_new_tokens=loaded.max_new_tokens, temperature=1.0)


def agreement_figure(results, num_draws: int) -> Figure:
    """Relative error and cosine of the K-draw average against K, and each method's per-draw variance."""
    figure = Figure(figsize=(13, 4.1), layout="constrained")
    axes = figure.subplots(1, 3)
    nat_results = [r for r in results if r.method != "full"]
    budgets = sorted({r.budget for r in nat_results})
    styles = ["-", "--", "-.", ":"]
    for result in nat_results:
        style = styles[budgets.index(result.budget) % len(styles)]
        color = method_color(result.method)
        axes[0].plot(result.draws, result.relative_error, style, color=color, lw=2, label=result.label)
        # What independent unbiased draws predict: √(V/K), V estimated from these same draws.
        axes[0].plot(result.draws, [result.predicted_relative_error(k) for k in result.draws], color=color, lw=1,
                     alpha=0.55, ls=(0, (1, 2)))
        axes[1].plot(result.draws, result.cosine, style, color=color, lw=2, label=result.label)
    if nat_results:
        axes[0].plot([], [], color="#374151", lw=1, ls=(0, (1, 2)), label="√(V/K): the 1/√K law")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_title("relative error ‖ḡ$_K$ − g$_{full}$‖ / ‖g$_{full}$‖")
    axes[1].set_xscale("log")
    axes[1].set_title("cosine(ḡ$_K$, g$_{full}$)")
    lowest = min([min(r.cosine) for r in nat_results] + [0.99])
    axes[1].set_ylim(lowest - 0.1 * (1 - lowest), 1 + 0.05 * (1 - lowest))
    for axis in axes[:2]:
        axis.set_xlabel("K = number of NAT draws averaged")
        axis.grid(alpha=0.25, which="both")
    axes[0].legend(frameon=False, fontsize=9)
    if nat_results:
        variance_bars(axes[2], nat_results)
    axes[2].set_title("per-draw variance E‖g$_k$ − g$_{full}$‖² / ‖g$_{full}$‖²")
    axes[2].grid(alpha=0.25, axis="y")
    return figure


def variance_bars(axis, nat_results) -> None:
    labels = [r.label for r in nat_results]
    values = [r.per_draw_variance for r in nat_results]
    bars = axis.bar(range(len(values)), values, color=[method_color(r.method) for r in nat_results], alpha=0.85)
    for bar, result in zip(bars, nat_results):
        axis.annotate(f"{result.kept_fraction:.0%} tokens", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8, color="#374151")
    axis.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=9)
    if max(values) > 30 * max(min(values), 1e-300):  # orders of magnitude apart: bars on a log axis
        axis.set_yscale("log")


def agreement_summary(results, batch_note: str) -> str:
    rows = [batch_note, "", "| method | draws K | tokens per draw | per-draw variance V | error of one draw (√V, "
            "RMS) | error of the K-draw average | predicted √(V/K) | cosine at K |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| **{r.label}** | {r.num_draws} | {r.kept_fraction:.0%} | {r.per_draw_variance:.3g} | "
                    f"{math.sqrt(r.per_draw_variance):.3f} | {r.relative_error[-1]:.3f} | "
                    f"{r.predicted_relative_error(r.num_draws):.3f} | {r.cosine[-1]:.4f} |")
    rows.append("\nEach NAT draw is an unbiased but noisy estimate of the full gradient; single draws vary a lot "
                "(a lucky one can land close). Averaging K independent draws shrinks the error like √(V/K): the "
                "dotted lines of slope −½ on the log-log plot, which the measured curves follow. The "
                "per-draw variance V is the price of training on fewer tokens; in training one draw per step "
                "adds V to the rollouts' own sampling noise.")
    return "\n".join(rows)


def batch_description(batch, prompts: int, size: int) -> tuple[str, int]:
    """(one sentence about the batch, how many groups mix right and wrong answers)."""
    groups = batch.rewards.view(-1, size)
    mixed = int((groups.max(dim=1).values > groups.min(dim=1).values).sum())
    note = (f"Batch: {prompts} prompts × {size} responses, {int(batch.response_mask.sum()):,} "
            f"response tokens, mean reward {float(batch.rewards.mean()):.2f}; {mixed} of "
            f"{prompts} groups mix right and wrong answers (the others have Â = 0).")
    return note, mixed


def result_numbers(results, prompts: int, size: int, mixed: int) -> dict:
    return {"batch": {"prompts": prompts, "group_size": size, "mixed_groups": mixed,
                      "full_gradient_norm": results[0].full_gradient_norm},
            "results": [{"method": r.method, "budget": r.budget, "label": r.label,
                         "cut_distribution": r.cut_distribution, "draws": r.draws,
                         "relative_error": r.relative_error, "cosine": r.cosine,
                         "per_draw_variance": r.per_draw_variance, "kept_fraction": r.kept_fraction}
                        for r in results]}


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
        shown = chosen_methods(shown, include_full=False, what="choose at least one NAT method (URS or RPC).")
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
    results, runs = [], [(m, b) for m in shown for b in budgets]
    for index, (method, rho) in enumerate(runs):
        if stop.is_set():
            break
        yield *keep, note_box(f"Computing {method_label(method, rho)} ({index + 1} of {len(runs)}): "
                              f"{draws} NAT gradients…"), stop
        with loaded.lock:
            results.append(gradient_agreement(
                loaded.model, *tensors, advantages, method, rho, draws, seed=seed, cut_distribution=distribution,
                full_gradient=full_gradient, should_stop=stop.is_set))
        yield (agreement_figure(results, max(r.num_draws for r in results)), agreement_summary(results, note),
               result_numbers(results, prompts, size, mixed), "", stop)
    if stop.is_set():
        yield *keep, note_box(f"Stopped: showing the {len(results)} finished or partial curve(s)."), stop


def build_agreement_tab(shared: Shared) -> None:
    """The Gradient-agreement tab's controls and events (call inside `with gr.Tab(...)`)."""
    gr.Markdown("Sample a real batch, compute the full-token GRPO gradient g<sub>full</sub>, then N NAT "
                "gradients g<sub>k</sub> (one per random selection). Their running average approaches "
                "g<sub>full</sub> like 1/√K — NAT is unbiased; the per-draw variance is its price.")
    stop_state = gr.State(None)
    nat_methods = method_choices(include_full=False)
    with gr.Row():
        prompts = gr.Slider(1, 16, value=4, step=1, label="prompts", info="questions in the batch")
        group = gr.Slider(2, MAX_GROUP_SIZE, value=8, step=1, label="responses per prompt G",
                          info="batch = prompts × G responses")
        methods = gr.CheckboxGroup(nat_methods, value=[value for _, value in nat_methods], label="methods",
                                   info="full is the reference")
        budgets = gr.Textbox("0.25, 0.5", label="budgets ρ", info="comma-separated, each in (0, 1]")
    with gr.Row():
        draws = gr.Number(32, precision=0, label="draws N (largest K)",
                          info=f"NAT gradients per method and budget, at most {MAX_AGREEMENT_DRAWS}")
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
