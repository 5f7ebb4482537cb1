"""View 1, Tokens: which tokens does each method keep, and with which weight?

Sample a GRPO group of G responses to one prompt, then draw one selection per method over the
group with `minnat.nat.select_tokens`. Each response is shown once per method, token by token:

    kept token t     tinted by its Horvitz–Thompson weight w_t = 1/π_t (log colour scale)
    dropped token    pale; hovering shows the π_t it had and the weight it would have carried

The biased contrasts (`minnat.nat.BIASED_METHODS`, drawn by `select_tokens_biased`) can be shown
too, always named "(biased)", to see what goes wrong without Horvitz–Thompson:

    rpc-unweighted   RPC's cut (the same cut as the RPC row: same seed), weight 1 instead of 1/π_t,
                     the loss divided by the kept count: token t counts π_t times on average
                     instead of once, so the answer's tail is under-trained and nothing makes up for it
    top-entropy      the fraction ρ of the group's tokens with the highest entropy H_t under the
                     current policy (`minnat.entropy.response_entropies`, at the sampling
                     temperature 1), weight 1: deterministic given θ, and a token below the
                     threshold has π_t = 0, so it never enters the gradient

The table under the picture counts, for each method, the tokens trained on, the HT estimate
Σ_{kept} 1/π_t of the number of response tokens (one draw's value; its expectation over draws
is exactly Σ_i |o_i|, the number of response tokens),
and what `minnat.logprobs.response_logprobs` really gives the model for this draw: transformer
positions (RPC: prompt + prefix only) and LM-head positions (URS and RPC: kept tokens only).

The responses live in the tab's gr.State (`SampledGroup`), so *Draw again* and every control
change re-draw the selection over the same responses without sampling them again. *Sample
responses* draws fresh responses on every click unless a sampling seed is typed (the seed it
used is shown, so a sample worth keeping can be had again).
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import gradio as gr
import torch

from minnat.entropy import response_entropies
from minnat.explorer.helpers import (MAX_SEED, chosen_methods, method_choices, method_name, note_box, seed_or_fresh,
                                     seeded, show_error, significant, whole_number)
from minnat.explorer.library import LoadedModel, Shared
from minnat.explorer.style import TOKENS_CSS, method_color
from minnat.logprobs import LogprobStats, response_logprobs
from minnat.nat import (ALL_METHODS, BIASED_METHODS, METHODS, RPC_CUT_DISTRIBUTIONS, RPC_FLOOR_FRACTION,
                        check_budget, rpc_inclusion_probabilities, select_for_method)
from minnat.rollout import generate
from minnat.tasks import ArithmeticTask, Example

MAX_GROUP_SIZE = 16
NO_REFERENCE = "\0no reference"  # an answer no response can match: rewards of typed prompts show as —


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
    sample_seed: int = 0          # the seed the responses were sampled with
    sample_seed_fixed: bool = True  # typed by the user (False: a fresh random seed)
    entropies: torch.Tensor | None = None  # float [G, T]: H_t of the sampling policy (for top-entropy)


# ----------------------------------------------------------------------------- sampling

def example_for_prompt(task, text: str) -> tuple[Example, bool]:
    """The task example a prompt belongs to, and whether its reference answer is known.

    A prompt from the task's lists keeps its example; a typed `a+b` (or `a+b=`) on an addition
    task (arithmetic, long-addition) gets its exact sum as the answer; anything else has no
    reference (rewards show as —)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("the prompt is empty: pick one of the task's prompts or type one (e.g. 4721+985=).")
    for example in task.eval_examples + task.train_examples[:200]:
        if task.prompt_text(example).strip() == text:
            return example, True
    if isinstance(task, ArithmeticTask):
        match = re.fullmatch(r"(\d{1,12})\s*\+\s*(\d{1,12})\s*=?", text)
        if match:
            left, right = int(match.group(1)), int(match.group(2))
            return Example(question=f"{left}+{right}", answer=str(left + right)), True
        return Example(question=text[:-1] if text.endswith("=") else text, answer=NO_REFERENCE), False
    return Example(question=text, answer=NO_REFERENCE), False


