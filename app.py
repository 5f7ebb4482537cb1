"""The NAT explorer: see which tokens NAT trains on, their weights, how the gradient agrees, and what it saves.

    python app.py                         # the embedded tiny Qwen3 on the arithmetic task, http://127.0.0.1:7860
    python app.py --model runs/x/checkpoints/step-000060 --port 7861
    python app.py --share                 # a public gradio.live link (off unless asked for)

NAT ("Not All Tokens Are Needed") trains GRPO on a random subset of each response's tokens.
Token t is kept with a known probability π_t and, if kept, weighted by 1/π_t
(Horvitz–Thompson), so that the expected loss and gradient equal full-token GRPO's:

    E[ Σ_t keep_t · ℓ_t / π_t ] = Σ_t ℓ_t .

URS keeps each token independently with probability ρ (π_t = ρ). RPC keeps a random prefix
of each response (π_t = P(cut ≥ t)), so the transformer only runs over prompt + prefix.

Four views, one per question a newcomer asks:

  Tokens              which tokens does each method keep, and with which weight?
  HT weights          π_t and 1/π_t against position; do the weights really average to 1?
  Gradient agreement  how far is one NAT gradient from the full one, and how fast does the
                      average of K draws close the gap (1/√K)?
  Live training       full, URS and RPC trained side by side: same learning, fewer tokens?

Everything model-related goes through the minnat package (`minnat.nat`, `minnat.grpo`,
`minnat.diagnostics`, `minnat.train`); this file is only the page around it.

Sessions. Every browser tab is its own session: its sampled responses, its Stop flags and
its live-training run live in `gr.State`, never in module globals. The only thing sessions
share is the read-only model (one per model name), and every forward/backward on it holds
that model's lock. Live training gives each run its own model copy (the Trainer loads one).
"""
from __future__ import annotations

import argparse
import contextlib
import html
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; set before gradio is imported

import matplotlib

matplotlib.use("Agg")
import gradio as gr  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from minnat.diagnostics import gradient_agreement, ht_weight_curves, policy_gradient  # noqa: E402
from minnat.grpo import group_advantages  # noqa: E402
from minnat.logprobs import LogprobStats, response_logprobs  # noqa: E402
from minnat.models import EMBEDDED_MODEL, load_model  # noqa: E402
from minnat.nat import RPC_CUT_DISTRIBUTIONS, RPC_FLOOR_FRACTION, check_budget, select_tokens  # noqa: E402
from minnat.rollout import generate  # noqa: E402
from minnat.tasks import Example, get_task  # noqa: E402
from minnat.train import Trainer, TrainConfig  # noqa: E402

METHOD_NAMES = {"full": "full", "urs": "URS", "rpc": "RPC"}
METHOD_COLORS = {"full": "#4b5563", "urs": "#2563eb", "rpc": "#ea580c"}
CUT_DISTRIBUTION_COLORS = {"uniform-floor": "#ea580c", "power": "#b45309"}
MAX_GROUP_SIZE = 16
MAX_AGREEMENT_DRAWS = 256
MAX_LIVE_STEPS = 200

# ============================================================================= models


@dataclass
class LoadedModel:
    """A model shared read-only by every session. Hold `lock` for any forward or backward on it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_new_tokens: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())


class ModelLibrary:
    """Loads models by name ("embedded", a checkpoint folder, a hub id in the local cache) once, and
    keeps the few most recently used. Loading is guarded so two sessions never load the same model twice."""

    def __init__(self, capacity: int = 3):
        self.capacity = capacity
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        name = (name or "").strip()
        if not name:
            raise ValueError("no model given: type 'embedded', a checkpoint folder written by the trainer, or a "
                             "Hugging Face model id available offline.")
        with self.lock:
            if name in self.models:
                self.models.move_to_end(name)
                return self.models[name]
            model, tokenizer = load_model(name, device="cpu")  # raises ValueError with a readable sentence
            model.eval()
            generation_limit = getattr(model.generation_config, "max_new_tokens", None)
            loaded = LoadedModel(name, model, tokenizer, max_new_tokens=int(generation_limit or 128))
            self.models[name] = loaded
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
            return loaded


# ============================================================================= small helpers


def error_box(message: str) -> str:
    """A readable error for the page (Markdown), shown next to the controls that caused it."""
    return f"<div class='nat-error'>⚠️ {html.escape(str(message))}</div>"


def note_box(message: str) -> str:
    return f"<div class='nat-note'>{message}</div>"


def show_error(message: str) -> str:
    """Toast the error and return the box for the view's status area."""
    gr.Warning(str(message))
    return error_box(message)


def whole_number(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] from a gradio Number/Slider value, or a clear ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number between {low} and {high}; got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"{name} must be a whole number between {low} and {high}; got {value!r}.")
    return int(number)


def parse_budgets(text) -> list[float]:
    """"0.25, 0.5" -> [0.25, 0.5]; each ρ must lie in (0, 1]."""
    pieces = [piece for piece in re.split(r"[,\s;]+", str(text or "").strip()) if piece]
    if not pieces:
        raise ValueError("give at least one budget ρ, e.g. 0.25, 0.5.")
    budgets = []
    for piece in pieces:
        try:
            budgets.append(check_budget(float(piece)))
        except ValueError:
            raise ValueError(f"budget ρ must be in (0, 1] (the expected fraction of tokens kept); got {piece!r}. "
                             "Write budgets like 0.25, 0.5.") from None
    return sorted(set(budgets))


def significant(value, digits: int = 7) -> float:
    """A float rounded to `digits` significant digits, for compact JSON and tables (tiny π stay non-zero)."""
    return float(f"{float(value):.{digits}g}")


def method_label(method: str, budget: float | None = None) -> str:
    name = METHOD_NAMES[method]
    return name if method == "full" or budget is None else f"{name} ρ={budget:g}"


@contextlib.contextmanager
def seeded(seed: int):
    """Sample with a fixed seed, then put torch's global random state back as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# ============================================================================= view 1: tokens


@dataclass
class SampledGroup:
    """G responses to one prompt, as the Tokens view keeps them between draws (CPU tensors)."""

    model_name: str
    prompt: str
    has_reference: bool
    input_ids: torch.Tensor       # long [G, P + T]
    attention_mask: torch.Tensor  # long [G, P + T]
    response_mask: torch.Tensor   # bool [G, T]
    rewards: list
    token_texts: list             # per response, the text of each token
    special: list                 # per response, whether each token is a special token (EOS)
    truncated: list


def example_for_prompt(task, text: str) -> tuple[Example, bool]:
    """The task example a prompt belongs to, and whether its reference answer is known.

    A prompt from the task's lists keeps its example; a typed `a+b` (or `a+b=`) on the arithmetic
    task gets its exact sum as the answer; anything else has no reference (rewards show as —)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("the prompt is empty: pick one of the task's prompts or type one (e.g. 4721+985=).")
    for example in task.eval_examples + task.train_examples[:200]:
        if task.prompt_text(example).strip() == text:
            return example, True
    if task.name == "arithmetic":
        match = re.fullmatch(r"(\d{1,12})\s*\+\s*(\d{1,12})\s*=?", text)
        if match:
            left, right = int(match.group(1)), int(match.group(2))
            return Example(question=f"{left}+{right}", answer=str(left + right)), True
        return Example(question=text[:-1] if text.endswith("=") else text, answer="\0no reference"), False
    return Example(question=text, answer="\0no reference"), False


