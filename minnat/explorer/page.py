"""The page: the model row, the four tabs, and how the page is served.

`build_app` loads the default model (a clear ValueError if it cannot), builds the task, and lays
out one tab per view; each view module builds its own controls and events from a `Shared`
(the model library, the task, and the tab's model choice). `launch` serves it offline: no
analytics, bound to 127.0.0.1 unless told otherwise, no public link unless `share`.
"""
from __future__ import annotations

import argparse
import html
import sys

import gradio as gr
import torch

from minnat.explorer.agreement import build_agreement_tab
from minnat.explorer.helpers import note_box, show_error
from minnat.explorer.library import LoadedModel, ModelLibrary, Shared
from minnat.explorer.live import build_live_tab
from minnat.explorer.style import CSS, THEME
from minnat.explorer.tokens import build_tokens_tab
from minnat.explorer.weights import build_weights_tab
from minnat.models import EMBEDDED_MODEL
from minnat.tasks import TASKS, get_task
from minnat.train import TrainConfig

DEFAULT_TASK = TrainConfig().task  # the trainer's default workload

INTRO = """
# NAT explorer — *Not All Tokens Are Needed*

GRPO trains on every token of every sampled response. **NAT** trains on a random subset: token *t* is kept
with a known probability π<sub>t</sub> and, when kept, counts **1/π<sub>t</sub>** times (the Horvitz–Thompson
weight). Because E[keep<sub>t</sub>/π<sub>t</sub>] = 1, the expected loss and gradient are exactly full GRPO's.
**URS** keeps each token with probability ρ; **RPC** keeps a random *prefix*, so the model also runs over fewer
positions.
"""


def model_note(loaded: LoadedModel, task) -> str:
    return note_box(f"Model <b>{html.escape(loaded.name)}</b> ({loaded.parameter_count:,} parameters) on the "
                    f"<b>{task.name}</b> task, responses up to {loaded.max_new_tokens} tokens.")


def model_row(library: ModelLibrary, default_model: LoadedModel, task) -> gr.State:
    """The model box and its Load button; returns the tab's gr.State holding the chosen model's name."""
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
    return model_state


def build_app(model_name: str = EMBEDDED_MODEL, task_name: str = DEFAULT_TASK, data_path: str | None = None,
              library: ModelLibrary | None = None) -> gr.Blocks:
    """The page. Loads `model_name` now (a clear ValueError if it cannot) and the task's prompts."""
    library = library or ModelLibrary(task=task_name)
    default_model = library.get(model_name)
    task = get_task(task_name, data_path=data_path, seed=0)
    with gr.Blocks(title="NAT explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        shared = Shared(library, default_model, task, task_name, data_path,
                        model_row(library, default_model, task))
        with gr.Tabs():
            with gr.Tab("Tokens", id="tokens"):
                build_tokens_tab(shared, demo)
            with gr.Tab("HT weights", id="weights"):
                build_weights_tab(demo)
            with gr.Tab("Gradient agreement", id="gradient"):
                build_agreement_tab(shared)
            with gr.Tab("Live training", id="live"):
                build_live_tab(shared, demo)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Serve the page (offline: no analytics, no share link unless `share`)."""
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       quiet=quiet, theme=THEME, css=CSS, ssr_mode=False, show_error=False,
                       footer_links=["api", "gradio"])


def parse_args(argv=None, prog: str = "python app.py"):
    parser = argparse.ArgumentParser(prog=prog, description="The NAT explorer: see which tokens NAT trains on, "
                                     "their weights, how the gradient agrees, and what it saves.")
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help="'embedded' (the shipped tiny Qwen3), a checkpoint folder written by the "
                             "trainer, or a Hugging Face id already in the local cache (default: %(default)s)")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS),
                        help="task whose prompts and reward the views use (default: %(default)s)")
    parser.add_argument("--data-path", default=None, help="GSM8K-format JSONL file or folder (only for --task gsm8k)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0 = torch's default; 1 is often fastest on a busy machine)")
    return parser.parse_args(argv)


def main(argv=None, prog: str = "python app.py") -> int:
    args = parse_args(argv, prog)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        demo = build_app(args.model, args.task, args.data_path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    launch(demo, args.host, args.port, args.share)
    return 0