def sample_group(loaded: LoadedModel, task, prompt: str, group_size: int, seed: int,
                 seed_fixed: bool = True) -> SampledGroup:
    """G responses to `prompt` at temperature 1, sampled under the model's lock with a fixed seed."""
    example, has_reference = example_for_prompt(task, prompt)
    with loaded.lock, seeded(seed):
        batch = generate(loaded.model, loaded.tokenizer, task, [example], group_size=group_size,
                         max_new_tokens=loaded.max_new_tokens, temperature=1.0)
        # One forward pass, kept with the responses, so that top-entropy can be redrawn without the model.
        entropies = response_entropies(loaded.model, batch.input_ids, batch.attention_mask, batch.response_mask,
                                       temperature=1.0)
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
                        special, batch.truncated.tolist(), int(seed), seed_fixed, entropies.float().cpu())


def draw_selections(group: SampledGroup, methods, budget: float, seed: int, cut_distribution: str) -> dict:
    """One draw per shown method over the group's responses, each method its own stream seeded with
    `seed` (so rpc-unweighted cuts exactly where RPC does); the contrasts via `select_for_method`."""
    if "top-entropy" in methods and group.entropies is None:
        raise ValueError("top-entropy needs the entropies of these responses, which this sample does not have; "
                         "sample the responses again.")
    return {method: select_for_method(group.response_mask, method, budget if method != "full" else 1.0,
                                      torch.Generator().manual_seed(int(seed)), entropies=group.entropies,
                                      cut_distribution=cut_distribution)
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


# ----------------------------------------------------------------------------- the picture

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


def color_scale_top(budget: float, selections: dict, cut_distribution: str, lengths) -> float:
    """The largest 1/π_t any shown token can get, so the colours do not change between draws.

    URS: 1/ρ; RPC: 1/π of the longest response's last token; a method without a known bound
    falls back to the largest weight of this draw."""
    top = 1.0
    for method, selection in selections.items():
        if method == "urs":
            top = max(top, 1.0 / budget)
        elif method == "rpc" and len(lengths):
            pi = rpc_inclusion_probabilities(torch.tensor(lengths), max(lengths), budget, cut_distribution,
                                             dtype=torch.float64)
            top = max(top, float((1.0 / pi[pi > 0]).max()))
        elif method != "full" and bool(selection.keep.any()):
            top = max(top, float(selection.weights.max()))
    return min(top, 1e6)


def token_tip(method: str, kept: bool, position: int, pi: float, weight: float, entropy: float | None) -> str:
    """The hover text of one token: what the draw did with it and why (the contrasts say they are biased)."""
    if method == "top-entropy":
        state = "kept" if kept else "dropped (below the entropy threshold: π = 0, never kept)"
        return f"token {position}: {state} · entropy H = {entropy:.3g} nats" + (" · weight 1 (biased)" if kept else "")
    if method == "rpc-unweighted":
        if kept:
            return f"token {position}: kept · weight 1, not 1/π = {1.0 / pi:.3g} (biased) · π = {pi:.3g}"
        return f"token {position}: dropped this draw · π = {pi:.3g} (would weigh 1: no 1/π)"
    if kept:
        return f"token {position}: kept · π = {pi:.3g} · weight 1/π = {weight:.3g}"
    return f"token {position}: dropped this draw · π = {pi:.3g} (would weigh {1.0 / pi:.3g})"


def token_span(text: str, special: bool, kept: bool, weight: float, top: float, tip: str) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;").replace("\n", "↵") or "&nbsp;"
    if special:
        shown = "⏎"
    if kept:
        background, color = weight_color(weight, top)
        return (f"<span class='tok kept' style='background:{background};color:{color}' "
                f"title='{html.escape(tip)}' data-weight='{weight:.6g}'>{shown}</span>")
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


def response_card(group: SampledGroup, row: int, selections: dict, top: float) -> tuple[str, dict]:
    """One response drawn once per method: (card html, its numbers for the JSON panel)."""
    tokens = group.token_texts[row]
    reward = group.rewards[row]
    if group.has_reference:
        badge = (f"<span class='nat-reward good'>reward {reward:g} ✓</span>" if reward > 0
                 else f"<span class='nat-reward bad'>reward {reward:g} ✗</span>")
    else:
        badge = "<span class='nat-reward'>reward — (no reference answer)</span>"
    cut_note = " · hit the length limit" if group.truncated[row] else ""
    lines, numbers = [], {}
    entropies = (group.entropies[row, :len(tokens)].tolist() if group.entropies is not None
                 else [None] * len(tokens))
    for method, selection in selections.items():
        keep = selection.keep[row, :len(tokens)].tolist()
        pi = selection.inclusion_prob[row, :len(tokens)].tolist()
        weights = selection.weights[row, :len(tokens)].tolist()
        spans = "".join(token_span(text, special, kept, weight, top,
                                   token_tip(method, kept, position + 1, p, weight, entropy))
                        for position, (text, special, kept, p, weight, entropy)
                        in enumerate(zip(tokens, group.special[row], keep, pi, weights, entropies)))
        name = (f"{html.escape(method)}<small>(biased)</small>" if method in BIASED_METHODS
                else html.escape(method_name(method)))
        lines.append(f"<div class='nat-line'><span class='nat-method' style='color:{method_color(method)}'>"
                     f"{name}</span><div class='nat-seq'>{spans}</div>"
                     f"<span class='nat-count'>{sum(keep)}/{len(tokens)}</span></div>")
        numbers[method] = {"keep": [int(k) for k in keep], "inclusion_prob": [significant(p) for p in pi],
                           "weight": [significant(w) for w in weights], "biased": method in BIASED_METHODS}
        if method == "top-entropy":
            numbers[method]["entropy"] = [significant(h) for h in entropies]
    card = (f"<div class='nat-card'><div class='nat-head'><b>response {row + 1}</b> · {len(tokens)} tokens"
            f"{cut_note} {badge}</div>{''.join(lines)}</div>")
    return card, {"response": row + 1, "reward": reward, "tokens": tokens, "methods": numbers}


def selection_table(group: SampledGroup, selections: dict, budget: float, loaded: LoadedModel | None) -> str:
    """Markdown: per method, tokens trained on, the HT token count, and what the model is given."""
    total = sum(len(tokens) for tokens in group.token_texts)
    rows = ["| method | tokens trained on | kept fraction | largest weight 1/π<sub>t</sub> | "
            f"Σ 1/π<sub>t</sub> over kept tokens (expectation: {total}) | "
            "transformer positions | LM-head positions |", "|---|---|---|---|---|---|---|"]
    for method, selection in selections.items():
        kept = int(selection.keep.sum())
        stats = model_input_stats(loaded, group, selection)
        positions = f"{stats.real_tokens_to_model:,}" if stats else "—"
        head = f"{stats.positions_scored:,}" if stats else "—"
        target = "" if method == "full" else f" (ρ = {budget:g})"
        # A contrast's weights are 1, not 1/π_t: their sum is the kept count, not an estimate of the total.
        estimate = ("n/a: weight 1, not 1/π<sub>t</sub>" if method in BIASED_METHODS
                    else f"{float(selection.weights.sum()):.1f}")
        rows.append(f"| **{method_name(method)}** | {kept} of {total} | {kept / max(total, 1):.2f}{target} | "
                    f"{float(selection.weights.max()) if kept else 0:.3g} | {estimate} | "
                    f"{positions} | {head} |")
    return "\n".join(rows) + (
        f"\n\n*Σ 1/π<sub>t</sub> over kept tokens* is this draw's Horvitz–Thompson estimate of the number of "
        f"response tokens, {total}: one draw's value lands above or below it, and its expectation over draws is "
        f"exactly {total}. "
        "*Transformer positions*: prompt + response tokens the rows need the transformer to run over (RPC: "
        "each response only up to its cut; micro-batches may add a little padding on top); "
        "*LM-head positions*: where the vocabulary projection and log-softmax run (URS and RPC: kept tokens only)."
        + (" The (biased) contrasts weigh each kept token 1, so they have no Horvitz–Thompson estimate."
           if any(method in BIASED_METHODS for method in selections) else ""))


def value_range(values: torch.Tensor) -> str:
    """"= 0.1" or "between 0.1 and 0.3" (two significant digits)."""
    low, high = f"{float(values.min()):.2g}", f"{float(values.max()):.2g}"
    return f"= {low}" if low == high else f"between {low} and {high}"


def contrast_notes(group: SampledGroup, selections: dict, budget: float) -> str:
    """Why each shown contrast is biased, in one paragraph each, with this draw's numbers (html, or "")."""
    mask = group.response_mask
    total = int(mask.sum())
    paragraphs = []
    if "rpc-unweighted" in selections:
        selection = selections["rpc-unweighted"]
        lengths = mask.sum(dim=1)
        last = selection.inclusion_prob[torch.arange(mask.shape[0]), (lengths - 1).clamp(min=0)][lengths > 0]
        same_cut = ("rpc" in selections and torch.equal(selections["rpc"].keep, selection.keep))
        paragraphs.append(
            f"<b style='color:{method_color('rpc-unweighted')}'>rpc-unweighted (biased)</b> keeps RPC's random "
            "prefix" + (" (the same cuts as the RPC rows: same seed)" if same_cut else "") +
            " but weighs each kept token 1 instead of 1/π<sub>t</sub>, and divides the loss by the kept count "
            "instead of |o<sub>i</sub>|: it trains on the truncated answer. The tail past each cut is not "
            "trained in this draw, and no weight makes up for it in the draws that do keep it: token t counts "
            "π<sub>t</sub> times on average instead of once. Here the last token of a response is kept with "
            f"π<sub>t</sub> {value_range(last)}, so it counts that little. Its expected gradient is not "
            "g<sub>full</sub>.")
    if "top-entropy" in selections and group.entropies is not None:
        keep = selections["top-entropy"].keep
        entropies = group.entropies
        dropped = mask & ~keep
        kept_mean = float(entropies[keep].mean()) if bool(keep.any()) else float("nan")
        dropped_mean = float(entropies[dropped].mean()) if bool(dropped.any()) else float("nan")
        paragraphs.append(
            f"<b style='color:{method_color('top-entropy')}'>top-entropy (biased)</b> keeps the tokens whose "
            "entropy H<sub>t</sub> under the current policy is at or above the (1 − ρ)-quantile of this group's "
            f"response tokens ({int(keep.sum())} of {total} at ρ = {budget:g}; ties are kept), weight 1 — TRL's "
            "<code>top_entropy_quantile</code>. It is deterministic given θ and the responses (<i>Draw "
            "again</i> keeps the same tokens), and a token below the threshold has π<sub>t</sub> = 0: it never "
            "enters the gradient, so the expected gradient is not g<sub>full</sub> unless those tokens' "
            f"gradients vanish. Mean entropy here: kept tokens {kept_mean:.3g} nats, dropped ones "
            f"{dropped_mean:.3g} nats.")
    if not paragraphs:
        return ""
    return "<div class='nat-contrasts'>" + "".join(f"<p>{text}</p>" for text in paragraphs) + "</div>"


def render_tokens(group: SampledGroup, methods, budget: float, seed: int, cut_distribution: str,
                  loaded: LoadedModel | None):
    """(html, summary markdown, numbers for the JSON panel) for one draw of each shown method."""
    selections = draw_selections(group, methods, budget, seed, cut_distribution)
    lengths = [len(tokens) for tokens in group.token_texts]
    top = color_scale_top(budget, selections, cut_distribution, lengths)
    cards, details = zip(*(response_card(group, row, selections, top) for row in range(len(lengths))))
    how = "typed" if group.sample_seed_fixed else "fresh: type it as the sampling seed to get these responses again"
    prompt_line = (f"<div class='nat-prompt'>prompt <code>{html.escape(group.prompt)}</code> · "
                   f"{len(lengths)} sampled responses · sampling seed {group.sample_seed} ({how}) · "
                   f"selection seed {int(seed)}</div>")
    wide = " with-contrasts" if any(method in BIASED_METHODS for method in selections) else ""
    page = (f"<div class='nat-tokens{wide}'>{prompt_line}{legend_html(top, budget)}"
            f"{contrast_notes(group, selections, budget)}{''.join(cards)}</div>")
    numbers = {"budget": budget, "seed": int(seed), "sampling_seed": group.sample_seed,
               "sampling_seed_fixed": group.sample_seed_fixed, "cut_distribution": cut_distribution,
               "prompt": group.prompt, "responses": list(details)}
    return page, selection_table(group, selections, budget, loaded), numbers


# ----------------------------------------------------------------------------- the tab

def sample_responses(shared: Shared, model, text, size, seed_sample, shown, rho, seed_draw, distribution,
                     progress=None):
    """Sample button: (page, table, numbers, status, group) or gr.update()s and an error box."""
    try:
        size = whole_number(size, "the number of responses G", 2, MAX_GROUP_SIZE)
        seed_sample, seed_fixed = seed_or_fresh(seed_sample, "the sampling seed")
        rho = check_budget(rho)
        shown = chosen_methods(shown, methods=ALL_METHODS)
        if progress is not None:
            progress(0.1, desc="sampling responses")
        loaded = shared.session_model(model)
        group = sample_group(loaded, shared.task, text, size, seed_sample, seed_fixed)
        if progress is not None:
            progress(0.8, desc="drawing selections")
        seed_draw = whole_number(seed_draw or 0, "the selection seed", 0, MAX_SEED)
        page, table, numbers = render_tokens(group, shown, rho, seed_draw, distribution, loaded)
    except ValueError as error:
        return gr.update(), gr.update(), gr.update(), show_error(error), gr.update()
    note = "" if group.has_reference else note_box(
        "This typed prompt has no reference answer, so rewards are not shown.")
    return page, table, numbers, note, group


def redraw_selection(shared: Shared, model, group, shown, rho, seed_draw, distribution):
    """A new selection over the tab's responses: (page, table, numbers, status)."""
    if group is None:
        return gr.update(), gr.update(), gr.update(), note_box("Sample responses first (the button above).")
    try:
        rho = check_budget(rho)
        seed_draw = whole_number(seed_draw, "the selection seed", 0, MAX_SEED)
        shown = chosen_methods(shown, methods=ALL_METHODS)
        try:
            loaded = shared.session_model(model)
        except ValueError:
            loaded = None
        if loaded is not None and loaded.name != group.model_name:
            loaded = None  # the responses came from another model: skip the model-cost columns
        page, table, numbers = render_tokens(group, shown, rho, seed_draw, distribution, loaded)
    except ValueError as error:
        return gr.update(), gr.update(), gr.update(), show_error(error)
    return page, table, numbers, ""


def build_tokens_tab(shared: Shared, demo: gr.Blocks) -> None:
    """The Tokens tab's controls and events (call inside `with gr.Tab(...)`); the page samples on load."""
    prompt_choices = [shared.task.prompt_text(example) for example in shared.task.eval_examples[:16]]
    gr.Markdown("Sample a group of responses and see, token by token, what one NAT draw trains on. "
                "Coloured tokens are kept, tinted by their weight 1/π<sub>t</sub>; pale ones are dropped. "
                "Tick a *(biased)* contrast to see what people try first instead: every kept token weighs 1.")
    group_state = gr.State(None)
    with gr.Row():
        prompt = gr.Dropdown(prompt_choices, value=prompt_choices[0] if prompt_choices else None,
                             allow_custom_value=True, label="prompt", scale=3,
                             info="a held-out task prompt, or type your own (e.g. 4721+985=)")
        group_size = gr.Slider(2, MAX_GROUP_SIZE, value=8, step=1, label="responses G",
                               info="how many responses to sample for the prompt (a GRPO group)")
        sample_seed = gr.Number(None, precision=0, label="sampling seed",
                                info="empty: fresh responses on every click; a number fixes them")
    with gr.Row():
        methods = gr.CheckboxGroup(method_choices(include_biased=True), value=list(METHODS), label="methods",
                                   info="rows shown under each response; the (biased) contrasts show what "
                                        "goes wrong without 1/π_t")
        budget = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="budget ρ",
                           info="expected fraction of each response's tokens that is kept (top-entropy: "
                                "the kept fraction; TRL uses 0.2)")
        cut = gr.Radio(list(RPC_CUT_DISTRIBUTIONS), value="uniform-floor", label="RPC cut distribution",
                       info=f"uniform-floor keeps the whole response w.p. α = {RPC_FLOOR_FRACTION:g}ρ, so "
                            "weights ≤ 1/α; power has no cap")
        draw_seed = gr.Number(0, precision=0, label="selection seed", info="fixes which tokens are kept")
    with gr.Row():
        sample_button = gr.Button("Sample responses", variant="primary")
        draw_button = gr.Button("Draw again")
    tokens_status = gr.Markdown()
    tokens_html = gr.HTML(css_template=TOKENS_CSS, elem_id="nat-tokens")
    tokens_table = gr.Markdown(elem_id="nat-tokens-table")
    with gr.Accordion("the numbers behind the picture (keep, π, weight per token)", open=False):
        tokens_json = gr.JSON()

    def sample_clicked(model, text, size, seed_sample, shown, rho, seed_draw, distribution, progress=gr.Progress()):
        return sample_responses(shared, model, text, size, seed_sample, shown, rho, seed_draw, distribution,
                                progress)

    def redraw(model, group, shown, rho, seed_draw, distribution):
        return redraw_selection(shared, model, group, shown, rho, seed_draw, distribution)

    def draw_again(model, group, shown, rho, seed_draw, distribution):
        seed_next = int(seed_draw or 0) + 1
        return (seed_next, *redraw_selection(shared, model, group, shown, rho, seed_next, distribution))

    token_inputs = [shared.model_state, group_state, methods, budget, draw_seed, cut]
    token_outputs = [tokens_html, tokens_table, tokens_json, tokens_status]
    # One queue for every Tokens event, in order: a click right after the page opens cannot be
    # overwritten by the sample the page load started (generation is serialised by the lock anyway).
    in_order = dict(concurrency_id="tokens", concurrency_limit=1)
    sample_inputs = [shared.model_state, prompt, group_size, sample_seed, methods, budget, draw_seed, cut]
    sample_button.click(sample_clicked, sample_inputs, token_outputs + [group_state], api_name="sample", **in_order)
    draw_button.click(draw_again, token_inputs, [draw_seed] + token_outputs, api_name="draw_again", **in_order)
    for control in (methods, cut):
        control.change(redraw, token_inputs, token_outputs, api_name=False, **in_order)
    budget.release(redraw, token_inputs, token_outputs, api_name="redraw", **in_order)
    draw_seed.submit(redraw, token_inputs, token_outputs, api_name=False, **in_order)
    demo.load(sample_clicked, sample_inputs, token_outputs + [group_state], api_name=False, **in_order)