def sample_group(loaded: LoadedModel, task, prompt: str, group_size: int, seed: int) -> SampledGroup:
    example, has_reference = example_for_prompt(task, prompt)
    with loaded.lock, seeded(seed):
        batch = generate(loaded.model, loaded.tokenizer, task, [example], group_size=group_size,
                         max_new_tokens=loaded.max_new_tokens, temperature=1.0)
    special_ids = set(loaded.tokenizer.all_special_ids)
    prompt_columns = batch.prompt_columns
    texts, special = [], []
    for row in range(batch.input_ids.shape[0]):
        length = int(batch.response_mask[row].sum())
        ids = batch.input_ids[row, prompt_columns:prompt_columns + length].tolist()
        texts.append([loaded.tokenizer.decode([token]) for token in ids])
        special.append([token in special_ids for token in ids])
    return SampledGroup(loaded.name, task.prompt_text(example), has_reference, batch.input_ids.cpu(),
                        batch.attention_mask.cpu(), batch.response_mask.cpu(), batch.rewards.tolist(), texts,
                        special, batch.truncated.tolist())


def weight_color(weight: float, top: float) -> tuple[str, str]:
    """Background and text colour for an HT weight on a log scale from 1 (pale blue) to `top` (deep red)."""
    stops = [(0.0, (219, 234, 254)), (0.35, (253, 230, 138)), (0.7, (251, 146, 60)), (1.0, (190, 18, 60))]
    position = 0.0 if top <= 1.0 else min(1.0, max(0.0, math.log(weight) / math.log(top)))
    for (left, low), (right, high) in zip(stops, stops[1:]):
        if position <= right:
            share = (position - left) / (right - left)
            rgb = [round(a + (b - a) * share) for a, b in zip(low, high)]
            break
    text = "#ffffff" if position > 0.78 else "#111827"
    return "#{:02x}{:02x}{:02x}".format(*rgb), text


def color_scale_top(budget: float, methods, cut_distribution: str, lengths) -> float:
    """The largest 1/π_t any shown token can get, so the colours do not change between draws."""
    top = 1.0
    if "urs" in methods:
        top = max(top, 1.0 / budget)
    if "rpc" in methods and len(lengths):
        from minnat.nat import rpc_inclusion_probabilities
        pi = rpc_inclusion_probabilities(torch.tensor(lengths), max(lengths), budget, cut_distribution,
                                         dtype=torch.float64)
        top = max(top, float((1.0 / pi[pi > 0]).max()))
    return min(top, 1e6)


def token_span(text: str, special: bool, kept: bool, position: int, pi: float, top: float) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;").replace("\n", "↵") or "&nbsp;"
    if special:
        shown = "⏎"
    if kept:
        weight = 1.0 / pi
        background, color = weight_color(weight, top)
        tip = f"token {position}: kept · π = {pi:.3g} · weight 1/π = {weight:.3g}"
        return (f"<span class='tok kept' style='background:{background};color:{color}' "
                f"title='{html.escape(tip)}' data-weight='{weight:.6g}'>{shown}</span>")
    tip = f"token {position}: dropped this draw · π = {pi:.3g} (would weigh {1.0 / pi:.3g})"
    return f"<span class='tok dropped' title='{html.escape(tip)}'>{shown}</span>"


def legend_html(top: float, budget: float) -> str:
    ticks = [1.0] + [value for value in (1.5, 2, 3, 5, 10, 20, 50, 100, 1000) if value < top * 0.98] + [top]
    ticks = sorted(set(ticks))[-6:] if len(ticks) > 6 else ticks
    swatches = "".join(
        f"<span class='tok kept' style='background:{weight_color(t, top)[0]};color:{weight_color(t, top)[1]}'>"
        f"{t:.3g}</span>" for t in ticks)
    return (f"<div class='nat-legend'><b>HT weight 1/π<sub>t</sub> of a kept token:</b> {swatches}"
            f"<span class='nat-legend-gap'></span><span class='tok dropped'>x</span> dropped this draw "
            f"<span class='nat-legend-gap'></span><span class='tok dropped'>⏎</span> end of response (EOS) "
            f"<span class='nat-legend-gap'></span><span class='nat-muted'>hover a token for its π<sub>t</sub>; "
            f"ρ = {budget:g}</span></div>")


def draw_selections(group: SampledGroup, methods, budget: float, seed: int, cut_distribution: str) -> dict:
    """One NAT draw per shown method over the group's responses (each method its own seeded stream)."""
    return {method: select_tokens(group.response_mask, method, budget if method != "full" else 1.0,
                                  torch.Generator().manual_seed(int(seed)), cut_distribution=cut_distribution)
            for method in methods}


def model_input_stats(loaded: LoadedModel | None, group: SampledGroup, selection) -> LogprobStats | None:
    """What `response_logprobs` really gives the transformer for this selection (None if the model is gone)."""
    if loaded is None:
        return None
    stats = LogprobStats()
    with loaded.lock, torch.no_grad():
        response_logprobs(loaded.model, group.input_ids, group.attention_mask, group.response_mask, selection,
                          stats=stats)
    return stats


