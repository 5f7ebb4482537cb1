"""The NAT explorer: see which tokens NAT trains on, their weights, how the gradient agrees, and what it saves.

    python app.py                         # the embedded tiny Qwen3, http://127.0.0.1:7860
    python app.py --model runs/x/checkpoints/step-000060 --port 7861
    python app.py --threads 1             # one torch thread: often fastest on a busy machine
    python app.py --share                 # a public gradio.live link (off unless asked for)

This file is only the launcher; the page lives in the `minnat.explorer` package, one module per
view (tokens, weights, agreement, live) — start reading at minnat/explorer/__init__.py.
`python -m minnat.explorer` is the same command.
"""
import sys

from minnat.explorer import build_app, launch, main, parse_args  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
    sys.exit(main())
