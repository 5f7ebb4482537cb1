"""How the explorer looks: one colour per method in every view, the page's CSS, and plot conventions.

Plot conventions, the same in every view so a reader learns them once:
  * a method has one colour everywhere (full grey, URS blue, RPC orange; the biased contrasts
    rpc-unweighted purple and top-entropy green; a method the library adds later gets the next
    colour of `EXTRA_COLORS`);
  * the legend sits below the panels, never on top of the data (`legend_below`);
  * an axis that counts steps or draws has whole-number ticks only (`whole_number_ticks`).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered to PNG for the page
import gradio as gr  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from minnat.nat import ALL_METHODS  # noqa: E402

METHOD_COLORS = {"full": "#4b5563", "urs": "#2563eb", "rpc": "#ea580c",
                 "rpc-unweighted": "#7c3aed", "top-entropy": "#059669"}
EXTRA_COLORS = ["#db2777", "#0891b2", "#65a30d", "#ca8a04"]
CUT_DISTRIBUTION_COLORS = {"uniform-floor": "#ea580c", "power": "#b45309"}


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    others = [m for m in ALL_METHODS if m not in METHOD_COLORS]
    index = others.index(method) if method in others else len(others)
    return EXTRA_COLORS[index % len(EXTRA_COLORS)]


def legend_below(figure, axes, columns: int | None = None) -> None:
    """One legend for the whole figure, under the panels (labels of every axis, each once)."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=columns or min(len(labels), 6),
                      frameon=False, fontsize=9)


def whole_number_ticks(axis) -> None:
    """Ticks at whole numbers only: there is no step 2.5."""
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="blue", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "Consolas", "monospace"])

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
.nat-tokens.with-contrasts .nat-line {grid-template-columns:104px 1fr 58px;}
.nat-method {font-weight:700;font-size:12px;padding-top:2px;}
.nat-method small {display:block;font-weight:600;font-size:10px;line-height:11px;}
.nat-contrasts {margin:8px 0 2px 0;padding:6px 10px;border:1px solid #ddd6fe;border-radius:8px;background:#faf5ff;
                color:#374151;}
.nat-contrasts p {margin:3px 0;}
.nat-count {font-size:11px;color:#6b7280;text-align:right;padding-top:3px;}
.nat-seq {display:flex;flex-wrap:wrap;gap:1px;}
.tok {display:inline-block;min-width:11px;text-align:center;font-family:ui-monospace,Consolas,monospace;
      font-size:13px;line-height:19px;padding:0 1px;border-radius:3px;}
.tok.kept {box-shadow:inset 0 0 0 1px rgba(0,0,0,0.08);}
.tok.dropped {color:#b6bcc6;background:transparent;box-shadow:inset 0 0 0 1px #eef0f3;}
"""