def render_tokens(group: SampledGroup, methods, budget: float, seed: int, cut_distribution: str,
                  loaded: LoadedModel | None):
    """(html, summary markdown, numbers for the JSON panel) for one draw of each shown method."""
    selections = draw_selections(group, methods, budget, seed, cut_distribution)
    lengths = [len(tokens) for tokens in group.token_texts]
    top = color_scale_top(budget, methods, cut_distribution, lengths)
    cards, details = [], []
    for row, tokens in enumerate(group.token_texts):
        reward = group.rewards[row]
        if group.has_reference:
            badge = (f"<span class='nat-reward good'>reward {reward:g} ✓</span>" if reward > 0
                     else f"<span class='nat-reward bad'>reward {reward:g} ✗</span>")
        else:
            badge = "<span class='nat-reward'>reward — (no reference answer)</span>"
        cut_note = " · hit the length limit" if group.truncated[row] else ""
        lines, numbers = [], {}
        for method, selection in selections.items():
            keep = selection.keep[row, :len(tokens)].tolist()
            pi = selection.inclusion_prob[row, :len(tokens)].tolist()
            spans = "".join(token_span(text, special, kept, position + 1, p, top) for position, (text, special, kept, p)
                            in enumerate(zip(tokens, group.special[row], keep, pi)))
            kept_count = sum(keep)
            lines.append(f"<div class='nat-line'><span class='nat-method' style='color:{METHOD_COLORS[method]}'>"
                         f"{METHOD_NAMES[method]}</span><div class='nat-seq'>{spans}</div>"
                         f"<span class='nat-count'>{kept_count}/{len(tokens)}</span></div>")
            numbers[method] = {"keep": [int(k) for k in keep], "inclusion_prob": [significant(p) for p in pi],
                               "weight": [significant(w) for w in selection.weights[row, :len(tokens)].tolist()]}
        cards.append(f"<div class='nat-card'><div class='nat-head'><b>response {row + 1}</b> · {len(tokens)} tokens"
                     f"{cut_note} {badge}</div>{''.join(lines)}</div>")
        details.append({"response": row + 1, "reward": reward, "tokens": tokens, "methods": numbers})
    prompt_line = (f"<div class='nat-prompt'>prompt <code>{html.escape(group.prompt)}</code> · "
                   f"{len(lengths)} sampled responses · draw seed {int(seed)}</div>")
    page = f"<div class='nat-tokens'>{prompt_line}{legend_html(top, budget)}{''.join(cards)}</div>"

    total = sum(lengths)
    rows = ["| method | tokens trained on | kept fraction | largest weight | Σ weights of kept | transformer positions "
            "| LM-head positions |", "|---|---|---|---|---|---|---|"]
    for method, selection in selections.items():
        kept = int(selection.keep.sum())
        stats = model_input_stats(loaded, group, selection)
        positions = f"{stats.real_tokens_to_model:,}" if stats else "—"
        head = f"{stats.positions_scored:,}" if stats else "—"
        target = "" if method == "full" else f" (ρ = {budget:g})"
        rows.append(f"| **{METHOD_NAMES[method]}** | {kept} of {total} | {kept / max(total, 1):.0%}{target} | "
                    f"{float(selection.weights.max()) if kept else 0:.3g} | {float(selection.weights.sum()):.1f} "
                    f"(≈ {total}) | {positions} | {head} |")
    summary = "\n".join(rows) + (
        "\n\n*Σ weights of kept* is the HT estimate of the token count: it averages to the true count over draws. "
        "*Transformer positions*: prompt + response tokens the rows need the transformer to run over (RPC: "
        "each response only up to its cut; micro-batches may add a little padding on top); "
        "*LM-head positions*: where the vocabulary projection and log-softmax run (URS and RPC: kept tokens only).")
    return page, summary, {"budget": budget, "seed": int(seed), "cut_distribution": cut_distribution,
                           "prompt": group.prompt, "responses": details}


# ============================================================================= view 2: HT weights


def ht_weights_view(length, budget, num_draws, seed):
    """(figure, summary markdown, table rows) of π_t, 1/π_t and the mean weight of N draws."""
    length = whole_number(length, "response length L", 1, 4096)
    budget = check_budget(budget)
    num_draws = whole_number(num_draws, "number of draws N", 1, 100_000)
    seed = whole_number(seed, "seed", 0, 2**31 - 1)
    curves = [ht_weight_curves(length, budget, "urs", num_draws=num_draws, seed=seed)]
    curves += [ht_weight_curves(length, budget, "rpc", distribution, num_draws=num_draws, seed=seed)
               for distribution in RPC_CUT_DISTRIBUTIONS]
    colors = [METHOD_COLORS["urs"]] + [CUT_DISTRIBUTION_COLORS[d] for d in RPC_CUT_DISTRIBUTIONS]
    styles = ["-", "-", "--"]

    figure = Figure(figsize=(13, 3.9), layout="constrained")
    axes = figure.subplots(1, 3)
    for curve, color, style in zip(curves, colors, styles):
        positions = curve.positions.numpy()
        axes[0].plot(positions, curve.inclusion_prob.numpy(), style, color=color, lw=2, label=curve.label)
        axes[1].plot(positions, curve.weight.numpy(), style, color=color, lw=2, label=curve.label)
        axes[2].plot(positions, curve.mean_weight.numpy(), style, color=color, lw=1.4, label=curve.label)
        band = 2 * curve.standard_error.clamp(max=10).numpy()
        axes[2].fill_between(positions, 1 - band, 1 + band, color=color, alpha=0.10, lw=0)
    for axis in axes:
        axis.axhline(1.0, color="#9ca3af", lw=1, ls=":")
        axis.set_xlabel("token position t")
        axis.grid(alpha=0.25)
    axes[0].axhline(budget, color="#6b7280", lw=1, ls="--")
    axes[0].text(length, budget, f" ρ = {budget:g}", va="bottom", ha="right", color="#6b7280", fontsize=9)
    axes[0].set_ylim(-0.02, 1.05)
    axes[0].set_title("inclusion probability π$_t$")
    axes[1].set_yscale("log")
    axes[1].set_title("HT weight 1/π$_t$ of a kept token")
    axes[2].set_title(f"mean weight over N = {num_draws:,} draws (±2 s.e.)")
    axes[2].set_ylim(0, 2.5)
    axes[0].legend(frameon=False, fontsize=9)

    rows = ["| scheme | expected kept tokens Σ<sub>t</sub> π<sub>t</sub> | kept in N draws | largest weight "
            "1/π<sub>L</sub> | mean weight's largest distance from 1 |", "|---|---|---|---|---|"]
    for curve in curves:
        sigmas = ((curve.mean_weight - 1).abs() / curve.standard_error.clamp(min=1e-300))
        sigmas = sigmas[curve.standard_error > 0]
        worst = f"{float(sigmas.max()):.1f} standard errors" if sigmas.numel() else "0 (exact)"
        rows.append(f"| {curve.label} | {curve.expected_kept_tokens:.1f} of {length} (ρL = {budget * length:.1f}) | "
                    f"{curve.kept_fraction:.1%} | {float(curve.weight.max()):.4g} | {worst} |")
    summary = "\n".join(rows) + (
        f"\n\nEvery scheme keeps about ρL tokens, but where: URS spreads them evenly (every weight 1/ρ = "
        f"{1 / budget:.3g}); RPC keeps early tokens always and late ones rarely, so late tokens carry large "
        f"weights. The *uniform-floor* cut keeps the whole response with probability φρ = {RPC_FLOOR_FRACTION * budget:.3g}, "
        f"capping weights at 1/(φρ); the *power* cut has no floor and its last weight grows like L^((1−ρ)/ρ). "
        f"Either way the mean weight stays at 1: that is what makes NAT unbiased. With few draws the rarely kept "
        f"positions average 0 most of the time and occasionally a huge weight, which is the variance NAT pays.")
    table = [[t + 1] + [significant(value) for curve in curves for value in
                        (curve.inclusion_prob[t], curve.weight[t], curve.mean_weight[t])] for t in range(length)]
    return figure, summary, table


