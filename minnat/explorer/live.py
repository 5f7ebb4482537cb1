"""View 4, Live training: full, URS and RPC trained side by side — same learning, fewer tokens?

Each ticked method gets a short GRPO run with `minnat.train.Trainer`, from the same model, on the
same questions, with the same seed. The biased contrasts (rpc-unweighted, top-entropy) can run
next to them, and the task can be switched here: on "late-credit", whose reward is decided at the
end of long answers, the view's defaults tick rpc-unweighted too, so that one run shows the
truncated answer without 1/π_t weights falling behind full and RPC (README, "What the weights buy"). The runs live in background threads that take turns step by
step (`RoundRobin`), so exactly one computes at a time and each gets a fair share of the machine;
each keeps its own torch random stream across turns, so every run samples exactly what it would
sample alone (all of them see the same responses at step 1).

After every step the page redraws: reward and greedy held-out accuracy, update-step time,
response tokens trained on (NAT: Σ keep over the batch), and the activation memory held for
backward (`minnat.measure.ActivationMeter`), with a table of what URS and RPC save against full.

Temporary files. The Trainer writes each run (metrics.jsonl, samples.jsonl, a final checkpoint)
under one `minnat-app-live-*` folder in the system's temp directory. Everything the page shows
is kept in memory, so the folder is removed as soon as the last run's thread ends: when the
runs finish, when Stop is pressed, when the tab is closed (the page's unload event stops the
tab's runs) and, for anything still running, when the app exits (`LIVE_RUNS`, through atexit).
"""
from __future__ import annotations

import atexit
import html
import math
import os
import shutil
import tempfile
import threading
import time

import gradio as gr
import torch
from matplotlib.figure import Figure

from minnat.explorer.helpers import (chosen_methods, error_box, method_choices, method_name, note_box, show_error,
                                     whole_number)
from minnat.explorer.library import Shared
from minnat.explorer.style import legend_below, method_color, whole_number_ticks
from minnat.models import EMBEDDED_MODEL
from minnat.nat import ALL_METHODS, check_budget
from minnat.tasks import get_task
from minnat.train import TrainConfig, Trainer

MAX_LIVE_STEPS = 200
# The view starts from the trainer's own defaults (`python -m minnat.train`): the settings whose
# learning and savings the README reports (scripts/compare_methods.py runs exactly these).
DEFAULTS = TrainConfig()
LIVE_TASKS = ("long-addition", "late-credit")  # the embedded long-answer tasks (plus the page's own)
# Ticked when the view opens or the task changes: late-credit is there to show what the weights buy.
DEFAULT_METHODS = {"late-credit": ("full", "urs", "rpc", "rpc-unweighted")}
NAT_METHODS = ("full", "urs", "rpc")


def live_task_choices(page_task: str) -> list[str]:
    return list(LIVE_TASKS) + ([page_task] if page_task not in LIVE_TASKS else [])


def default_methods(task: str) -> list[str]:
    return list(DEFAULT_METHODS.get(task, NAT_METHODS))


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
        self.folder = folder  # the runs' output folders live under it; removed when the last thread ends
        self.finished_threads = 0
        self.finished_lock = threading.Lock()
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
            self._thread_done()
            self._publish(method)

    def _thread_done(self) -> None:
        """The last thread to end removes the runs' folder: the page keeps every number it shows."""
        with self.finished_lock:
            self.finished_threads += 1
            last = self.finished_threads == len(self.threads)
        if last:
            shutil.rmtree(self.folder, ignore_errors=True)

    def close(self, timeout: float = 30.0) -> None:
        """Stop, wait up to `timeout` seconds for the threads to finish their step, and remove the folder."""
        self.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self.folder, ignore_errors=True)


class LiveRuns:
    """The live runs of every tab, by session, so that closing a tab or the app stops them and removes
    their folders. Sessions' runs are otherwise only reached through their own gr.State."""

    def __init__(self):
        self.runs: dict[str, list[LiveRun]] = {}
        self.lock = threading.Lock()

    def add(self, session: str, run: LiveRun) -> None:
        with self.lock:
            for name in list(self.runs):  # finished runs have removed their folders already: forget them
                self.runs[name] = [old for old in self.runs[name] if old.running]
                if not self.runs[name]:
                    del self.runs[name]
            self.runs.setdefault(session, []).append(run)

    def stop_session(self, session: str) -> None:
        """The tab closed: stop its runs (their last thread removes their folder)."""
        with self.lock:
            runs = self.runs.pop(session, [])
        for run in runs:
            run.stop()

    def close_all(self) -> None:
        """The app is exiting: stop every run and remove every folder."""
        with self.lock:
            runs = [run for session_runs in self.runs.values() for run in session_runs]
            self.runs.clear()
        for run in runs:
            run.close(timeout=10.0)


