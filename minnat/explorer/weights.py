"""View 2, HT weights: where does each scheme keep its tokens, and do the weights really average to 1?

For one response of L tokens at budget ρ, three panels against token position t:

    π_t                       the probability that token t is kept
    1/π_t                     the Horvitz–Thompson weight a kept token t carries (log scale)
    (1/N) Σ_k keep_{k,t}/π_t  the mean weight over N simulated selections, with ±2 standard
                              errors 2·√((1 − π_t)/(π_t N)): it sits at 1 at every t

for URS (π_t = ρ) and RPC with each cut distribution the library offers: `uniform-floor`
keeps the whole response with probability α = 0.2ρ (so π_t ≥ α and no weight exceeds 1/α),
`power` has no floor (its last weight grows like L^((1−ρ)/ρ)). The curves come from
`minnat.diagnostics.ht_weight_curves`, whose draws are made by `minnat.nat.select_tokens` itself,
so this is exactly what training uses. Nothing here needs the model.
"""
from __future__ import annotations

import gradio as gr
from matplotlib.figure import Figure

from minnat.diagnostics import ht_weight_curves
from minnat.explorer.helpers import show_error, significant, whole_number
from minnat.explorer.style import CUT_DISTRIBUTION_COLORS, legend_below, method_color
from minnat.nat import RPC_CUT_DISTRIBUTIONS, RPC_FLOOR_FRACTION, check_budget

HT_TABLE_HEADERS = ["position t"] + [f"{name} {quantity}" for name in
                                     ["URS"] + [f"RPC {d}" for d in RPC_CUT_DISTRIBUTIONS]
                                     for quantity in ("π", "1/π", "mean weight")]


def weight_curves(length: int, budget: float, num_draws: int, seed: int) -> list:
    """URS, then RPC with each cut distribution: `HTWeightCurves` for one response of `length` tokens."""
    curves = [ht_weight_curves(length, budget, "urs", num_draws=num_draws, seed=seed)]
    curves += [ht_weight_curves(length, budget, "rpc", distribution, num_draws=num_draws, seed=seed)
               for distribution in RPC_CUT_DISTRIBUTIONS]
    return curves


def weights_figure(curves, length: int, budget: float, num_draws: int) -> Figure:
    colors = [method_color("urs")] + [CUT_DISTRIBUTION_COLORS[d] for d in RPC_CUT_DISTRIBUTIONS]
    styles = ["-", "-", "--"]
    figure = Figure(figsize=(13, 4.3), layout="constrained")
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
    legend_below(figure, axes)
    return figure


def weights_summary(curves, length: int, budget: float) -> str:
    rows = ["| scheme | expected kept tokens Σ<sub>t</sub> π<sub>t</sub> | kept fraction over the N draws | "
            "largest weight "
            "1/π<sub>L</sub> | mean weight's largest distance from 1 |", "|---|---|---|---|---|"]
    for curve in curves:
        sigmas = ((curve.mean_weight - 1).abs() / curve.standard_error.clamp(min=1e-300))
        sigmas = sigmas[curve.standard_error > 0]
        worst = f"{float(sigmas.max()):.1f} standard errors" if sigmas.numel() else "0 (exact)"
        rows.append(f"| {curve.label} | {curve.expected_kept_tokens:.1f} of {length} (ρL = {budget * length:.1f}) | "
                    f"{curve.kept_fraction:.3f} | {float(curve.weight.max()):.4g} | {worst} |")
    floor = RPC_FLOOR_FRACTION * budget
    return "\n".join(rows) + (
        f"\n\nEvery scheme keeps about ρL tokens, but where: URS spreads them evenly (every weight 1/ρ = "
        f"{1 / budget:.3g}); RPC keeps early tokens always and late ones rarely, so late tokens carry large "
        f"weights. The *uniform-floor* cut keeps the whole response with probability α = {RPC_FLOOR_FRACTION:g}ρ = "
        f"{floor:.3g}, capping weights at 1/α = {1 / floor:.3g}; the *power* cut has no floor and its last weight "
        f"grows like L^((1−ρ)/ρ). "
        f"Either way the mean weight stays at 1: that is what makes NAT unbiased. With few draws the rarely kept "
        f"positions average 0 most of the time and occasionally a huge weight, which is the variance NAT pays.")


def ht_weights_view(length, budget, num_draws, seed):
    """(figure, summary markdown, table rows) of π_t, 1/π_t and the mean weight of N draws."""
    length = whole_number(length, "response length L", 1, 4096)
    budget = check_budget(budget)
    num_draws = whole_number(num_draws, "number of draws N", 1, 100_000)
    seed = whole_number(seed, "seed", 0, 2**31 - 1)
    curves = weight_curves(length, budget, num_draws, seed)
    table = [[t + 1] + [significant(value) for curve in curves for value in
                        (curve.inclusion_prob[t], curve.weight[t], curve.mean_weight[t])] for t in range(length)]
    return weights_figure(curves, length, budget, num_draws), weights_summary(curves, length, budget), table


def build_weights_tab(demo: gr.Blocks) -> None:
    """The HT-weights tab's controls and events (call inside `with gr.Tab(...)`); it plots on page load."""
    gr.Markdown("Where does each scheme keep its tokens, and how much does a kept token weigh? The right "
                "panel averages keep<sub>t</sub>/π<sub>t</sub> over N simulated draws: it sits at 1 at "
                "every position — the unbiasedness NAT rests on.")
    with gr.Row():
        length = gr.Slider(2, 512, value=64, step=1, label="response length L", info="tokens in the response")
        budget = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="budget ρ", info="expected kept fraction")
        num_draws = gr.Number(2000, precision=0, label="draws N",
                              info="simulated selections averaged in the right panel")
        seed = gr.Number(0, precision=0, label="seed", info="for the simulated draws")
    button = gr.Button("Plot", variant="primary")
    status = gr.Markdown()
    plot = gr.Plot(label="π_t, 1/π_t and the mean weight", format="png", show_label=False)
    table = gr.Markdown(elem_id="nat-weights-table")
    with gr.Accordion("the curves as numbers", open=False):
        frame = gr.Dataframe(headers=HT_TABLE_HEADERS, interactive=False)

    def plot_clicked(size, rho, draws, seed_value):
        try:
            figure, summary, rows = ht_weights_view(size, rho, draws, seed_value)
        except ValueError as error:
            return gr.update(), gr.update(), gr.update(), show_error(error)
        return figure, summary, rows, ""

    inputs, outputs = [length, budget, num_draws, seed], [plot, table, frame, status]
    button.click(plot_clicked, inputs, outputs, api_name="ht_weights")
    for slider in (length, budget):
        slider.release(plot_clicked, inputs, outputs, api_name=False)
    demo.load(plot_clicked, inputs, outputs, api_name=False)