HT_TABLE_HEADERS = ["position t"] + [f"{name} {quantity}" for name in
                                     ["URS"] + [f"RPC {d}" for d in RPC_CUT_DISTRIBUTIONS]
                                     for quantity in ("π", "1/π", "mean weight")]


# ============================================================================= view 3: gradient agreement


def sample_training_batch(loaded: LoadedModel, task, num_prompts: int, group_size: int, seed: int):
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
        color = METHOD_COLORS[result.method]
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
        labels = [r.label for r in nat_results]
        values = [r.per_draw_variance for r in nat_results]
        bars = axes[2].bar(range(len(values)), values, color=[METHOD_COLORS[r.method] for r in nat_results],
                           alpha=0.85)
        for bar, result in zip(bars, nat_results):
            axes[2].annotate(f"{result.kept_fraction:.0%} tokens", (bar.get_x() + bar.get_width() / 2,
                                                                    bar.get_height()),
                             ha="center", va="bottom", fontsize=8, color="#374151")
        axes[2].set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=9)
        if max(values) > 30 * max(min(values), 1e-300):  # orders of magnitude apart: bars on a log axis
            axes[2].set_yscale("log")
    axes[2].set_title("per-draw variance E‖g$_k$ − g$_{full}$‖² / ‖g$_{full}$‖²")
    axes[2].grid(alpha=0.25, axis="y")
    return figure


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


# ============================================================================= view 4: live training


class StopTraining(Exception):
    """Raised inside a trainer's on_step callback to end its run as soon as Stop is pressed."""


class RoundRobin:
    """Lets several trainer threads take turns step by step, so exactly one computes at a time.

    `queue[0]` holds the turn; `pass_turn` moves the caller to the back. Waiting ends early when the
    run is stopped."""

    def __init__(self, names, stop: threading.Event):
        self.queue = list(names)
        self.stop = stop
        self.condition = threading.Condition()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.stop.is_set() or (self.queue and self.queue[0] == name))

    def pass_turn(self, name: str) -> None:
        with self.condition:
            if name in self.queue:
                self.queue.remove(name)
                self.queue.append(name)
            self.condition.notify_all()

    def leave(self, name: str) -> None:
        with self.condition:
            if name in self.queue:
                self.queue.remove(name)
            self.condition.notify_all()

    def wake(self) -> None:
        with self.condition:
            self.condition.notify_all()