LIVE_RUNS = LiveRuns()
atexit.register(LIVE_RUNS.close_all)


# ----------------------------------------------------------------------------- the picture and the table

def live_figure(run: LiveRun) -> Figure:
    """Four panels against the step (whole-number ticks), one colour per method, the legend below."""
    figure = Figure(figsize=(13, 6.8), layout="constrained")
    axes = figure.subplots(2, 2).flatten()
    for method, records in run.records.items():
        color, name = method_color(method), method_name(method)
        steps = [r for r in records if r["step"] > 0]
        x = [r["step"] for r in steps]
        if steps:
            axes[0].plot(x, [r["reward_mean"] for r in steps], "-", color=color, lw=1.6, alpha=0.8)
            axes[1].plot(x, [r["update_seconds"] for r in steps], "-o", color=color, ms=3, lw=1.4, label=name)
            axes[2].plot(x, [r.get("response_tokens_used") or 0 for r in steps], "-o", color=color, ms=3, lw=1.4)
            if method == "full":
                axes[2].plot(x, [r["response_tokens_generated"] for r in steps], ":", color="#9ca3af", lw=1.4,
                             label="tokens generated (full's rollouts)")
            memory = [(r["step"], r["activation_bytes"] / 2**20) for r in steps if r.get("activation_bytes")]
            if memory:
                axes[3].plot(*zip(*memory), "-o", color=color, ms=3, lw=1.4, label=name)
        accuracy = [(r["step"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
        if accuracy:
            axes[0].plot(*zip(*accuracy), "--s", color=color, ms=5, lw=1.2)
    if any(axis.lines for axis in axes):
        axes[0].plot([], [], "--s", color="#374151", ms=5, lw=1.2, label="greedy held-out accuracy (dashed)")
    titles = ["mean reward (solid) and greedy held-out accuracy (dashed)", "update-step time (s)",
              "response tokens trained on per step", "activation memory held for backward (MiB)"]
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.25)
        whole_number_ticks(axis)
    axes[0].set_ylim(-0.03, 1.03)
    legend_below(figure, [axes[1], axes[0], axes[2]])
    return figure


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def method_numbers(run: LiveRun, method: str) -> dict:
    """What one method did so far: steps, reward, accuracy first → last, tokens, time and memory per step."""
    records = run.records[method]
    steps = [r for r in records if r["step"] > 0]
    accuracy = [r["eval_accuracy"] for r in records if r.get("eval_accuracy") is not None]
    return {
        "steps": len(steps), "status": run.status[method],
        "reward_last5": mean([r["reward_mean"] for r in steps[-5:]]),
        "accuracy_first": accuracy[0] if accuracy else None, "accuracy_last": accuracy[-1] if accuracy else None,
        "tokens_used": sum(r.get("response_tokens_used") or 0 for r in steps),
        "tokens_generated": sum(r["response_tokens_generated"] for r in steps),
        "update_seconds": mean([r["update_seconds"] for r in steps]),
        "activation_mib": mean([(r.get("activation_bytes") or 0) / 2**20 for r in steps]) if steps else None,
        "loss_last": steps[-1].get("loss") if steps else None,
    }


def summary_row(method: str, n: dict, full: dict | None) -> str:
    def versus(key, unit_format):
        value = n[key]
        if value is None:
            return "—"
        text = unit_format(value)
        if full and method != "full" and full[key]:
            text += f" ({(value / full[key] - 1):+.0%} vs full)"
        return text

    accuracy = "—" if n["accuracy_first"] is None else f"{n['accuracy_first']:.0%} → {n['accuracy_last']:.0%}"
    tokens = f"{n['tokens_used']:,} of {n['tokens_generated']:,}" if n["steps"] else "—"
    if n["steps"] and n["tokens_generated"]:
        tokens += f" ({n['tokens_used'] / n['tokens_generated']:.0%})"
    reward = "—" if n["reward_last5"] is None else f"{n['reward_last5']:.2f}"
    return (f"| **{method_name(method)}** | {n['status']} | {n['steps']} | {reward} | {accuracy} | {tokens} | "
            f"{versus('update_seconds', lambda v: f'{v:.2f} s')} | "
            f"{versus('activation_mib', lambda v: f'{v:.1f} MiB')} |")


def live_summary(run: LiveRun) -> tuple[str, dict]:
    """A table of what each method did so far and what it saved against full (if full runs)."""
    numbers = {method: method_numbers(run, method) for method in run.records}
    full = numbers.get("full")
    rows = ["| method | status | steps | reward (last 5) | held-out accuracy | tokens trained on | update time / step "
            "| activation memory |", "|---|---|---|---|---|---|---|---|"]
    rows += [summary_row(method, n, full) for method, n in numbers.items()]
    text = "\n".join(rows)
    savings = []
    if full and full["steps"] and full["update_seconds"] and full["activation_mib"]:
        for method, n in numbers.items():
            if method != "full" and n["steps"]:
                savings.append(f"**{method_name(method)}** trained on "
                               f"{n['tokens_used'] / max(n['tokens_generated'], 1):.0%} of the tokens, its update "
                               f"step took {n['update_seconds'] / full['update_seconds']:.0%} of full's time and "
                               f"held {n['activation_mib'] / full['activation_mib']:.0%} of its activation memory")
    if savings:
        text += "\n\nSo far: " + "; ".join(savings) + "."
    for method, message in run.errors.items():
        text += "\n\n" + error_box(f"{method_name(method)} failed: {message}")
    text += (f"\n\n<span class='nat-muted'>While they train, the runs write metrics.jsonl, samples.jsonl and a "
             f"final checkpoint under <code>{html.escape(run.folder)}</code>; the folder is removed when they end "
             "(finished, stopped, tab closed or app exited). Every number shown here stays in the page.</span>")
    return text, numbers


# ----------------------------------------------------------------------------- the tab

def live_task(shared: Shared, task_name):
    """The task the runs train on (the page's, or another embedded one) -> (name, Task)."""
    task_name = task_name or shared.task_name
    if task_name not in live_task_choices(shared.task_name):
        raise ValueError(f"choose a task among {', '.join(live_task_choices(shared.task_name))}; got {task_name!r}.")
    if task_name == shared.task_name:
        return task_name, shared.task
    return task_name, get_task(task_name, seed=0)


def check_live_settings(shared: Shared, task, shown, rho, steps, lr, batch_size, size, num_eval, eval_every, seed):
    """The Start button's settings, checked: a dict of TrainConfig fields, or a ValueError sentence."""
    methods = chosen_methods(shown, what="choose at least one method to train.", methods=ALL_METHODS)
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
    return methods, dict(budget=rho, steps=steps, batch_size=batch_size, group_size=size, learning_rate=lr,
                         eval_every=eval_every, num_eval=num_eval, eval_batch_size=max(num_eval, 1), seed=seed)


def live_configs(shared: Shared, task_name: str, model_name: str, max_new_tokens: int, methods, settings: dict,
                 folder: str) -> dict:
    """One TrainConfig per method, writing under `folder` (no intermediate checkpoints)."""
    configs = {}
    data_path = shared.data_path if task_name == shared.task_name else None
    for method in methods:
        fields = dict(settings, budget=settings["budget"] if method != "full" else 1.0)
        configs[method] = TrainConfig(model=model_name, task=task_name, data_path=data_path,
                                      method=method, max_new_tokens=max_new_tokens, log_samples=1,
                                      save_every=MAX_LIVE_STEPS + 1, device="cpu", out=os.path.join(folder, method),
                                      overwrite=True, **fields)
    return configs


def run_model(shared: Shared, model, task_name: str) -> tuple[str, int]:
    """(model name, response limit) for the runs. On another task than the page's, "embedded" means that
    task's embedded model and the limit is the trainer's; any other model is loaded first, as a check."""
    if task_name != shared.task_name and (model or shared.default_model.name) == EMBEDDED_MODEL:
        return EMBEDDED_MODEL, DEFAULTS.max_new_tokens
    loaded = shared.session_model(model)  # checks the model loads before the threads try
    return loaded.name, loaded.max_new_tokens if task_name == shared.task_name else DEFAULTS.max_new_tokens


def run_live(shared: Shared, model, task_name, shown, rho, steps, lr, batch_size, size, num_eval, eval_every, seed,
             previous, session: str):
    """Start button (a generator): yields (plot, table, numbers, status, run) after every step of any method."""
    if previous is not None:
        previous.stop()  # its folder goes when its threads end
    keep = (gr.update(), gr.update(), gr.update())
    try:
        task_name, task = live_task(shared, task_name)
        methods, settings = check_live_settings(shared, task, shown, rho, steps, lr, batch_size, size, num_eval,
                                                eval_every, seed)
        model_name, max_new_tokens = run_model(shared, model, task_name)
    except ValueError as error:
        yield *keep, show_error(error), None
        return
    folder = tempfile.mkdtemp(prefix="minnat-app-live-")
    run = LiveRun(live_configs(shared, task_name, model_name, max_new_tokens, methods, settings, folder), folder)
    LIVE_RUNS.add(session, run.start())
    yield *keep, note_box("Starting: each method loads its own copy of the model…"), run
    try:
        shown_steps = -1
        while True:
            alive = run.running
            total = sum(len(r) for r in run.records.values())
            if total != shown_steps or not alive:
                shown_steps = total
                summary, numbers = live_summary(run)
                status = " · ".join(f"{method_name(m)}: {s}" for m, s in run.status.items())
                elapsed = time.perf_counter() - run.started
                yield (live_figure(run), summary, {"summary": numbers, "records": run.records, "folder": run.folder},
                       note_box(f"{'Running' if alive else 'Done'} ({elapsed:.0f} s) — {status}"), run)
            if not alive:
                break
            run.wait_for_news(timeout=1.0)
    finally:
        if run.running:  # the page went away mid-run: do not train for nobody
            run.stop()


def build_live_tab(shared: Shared, demo: gr.Blocks) -> None:
    """The Live-training tab's controls and events (call inside `with gr.Tab(...)`); closing the tab stops its runs."""
    gr.Markdown("Train full, URS and RPC side by side from the same model on the same questions. The "
                "runs take turns step by step, so they share the machine fairly. Same learning, "
                "fewer tokens? (Greedy held-out accuracy is measured every few steps.) The *(biased)* "
                "contrasts can run next to them: on the **late-credit** task, whose reward is decided at the "
                "end of long answers, training on RPC's truncated answer without the 1/π<sub>t</sub> weights "
                "(rpc-unweighted) falls behind.")
    live_state = gr.State(None, delete_callback=lambda run: run.stop() if run is not None else None)
    with gr.Row():
        task = gr.Dropdown(live_task_choices(shared.task_name), value=shared.task_name, label="task",
                           info="'embedded' trains the tiny model made for it")
        methods = gr.CheckboxGroup(method_choices(include_biased=True), value=default_methods(shared.task_name),
                                   label="methods", info="each trains its own copy of the model")
        budget = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="budget ρ", info="for URS and RPC")
        steps = gr.Number(DEFAULTS.steps, precision=0, label="steps", info="GRPO steps per method")
        lr = gr.Number(DEFAULTS.learning_rate, label="learning rate", info="AdamW, as in the trainer")
    with gr.Row():
        batch = gr.Number(DEFAULTS.batch_size, precision=0, label="batch size",
                          info="responses per step (a multiple of G)")
        group = gr.Number(DEFAULTS.group_size, precision=0, label="group size G", info="responses per question")
        num_eval = gr.Number(DEFAULTS.num_eval, precision=0, label="held-out questions",
                             info="greedy accuracy is measured on these")
        eval_every = gr.Number(DEFAULTS.eval_every, precision=0, label="evaluate every",
                               info="steps between evaluations (0: first and last only)")
        seed = gr.Number(0, precision=0, label="seed", info="same for every method")
    with gr.Row():
        button = gr.Button("Start", variant="primary")
        stop_button = gr.Button("Stop", variant="stop")
    status = gr.Markdown(elem_id="nat-live-status")
    plot = gr.Plot(label="live metrics", format="png", show_label=False)
    table = gr.Markdown(elem_id="nat-live-table")
    with gr.Accordion("step records as numbers", open=False):
        numbers = gr.JSON()

    def start_clicked(model, task_name, shown, rho, num_steps, rate, batch_size, size, questions, every, seed_value,
                      previous, request: gr.Request):
        yield from run_live(shared, model, task_name, shown, rho, num_steps, rate, batch_size, size, questions, every,
                            seed_value, previous, request.session_hash if request else "")

    def tab_closed(request: gr.Request):
        if request is not None and request.session_hash:
            LIVE_RUNS.stop_session(request.session_hash)

    def stop_clicked(run):
        if run is None:
            return note_box("Nothing is running.")
        run.stop()
        return note_box("Stopping: each method finishes the step it is on…")

    task.change(lambda name: gr.update(value=default_methods(name)), [task], [methods])
    button.click(start_clicked, [shared.model_state, task, methods, budget, steps, lr, batch, group, num_eval,
                                 eval_every, seed, live_state],
                 [plot, table, numbers, status, live_state], api_name="live_training", concurrency_limit=4)
    stop_button.click(stop_clicked, [live_state], [status], api_name="stop_live_training")
    demo.unload(tab_closed)
