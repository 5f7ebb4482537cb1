"""The NAT explorer: a Gradio page that shows NAT at work on a small model, on CPU, offline.

    python app.py                       # the embedded tiny Qwen3, http://127.0.0.1:7860
    python -m minnat.explorer --port 7861 --model runs/x/checkpoints/step-000060

NAT ("Not All Tokens Are Needed") trains GRPO on a random subset of each response's tokens.
Token t is kept with a known probability π_t and, if kept, weighted by 1/π_t
(Horvitz–Thompson), so that the expected loss and gradient equal full-token GRPO's:

    E[ Σ_t keep_t · ℓ_t / π_t ] = Σ_t ℓ_t .

URS keeps each token independently with probability ρ (π_t = ρ). RPC keeps a random prefix
of each response (π_t = P(cut ≥ t)), so the transformer only runs over prompt + prefix.

One module per question a newcomer asks, read in this order:

  tokens.py     Tokens: which tokens does each method keep, and with which weight?
  weights.py    HT weights: π_t and 1/π_t against position; do the weights average to 1?
  agreement.py  Gradient agreement: how far is one NAT gradient from the full one, and how
                fast does the average of K draws close the gap (1/√K)?
  live.py       Live training: full, URS and RPC side by side — same learning, fewer tokens?

and around them: library.py (the shared read-only models and their locks), helpers.py
(reading controls, method names, error sentences), style.py (colours, CSS, plot conventions),
page.py (the page, `build_app`, `launch` and the command line).

Sessions. Every browser tab is its own session: its sampled responses, its Stop flags and
its live-training run live in `gr.State`, never in module globals. The only thing sessions
share is the read-only model (one per model name), and every forward/backward on it holds
that model's lock. Everything model-related goes through the minnat package (`minnat.nat`,
`minnat.grpo`, `minnat.diagnostics`, `minnat.train`); the explorer is only the page around it.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; set before gradio is imported

from minnat.explorer.library import LoadedModel, ModelLibrary  # noqa: E402
from minnat.explorer.page import build_app, launch, main, parse_args  # noqa: E402

__all__ = ["LoadedModel", "ModelLibrary", "build_app", "launch", "main", "parse_args"]