class LiveRun:
    """Short GRPO runs of several methods, trained in background threads that take turns step by step.

    Each method's Trainer loads its own copy of the model, so nothing is shared with other sessions.
    `records[method]` grows with one dict per step (the Trainer's step record, plus step 0's accuracy)."""

    def __init__(self, configs: dict, folder: str):
        self.configs = configs
        self.folder = folder  # the runs' output folders live under it
        self.stop_event = threading.Event()
        self.turns = RoundRobin(list(configs), self.stop_event)
        self.updated = threading.Condition()
        self.records = {method: [] for method in configs}
        self.status = {method: "waiting" for method in configs}
        self.errors: dict[str, str] = {}
        self.started = time.perf_counter()
        self.threads = [threading.Thread(target=self._train, args=(method,), daemon=True,
                                         name=f"minnat-live-{method}") for method in configs]

    def start(self) -> "LiveRun":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.turns.wake()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def _publish(self, method: str, record: dict | None = None, status: str | None = None) -> None:
        with self.updated:
            if record is not None:
                self.records[method].append(record)
            if status is not None:
                self.status[method] = status
            self.updated.notify_all()

    def wait_for_news(self, timeout: float) -> None:
        with self.updated:
            self.updated.wait(timeout)

    def _train(self, method: str) -> None:
        config = self.configs[method]
        try:
            self.turns.wait(method)
            if self.stop_event.is_set():
                raise StopTraining
            self._publish(method, status="loading the model")
            trainer = Trainer(config, progress=False)
            self._publish(method, status="evaluating before training")

            def on_step(record: dict) -> None:
                if not self.records[method]:
                    self._publish(method, {"step": 0, "eval_accuracy": trainer.accuracy_before})
                self._publish(method, dict(record), status=f"step {record['step']}/{config.steps}")
                # Sampling uses torch's global random stream. Each method keeps its own across turns, so
                # every run samples exactly as it would alone with this seed (same responses at step 1).
                random_state = torch.get_rng_state()
                self.turns.pass_turn(method)
                self.turns.wait(method)
                if self.stop_event.is_set():
                    raise StopTraining
                torch.set_rng_state(random_state)

            trainer.train(on_step=on_step, should_stop=self.stop_event.is_set)
            self._publish(method, status="finished")
        except StopTraining:
            self._publish(method, status="stopped")
        except Exception as error:  # noqa: BLE001 — shown in the page instead of killing the thread silently
            self.errors[method] = f"{type(error).__name__}: {error}"
            self._publish(method, status="failed")
        finally:
            self.turns.leave(method)
            self._publish(method)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def live_figure(run: LiveRun) -> Figure:
    figure = Figure(figsize=(13, 6.4), layout="constrained")
    axes = figure.subplots(2, 2).flatten()
    for method, records in run.records.items():
        color = METHOD_COLORS[method]
        steps = [r for r in records if r["step"] > 0]
        x = [r["step"] for r in steps]
        if steps:
            axes[0].plot(x, [r["reward_mean"] for r in steps], "-", color=color, lw=1.6, alpha=0.8,
                         label=f"{METHOD_NAMES[method]} reward")
            axes[1].plot(x, [r["update_seconds"] for r in steps], "-o", color=color, ms=3, lw=1.4,
                         label=METHOD_NAMES[method])
            axes[2].plot(x, [r.get("response_tokens_used") or 0 for r in steps], "-o", color=color, ms=3, lw=1.4,
                         label=f"{METHOD_NAMES[method]} trained on")
            if method == "full":
                axes[2].plot(x, [r["response_tokens_generated"] for r in steps], ":", color="#9ca3af", lw=1.2,
                             label="generated")
            memory = [(r["step"], r["activation_bytes"] / 2**20) for r in steps if r.get("activation_bytes")]
            if memory:
                axes[3].plot(*zip(*memory), "-o", color=color, ms=3, lw=1.4, label=METHOD_NAMES[method])
        accuracy = [(r["step"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
        if accuracy:
            axes[0].plot(*zip(*accuracy), "--s", color=color, ms=5, lw=1.2,
                         label=f"{METHOD_NAMES[method]} held-out accuracy")
    titles = ["reward (solid) and greedy held-out accuracy (dashed)", "update-step time (s)",
              "response tokens per step", "activation memory held for backward (MiB)"]
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.25)
        if axis.lines:
            axis.legend(frameon=False, fontsize=8)
    axes[0].set_ylim(-0.03, 1.03)
    return figure


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def live_summary(run: LiveRun) -> tuple[str, dict]:
    """A table of what each method did so far and what it saved against full (if full runs)."""
    rows = ["| method | status | steps | reward (last 5) | held-out accuracy | tokens trained on | update time / step "
            "| activation memory |", "|---|---|---|---|---|---|---|---|"]
    numbers = {}
    for method, records in run.records.items():
        steps = [r for r in records if r["step"] > 0]
        accuracy = [r["eval_accuracy"] for r in records if r.get("eval_accuracy") is not None]
        generated = sum(r["response_tokens_generated"] for r in steps)
        used = sum(r.get("response_tokens_used") or 0 for r in steps)
        numbers[method] = {
            "steps": len(steps), "status": run.status[method],
            "reward_last5": mean([r["reward_mean"] for r in steps[-5:]]),
            "accuracy_first": accuracy[0] if accuracy else None, "accuracy_last": accuracy[-1] if accuracy else None,
            "tokens_used": used, "tokens_generated": generated,
            "update_seconds": mean([r["update_seconds"] for r in steps]),
            "activation_mib": mean([(r.get("activation_bytes") or 0) / 2**20 for r in steps]) if steps else None,
            "loss_last": steps[-1].get("loss") if steps else None,
        }
    full = numbers.get("full")

    def versus(method, key, unit_format):
        value = numbers[method][key]
        if value is None:
            return "—"
        text = unit_format(value)
        if full and method != "full" and full[key]:
            text += f" ({(value / full[key] - 1):+.0%} vs full)"
        return text

    for method, n in numbers.items():
        accuracy = ("—" if n["accuracy_first"] is None else
                    f"{n['accuracy_first']:.0%} → {n['accuracy_last']:.0%}")
        tokens = f"{n['tokens_used']:,} of {n['tokens_generated']:,}" if n["steps"] else "—"
        if n["steps"] and n["tokens_generated"]:
            tokens += f" ({n['tokens_used'] / n['tokens_generated']:.0%})"
        reward = "—" if n["reward_last5"] is None else f"{n['reward_last5']:.2f}"
        rows.append(f"| **{METHOD_NAMES[method]}** | {n['status']} | {n['steps']} | {reward} | {accuracy} | {tokens} | "
                    f"{versus(method, 'update_seconds', lambda v: f'{v:.2f} s')} | "
                    f"{versus(method, 'activation_mib', lambda v: f'{v:.1f} MiB')} |")
    text = "\n".join(rows)
    savings = []
    if full and full["steps"]:
        for method in ("urs", "rpc"):
            n = numbers.get(method)
            if n and n["steps"] and full["update_seconds"] and full["activation_mib"]:
                savings.append(f"**{METHOD_NAMES[method]}** trained on {n['tokens_used'] / max(n['tokens_generated'], 1):.0%} "
                               f"of the tokens, its update step took {n['update_seconds'] / full['update_seconds']:.0%} "
                               f"of full's time and held {n['activation_mib'] / full['activation_mib']:.0%} of its "
                               "activation memory")
    if savings:
        text += "\n\nSo far: " + "; ".join(savings) + "."
    for method, message in run.errors.items():
        text += "\n\n" + error_box(f"{METHOD_NAMES[method]} failed: {message}")
    text += (f"\n\n<span class='nat-muted'>Runs (metrics.jsonl, samples.jsonl, final checkpoints) are written to "
             f"<code>{html.escape(run.folder)}</code> and removed when you start a new run or close the tab.</span>")
    return text, numbers


# ============================================================================= the page

INTRO = """
# NAT explorer — *Not All Tokens Are Needed*

GRPO trains on every token of every sampled response. **NAT** trains on a random subset: token *t* is kept
with a known probability π<sub>t</sub> and, when kept, counts **1/π<sub>t</sub>** times (the Horvitz–Thompson
weight). Because E[keep<sub>t</sub>/π<sub>t</sub>] = 1, the expected loss and gradient are exactly full GRPO's.
**URS** keeps each token with probability ρ; **RPC** keeps a random *prefix*, so the model also runs over fewer
positions.
"""

CSS = """
.nat-error {background:#fef2f2;border:1px solid #fca5a5;color:#991b1b;padding:8px 12px;border-radius:8px;}
.nat-note {background:#f0f9ff;border:1px solid #bae6fd;color:#075985;padding:8px 12px;border-radius:8px;}
.nat-muted {color:#6b7280;font-size:0.9em;}
"""

TOKENS_CSS = """
.nat-tokens {font-size:14px;}
.nat-prompt {margin:2px 0 6px 0;color:#374151;}
.nat-legend {margin:4px 0 10px 0;display:flex;flex-wrap:wrap;align-items:center;gap:3px;color:#374151;}
.nat-legend-gap {display:inline-block;width:14px;}
.nat-muted {color:#6b7280;font-size:0.9em;}
.nat-card {border:1px solid #e5e7eb;border-radius:10px;padding:6px 10px 8px 10px;margin-bottom:8px;background:#ffffff;}
.nat-head {font-size:13px;color:#374151;margin-bottom:3px;}
.nat-reward {margin-left:8px;padding:1px 8px;border-radius:9px;background:#f3f4f6;color:#374151;font-size:12px;}
.nat-reward.good {background:#dcfce7;color:#166534;}
.nat-reward.bad {background:#fee2e2;color:#991b1b;}
.nat-line {display:grid;grid-template-columns:42px 1fr 58px;align-items:start;margin:1px 0;}
.nat-method {font-weight:700;font-size:12px;padding-top:2px;}
.nat-count {font-size:11px;color:#6b7280;text-align:right;padding-top:3px;}
.nat-seq {display:flex;flex-wrap:wrap;gap:1px;}
.tok {display:inline-block;min-width:11px;text-align:center;font-family:ui-monospace,Consolas,monospace;
      font-size:13px;line-height:19px;padding:0 1px;border-radius:3px;}
.tok.kept {box-shadow:inset 0 0 0 1px rgba(0,0,0,0.08);}
.tok.dropped {color:#b6bcc6;background:transparent;box-shadow:inset 0 0 0 1px #eef0f3;}
"""


def model_note(loaded: LoadedModel, task) -> str:
    return note_box(f"Model <b>{html.escape(loaded.name)}</b> ({loaded.parameter_count:,} parameters) on the "
                    f"<b>{task.name}</b> task, responses up to {loaded.max_new_tokens} tokens.")


def build_app(model_name: str = EMBEDDED_MODEL, task_name: str = "arithmetic", data_path: str | None = None,
              library: ModelLibrary | None = None) -> gr.Blocks:
    """The page. Loads `model_name` now (a clear ValueError if it cannot) and the task's prompts."""
    library = library or ModelLibrary()
    default_model = library.get(model_name)
    task = get_task(task_name, data_path=data_path, seed=0)
    prompt_choices = [task.prompt_text(example) for example in task.eval_examples[:16]]
    default_group = 8

    def session_model(name: str | None) -> LoadedModel:
        return library.get(name or default_model.name)

    with gr.Blocks(title="NAT explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        model_state = gr.State(default_model.name)
        with gr.Row(equal_height=False):
            model_box = gr.Textbox(default_model.name, label="model", scale=5,
                                   info="'embedded' (the shipped tiny Qwen3), or a checkpoint folder the trainer "
                                        "wrote (runs/…/checkpoints/step-…). Each tab uses its own choice.")
            load_button = gr.Button("Load model", scale=1, min_width=160)
        model_status = gr.Markdown(model_note(default_model, task))

        def load_clicked(name):
            try:
                loaded = library.get(name)
            except ValueError as error:
                return gr.update(), show_error(f"could not load the model: {error}")
            return loaded.name, model_note(loaded, task)

        load_button.click(load_clicked, [model_box], [model_state, model_status], api_name="load_model")

        with gr.Tabs():
            # ------------------------------------------------------------------ tokens
            with gr.Tab("Tokens", id="tokens"):
                gr.Markdown("Sample a group of responses and see, token by token, what one NAT draw trains on. "
                            "Coloured tokens are kept, tinted by their weight 1/π<sub>t</sub>; pale ones are dropped.")
                group_state = gr.State(None)
                with gr.Row():
                    prompt = gr.Dropdown(prompt_choices, value=prompt_choices[0] if prompt_choices else None,
                                         allow_custom_value=True, label="prompt", scale=3,
                                         info="a held-out task prompt, or type your own (e.g. 4721+985=)")
                    group_size = gr.Slider(2, MAX_GROUP_SIZE, value=default_group, step=1, label="responses G",
                                           info="how many responses to sample for the prompt (a GRPO group)")
                    sample_seed = gr.Number(0, precision=0, label="sampling seed",
                                            info="fixes the sampled responses")
                with gr.Row():
                    methods = gr.CheckboxGroup([("full", "full"), ("URS", "urs"), ("RPC", "rpc")],
                                               value=["full", "urs", "rpc"], label="methods",
                                               info="rows shown under each response")
                    budget = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="budget ρ",
                                       info="expected fraction of each response's tokens that is kept")
                    cut = gr.Radio(list(RPC_CUT_DISTRIBUTIONS), value="uniform-floor", label="RPC cut distribution",
                                   info="uniform-floor caps weights at 1/(0.2ρ); power has no cap")
                    draw_seed = gr.Number(0, precision=0, label="selection seed",
                                          info="fixes which tokens are kept")
                with gr.Row():
                    sample_button = gr.Button("Sample responses", variant="primary")
                    draw_button = gr.Button("Draw again")
                tokens_status = gr.Markdown()
                tokens_html = gr.HTML(css_template=TOKENS_CSS, elem_id="nat-tokens")
                tokens_table = gr.Markdown(elem_id="nat-tokens-table")
                with gr.Accordion("the numbers behind the picture (keep, π, weight per token)", open=False):
                    tokens_json = gr.JSON()

                def sample_clicked(model, text, size, seed_sample, shown, rho, seed_draw, distribution,
                                   progress=gr.Progress()):
                    try:
                        size = whole_number(size, "the number of responses G", 2, MAX_GROUP_SIZE)
                        seed_sample = whole_number(seed_sample, "the sampling seed", 0, 2**31 - 1)
                        rho = check_budget(rho)
                        shown = [m for m in ("full", "urs", "rpc") if m in (shown or [])]
                        if not shown:
                            raise ValueError("choose at least one method to show.")
                        progress(0.1, desc="sampling responses")
                        loaded = session_model(model)
                        group = sample_group(loaded, task, text, size, seed_sample)
                        progress(0.8, desc="drawing selections")
                        page, table, numbers = render_tokens(group, shown, rho, seed_draw or 0, distribution, loaded)
                    except ValueError as error:
                        return gr.update(), gr.update(), gr.update(), show_error(error), gr.update()
                    note = "" if group.has_reference else note_box(
                        "This typed prompt has no reference answer, so rewards are not shown.")
                    return page, table, numbers, note, group

                def redraw(model, group, shown, rho, seed_draw, distribution):
                    if group is None:
                        return gr.update(), gr.update(), gr.update(), note_box(
                            "Sample responses first (the button above).")
                    try:
                        rho = check_budget(rho)
                        seed_draw = whole_number(seed_draw, "the selection seed", 0, 2**31 - 1)
                        shown = [m for m in ("full", "urs", "rpc") if m in (shown or [])]
                        if not shown:
                            raise ValueError("choose at least one method to show.")
                        try:
                            loaded = session_model(model)
                        except ValueError:
                            loaded = None
                        if loaded is not None and loaded.name != group.model_name:
                            loaded = None  # the responses came from another model: skip the model-cost columns
                        page, table, numbers = render_tokens(group, shown, rho, seed_draw, distribution, loaded)
                    except ValueError as error:
                        return gr.update(), gr.update(), gr.update(), show_error(error)
                    return page, table, numbers, ""

                def draw_again(model, group, shown, rho, seed_draw, distribution):
                    seed_next = int(seed_draw or 0) + 1
                    return (seed_next, *redraw(model, group, shown, rho, seed_next, distribution))

                token_inputs = [model_state, group_state, methods, budget, draw_seed, cut]
                token_outputs = [tokens_html, tokens_table, tokens_json, tokens_status]
                # One queue for every Tokens event, in order: a click right after the page opens cannot be
                # overwritten by the sample the page load started (generation is serialised by the lock anyway).
                in_order = dict(concurrency_id="tokens", concurrency_limit=1)
                sample_inputs = [model_state, prompt, group_size, sample_seed, methods, budget, draw_seed, cut]
                sample_button.click(sample_clicked, sample_inputs, token_outputs + [group_state], api_name="sample",
                                    **in_order)
                draw_button.click(draw_again, token_inputs, [draw_seed] + token_outputs, api_name="draw_again",
                                  **in_order)
                for control in (methods, cut):
                    control.change(redraw, token_inputs, token_outputs, api_name=False, **in_order)
                budget.release(redraw, token_inputs, token_outputs, api_name="redraw", **in_order)
                draw_seed.submit(redraw, token_inputs, token_outputs, api_name=False, **in_order)

            # ------------------------------------------------------------------ HT weights
            with gr.Tab("HT weights", id="weights"):
                gr.Markdown("Where does each scheme keep its tokens, and how much does a kept token weigh? The right "
                            "panel averages keep<sub>t</sub>/π<sub>t</sub> over N simulated draws: it sits at 1 at "
                            "every position — the unbiasedness NAT rests on.")
                with gr.Row():
                    length = gr.Slider(2, 512, value=64, step=1, label="response length L",
                                       info="tokens in the response")
                    weights_budget = gr.Slider(0.05, 1.0, value=0.3, step=0.05, label="budget ρ",
                                               info="expected kept fraction")
                    num_draws = gr.Number(2000, precision=0, label="draws N",
                                          info="simulated selections averaged in the right panel")
                    weights_seed = gr.Number(0, precision=0, label="seed", info="for the simulated draws")
                weights_button = gr.Button("Plot", variant="primary")
                weights_status = gr.Markdown()
                weights_plot = gr.Plot(label="π_t, 1/π_t and the mean weight", format="png", show_label=False)
                weights_table = gr.Markdown(elem_id="nat-weights-table")
                with gr.Accordion("the curves as numbers", open=False):
                    weights_frame = gr.Dataframe(headers=HT_TABLE_HEADERS, interactive=False)

                def weights_clicked(size, rho, draws, seed):
                    try:
                        figure, summary, table = ht_weights_view(size, rho, draws, seed)
                    except ValueError as error:
                        return gr.update(), gr.update(), gr.update(), show_error(error)
                    return figure, summary, table, ""

                weights_io = ([length, weights_budget, num_draws, weights_seed],
                              [weights_plot, weights_table, weights_frame, weights_status])
                weights_button.click(weights_clicked, *weights_io, api_name="ht_weights")
                for slider in (length, weights_budget):
                    slider.release(weights_clicked, *weights_io, api_name=False)
                demo.load(weights_clicked, *weights_io, api_name=False)

            # ------------------------------------------------------------------ gradient agreement
            with gr.Tab("Gradient agreement", id="gradient"):
                gr.Markdown("Sample a real batch, compute the full-token GRPO gradient g<sub>full</sub>, then N NAT "
                            "gradients g<sub>k</sub> (one per random selection). Their running average approaches "
                            "g<sub>full</sub> like 1/√K — NAT is unbiased; the per-draw variance is its price.")
                agreement_stop_state = gr.State(None)
                with gr.Row():
                    agreement_prompts = gr.Slider(1, 16, value=4, step=1, label="prompts",
                                                  info="questions in the batch")
                    agreement_group = gr.Slider(2, MAX_GROUP_SIZE, value=8, step=1, label="responses per prompt G",
                                                info="batch = prompts × G responses")
                    agreement_methods = gr.CheckboxGroup([("URS", "urs"), ("RPC", "rpc")], value=["urs", "rpc"],
                                                         label="methods", info="full is the reference")
                    agreement_budgets = gr.Textbox("0.25, 0.5", label="budgets ρ",
                                                   info="comma-separated, each in (0, 1]")
                with gr.Row():
                    agreement_draws = gr.Number(32, precision=0, label="draws N (largest K)",
                                                info=f"NAT gradients per method and budget, at most "
                                                     f"{MAX_AGREEMENT_DRAWS}")
                    agreement_cut = gr.Radio(list(RPC_CUT_DISTRIBUTIONS), value="uniform-floor",
                                             label="RPC cut distribution", info="as in the Tokens view")
                    agreement_seed = gr.Number(0, precision=0, label="seed",
                                               info="fixes the batch and the draws")
                with gr.Row():
                    agreement_button = gr.Button("Compute", variant="primary")
                    agreement_stop = gr.Button("Stop", variant="stop")
                agreement_status = gr.Markdown(elem_id="nat-agreement-status")
                agreement_plot = gr.Plot(label="agreement with the full gradient", format="png", show_label=False)
                agreement_table = gr.Markdown(elem_id="nat-agreement-table")
                with gr.Accordion("the curves as numbers", open=False):
                    agreement_json = gr.JSON()

                def agreement_clicked(model, prompts, size, shown, budget_text, draws, distribution, seed):
                    stop = threading.Event()
                    keep = (gr.update(), gr.update(), gr.update())
                    try:
                        prompts = whole_number(prompts, "the number of prompts", 1, 64)
                        size = whole_number(size, "the number of responses per prompt G", 2, MAX_GROUP_SIZE)
                        draws = whole_number(draws, "the number of draws N", 1, MAX_AGREEMENT_DRAWS)
                        seed = whole_number(seed, "the seed", 0, 2**31 - 1)
                        budgets = parse_budgets(budget_text)
                        shown = [m for m in ("urs", "rpc") if m in (shown or [])]
                        if not shown:
                            raise ValueError("choose at least one NAT method (URS or RPC).")
                        loaded = session_model(model)
                    except ValueError as error:
                        yield *keep, show_error(error), stop
                        return
                    yield *keep, note_box(f"Sampling {prompts} × {size} responses…"), stop
                    batch = sample_training_batch(loaded, task, prompts, size, seed)
                    advantages = group_advantages(batch.rewards, size)
                    groups = batch.rewards.view(-1, size)
                    mixed = int((groups.max(dim=1).values > groups.min(dim=1).values).sum())
                    batch_note = (f"Batch: {prompts} prompts × {size} responses, {int(batch.response_mask.sum()):,} "
                                  f"response tokens, mean reward {float(batch.rewards.mean()):.2f}; {mixed} of "
                                  f"{prompts} groups mix right and wrong answers (the others have Â = 0).")
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
                        yield (gr.update(), gr.update(), gr.update(),
                               note_box(f"Computing {method_label(method, rho)} ({index + 1} of {len(runs)}): "
                                        f"{draws} NAT gradients…"), stop)
                        with loaded.lock:
                            results.append(gradient_agreement(
                                loaded.model, *tensors, advantages, method, rho, draws, seed=seed,
                                cut_distribution=distribution, full_gradient=full_gradient,
                                should_stop=stop.is_set))
                        numbers = {"batch": {"prompts": prompts, "group_size": size, "mixed_groups": mixed,
                                             "full_gradient_norm": results[0].full_gradient_norm},
                                   "results": [{"method": r.method, "budget": r.budget, "label": r.label,
                                                "cut_distribution": r.cut_distribution, "draws": r.draws,
                                                "relative_error": r.relative_error, "cosine": r.cosine,
                                                "per_draw_variance": r.per_draw_variance,
                                                "kept_fraction": r.kept_fraction} for r in results]}
                        yield (agreement_figure(results, max(r.num_draws for r in results)),
                               agreement_summary(results, batch_note), numbers, "", stop)
                    if stop.is_set():
                        yield gr.update(), gr.update(), gr.update(), note_box(
                            f"Stopped: showing the {len(results)} finished or partial curve(s)."), stop

                def agreement_stopped(stop):
                    if stop is not None:
                        stop.set()
                    return note_box("Stopping after the current draw…")

                agreement_button.click(
                    agreement_clicked,
                    [model_state, agreement_prompts, agreement_group, agreement_methods, agreement_budgets,
                     agreement_draws, agreement_cut, agreement_seed],
                    [agreement_plot, agreement_table, agreement_json, agreement_status, agreement_stop_state],
                    api_name="gradient_agreement")
                agreement_stop.click(agreement_stopped, [agreement_stop_state], [agreement_status],
                                     api_name="stop_gradient_agreement")

            # ------------------------------------------------------------------ live training
            with gr.Tab("Live training", id="live"):
                gr.Markdown("Train full, URS and RPC side by side from the same model on the same questions. The "
                            "three runs take turns step by step, so they share the machine fairly. Same learning, "
                            "fewer tokens? (Greedy held-out accuracy is measured every few steps.)")
                live_state = gr.State(None, delete_callback=lambda run: run.cleanup() if run is not None else None)
                with gr.Row():
                    live_methods = gr.CheckboxGroup([("full", "full"), ("URS", "urs"), ("RPC", "rpc")],
                                                    value=["full", "urs", "rpc"], label="methods",
                                                    info="each trains its own copy of the model")
                    live_budget = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="budget ρ",
                                            info="for URS and RPC")
                    live_steps = gr.Number(20, precision=0, label="steps",
                                           info="GRPO steps per method")
                    live_lr = gr.Number(3e-4, label="learning rate", info="AdamW, as in the trainer")
                with gr.Row():
                    live_batch = gr.Number(32, precision=0, label="batch size",
                                           info="responses per step (a multiple of G)")
                    live_group = gr.Number(8, precision=0, label="group size G",
                                           info="responses per question")
                    live_eval = gr.Number(50, precision=0, label="held-out questions",
                                          info="greedy accuracy is measured on these")
                    live_eval_every = gr.Number(5, precision=0, label="evaluate every",
                                                info="steps between evaluations (0: first and last only)")
                    live_seed = gr.Number(0, precision=0, label="seed", info="same for every method")
                with gr.Row():
                    live_button = gr.Button("Start", variant="primary")
                    live_stop = gr.Button("Stop", variant="stop")
                live_status = gr.Markdown(elem_id="nat-live-status")
                live_plot = gr.Plot(label="live metrics", format="png", show_label=False)
                live_table = gr.Markdown(elem_id="nat-live-table")
                with gr.Accordion("step records as numbers", open=False):
                    live_json = gr.JSON()

                def live_clicked(model, shown, rho, steps, lr, batch_size, size, num_eval, eval_every, seed,
                                 previous):
                    if previous is not None:
                        previous.cleanup()
                    keep = (gr.update(), gr.update(), gr.update())
                    try:
                        shown = [m for m in ("full", "urs", "rpc") if m in (shown or [])]
                        if not shown:
                            raise ValueError("choose at least one method to train.")
                        rho = check_budget(rho)
                        steps = whole_number(steps, "steps", 1, MAX_LIVE_STEPS)
                        size = whole_number(size, "the group size G", 2, 64)
                        batch_size = whole_number(batch_size, "the batch size", size, 1024)
                        if batch_size % size:
                            raise ValueError(f"the batch size ({batch_size}) must be a multiple of the group size G "
                                             f"({size}); try {max(1, batch_size // size) * size}.")
                        num_eval = whole_number(num_eval, "held-out questions", 1, len(task.eval_examples))
                        eval_every = whole_number(eval_every, "evaluate every", 0, MAX_LIVE_STEPS)
                        seed = whole_number(seed, "the seed", 0, 2**31 - 1)
                        try:
                            lr = float(lr)
                        except (TypeError, ValueError):
                            lr = float("nan")
                        if not (math.isfinite(lr) and 0 < lr < 1):
                            raise ValueError(f"the learning rate must be a number between 0 and 1; got {lr}.")
                        loaded = session_model(model)  # checks the model loads before three threads try
                    except ValueError as error:
                        yield *keep, show_error(error), None
                        return
                    configs = {}
                    folder = tempfile.mkdtemp(prefix="minnat-app-live-")
                    for method in shown:
                        configs[method] = TrainConfig(
                            model=loaded.name, task=task_name, data_path=data_path, method=method,
                            budget=rho if method != "full" else 1.0, steps=steps, batch_size=batch_size,
                            group_size=size, max_new_tokens=loaded.max_new_tokens, learning_rate=lr,
                            eval_every=eval_every, num_eval=num_eval, eval_batch_size=max(num_eval, 1),
                            log_samples=1, save_every=MAX_LIVE_STEPS + 1, seed=seed, device="cpu",
                            out=os.path.join(folder, method), overwrite=True)
                    run = LiveRun(configs, folder).start()
                    yield *keep, note_box("Starting: each method loads its own copy of the model…"), run
                    try:
                        shown_steps = -1
                        while True:
                            alive = run.running
                            total = sum(len(r) for r in run.records.values())
                            if total != shown_steps or not alive:
                                shown_steps = total
                                summary, numbers = live_summary(run)
                                status = " · ".join(f"{METHOD_NAMES[m]}: {s}" for m, s in run.status.items())
                                elapsed = time.perf_counter() - run.started
                                yield (live_figure(run), summary, {"summary": numbers, "records": run.records},
                                       note_box(f"{'Running' if alive else 'Done'} ({elapsed:.0f} s) — {status}"),
                                       run)
                            if not alive:
                                break
                            run.wait_for_news(timeout=1.0)
                    finally:
                        if run.running:  # the page went away mid-run: do not train for nobody
                            run.stop()

                def live_stopped(run):
                    if run is None:
                        return note_box("Nothing is running.")
                    run.stop()
                    return note_box("Stopping: each method finishes the step it is on…")

                live_button.click(
                    live_clicked,
                    [model_state, live_methods, live_budget, live_steps, live_lr, live_batch, live_group, live_eval,
                     live_eval_every, live_seed, live_state],
                    [live_plot, live_table, live_json, live_status, live_state], api_name="live_training",
                    concurrency_limit=4)
                live_stop.click(live_stopped, [live_state], [live_status], api_name="stop_live_training")

        demo.load(sample_clicked, sample_inputs, token_outputs + [group_state], api_name=False, **in_order)
    return demo


THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="blue", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "Consolas", "monospace"])


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Serve the page (offline: no analytics, no share link unless `share`)."""
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       quiet=quiet, theme=THEME, css=CSS, ssr_mode=False, show_error=False,
                       footer_links=["api", "gradio"])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help="'embedded' (default: the shipped tiny Qwen3), a checkpoint folder written by the "
                             "trainer, or a Hugging Face id already in the local cache")
    parser.add_argument("--task", default="arithmetic", choices=["arithmetic", "gsm8k"],
                        help="task whose prompts and reward the views use (default: arithmetic)")
    parser.add_argument("--data-path", default=None, help="GSM8K-format JSONL file or folder (only for --task gsm8k)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0 = torch's default; 1 is often fastest on a busy machine)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        demo = build_app(args.model, args.task, args.data_path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    launch(demo, args.host, args.port, args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
