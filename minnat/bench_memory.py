"""Peak memory of one policy-update step, minnat against stock TRL on the same batch.

`python -m minnat.bench --mode memory` runs this module. Every configuration runs one GRPO
update step (forward + backward of the loss, on-policy, μ = 1) on the same batch — the same
model weights, token ids, masks and advantages — and reports three memory figures, all in
bytes, all lower-is-better:

    saved_for_backward_bytes   tensors autograd holds from the forward for the backward
                               (`minnat.measure.ActivationMeter`): what RPC shrinks and what
                               recomputation (the LM-head tiles, gradient checkpointing) avoids
    peak_above_start_bytes     the step's own high-water mark: peak memory during the step minus
                               the memory in use when it began (weights, batch, optimizer-free):
                               activations + parameter gradients + every temporary, whoever
                               made it. This is what must fit next to the weights.
    peak_bytes                 the process's total peak during the step (weights, Python, torch
                               libraries included): what the machine must have.

On CPU each configuration runs in a FRESH Python process (this module's `__main__`), peak =
the resident set size's high-water mark, reset when the step begins (`minnat.measure.PeakRSS`).
glibc is told to return every block of 64 KiB or more to the system when it is freed
(MALLOC_MMAP_THRESHOLD_), so RSS follows the live tensors instead of the allocator's retained
heap. One warm-up step runs first (lazy initialisation is not the step's cost) and the
gradients are then set to None, as `optimizer.zero_grad()` does. On CUDA the figures are
`torch.cuda.max_memory_allocated` minus `memory_allocated` at the start.

Configurations:

    minnat full / urs ρ / rpc ρ   `response_logprobs` + `policy_loss` (what `Trainer.update` runs)
    trl                           stock `trl.GRPOTrainer._compute_loss` (TRL's fused LM head) on the
                                  same batch, loss_type "grpo" (= seq-mean-token-mean), β = 0
    trl+nat full / urs / rpc      `minnat.integrations.trl.NATGRPOTrainer._compute_loss`, given the
                                  very selection minnat's rows use
    minnat full, LM head before   minnat full with the previous LM head (what issue 14 measured)
    head tiled / head before      the LM head + log-softmax alone on the batch's K response positions:
                                  today's tiles (`minnat.logprobs.score_positions`) against the
                                  previous design (1,024 positions × the whole vocabulary, recomputed
                                  in backward), `position_chunked_logprobs` below

Time: after the memory runs, every configuration is timed in this process, repeats interleaved
in a fresh random order each, and reported as a ratio to stock TRL (head rows: to "head
before") per repeat; a ratio whose repeats disagree beyond `minnat.measure.TIME_SPREAD_LIMIT`
is printed as unreliable, not as a finding.
"""
from __future__ import annotations

import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from minnat.bench_common import (batch_seed, bench_config, build_model, describe_threads, draw_selection,
                                 make_batch, policy_update_loss, selection_seed, stratified_rpc_selections,
                                 zero_gradients)
from minnat.logprobs import score_positions
from minnat.measure import ActivationMeter, PeakRSS, ratio_spread, stopwatch, synchronize

RESULT_MARK = "MINNAT_MEMORY_RESULT "
ENGINES = ("minnat", "trl", "trl+nat", "head")
# Issue 14's targets on the V = 151,936 configuration.
TARGETS = {"full_peak_vs_trl": 1.0, "full_time_vs_trl": 0.8, "rpc_peak_vs_trl": 0.6,
           "head_peak_vs_before": 1 / 8, "head_time_vs_before": 1.10}


# ----------------------------------------------------------------------------- the LM head before the tiles
def position_chunked_logprobs(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, *,
                              temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """log softmax(head(h)/τ)[target] as minnat computed it before the tiles: the benchmark's baseline.

    Chunks of 1,024 positions × the WHOLE vocabulary, each recomputed in backward by activation
    checkpointing: one chunk's float32 logits are 1,024 × V × 4 bytes (622 MB for V = 151,936),
    and the recomputation holds them, their exp temporary and their gradient at once.
    """
    def score(chunk_hidden, chunk_targets):
        logits = head(chunk_hidden).float()
        if temperature != 1.0:
            logits = logits / temperature
        return logits.gather(1, chunk_targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)

    pieces = [checkpoint(score, hidden[begin:begin + chunk_size], targets[begin:begin + chunk_size],
                         use_reentrant=False) for begin in range(0, hidden.shape[0], chunk_size)]
    return torch.cat(pieces)


def with_previous_head(function, *args, **kwargs):
    """Call `function` with response_logprobs scoring through `position_chunked_logprobs` (the step before the tiles).

    Only the forward needs the swap: the backward recomputes through the checkpoints it recorded.
    """
    import minnat.logprobs

    tiled = minnat.logprobs.score_positions
    minnat.logprobs.score_positions = lambda head, hidden, targets, temperature=1.0, **_: \
        position_chunked_logprobs(head, hidden, targets, temperature=temperature)
    try:
        return function(*args, **kwargs)
    finally:
        minnat.logprobs.score_positions = tiled


# ----------------------------------------------------------------------------- the configurations
def case_list(engines: list[str], budgets: list[float], trl_available: bool) -> list[dict]:
    """Every configuration to measure, in report order."""
    methods = [("full", 1.0)] + [(method, budget) for budget in budgets for method in ("urs", "rpc")]
    cases = []
    if "minnat" in engines:
        cases += [{"engine": "minnat", "method": method, "budget": budget} for method, budget in methods]
    if "trl" in engines and trl_available:
        cases.append({"engine": "trl", "method": "full", "budget": 1.0})
    if "trl+nat" in engines and trl_available:
        cases += [{"engine": "trl+nat", "method": method, "budget": budget} for method, budget in methods]
    if "head" in engines:
        cases += [{"engine": "minnat", "method": "full", "budget": 1.0, "head": "before"},
                  {"engine": "head", "method": "tiled", "budget": 1.0},
                  {"engine": "head", "method": "before", "budget": 1.0}]
    return cases


def case_name(case: dict) -> str:
    if case["engine"] == "head":
        return f"LM head {case['method']}"
    if case["engine"] == "trl":
        return "TRL stock"
    if case.get("head") == "before":
        return "minnat full, LM head before"
    budget = "" if case["method"] == "full" else f" ρ={case['budget']:g}"
    return f"{'minnat' if case['engine'] == 'minnat' else 'TRL+NAT'} {case['method']}{budget}"


def trl_is_available() -> bool:
    try:
        import minnat.integrations.trl  # noqa: F401  (needs trl ≥ 1.16)
    except ImportError:
        return False
    return True


def case_selection(case: dict, batch, seed: int):
    """The selection of a minnat or TRL+NAT row: the same draw for both engines."""
    if case["method"] == "rpc":
        return stratified_rpc_selections(batch, case["budget"], 1, selection_seed(seed, 0))[0]
    return draw_selection(batch, case["method"], case["budget"], selection_seed(seed, 0))


def build_forward(case: dict, model, batch, spec: dict):
    """A function running the forward half of the case's update step -> scalar loss (the caller runs backward)."""
    engine, seed = case["engine"], spec["seed"]
    if engine == "minnat":
        selection = case_selection(case, batch, seed)
        if case.get("head") == "before":
            return lambda: with_previous_head(policy_update_loss, model, batch, selection,
                                              loss_agg="seq-mean-token-mean")
        return lambda: policy_update_loss(model, batch, selection, loss_agg="seq-mean-token-mean")
    if engine == "head":
        generator = torch.Generator().manual_seed(seed)
        positions = int(batch.response_mask.sum())
        head = model.get_output_embeddings()
        hidden = torch.randn(positions, head.weight.shape[1], generator=generator).to(head.weight).requires_grad_()
        targets = torch.randint(0, head.weight.shape[0], (positions,), generator=generator)
        incoming = torch.randn(positions, generator=generator)  # stands for ∂loss/∂log π
        score = score_positions if case["method"] == "tiled" else position_chunked_logprobs
        return lambda: (score(head, hidden, targets) * incoming).sum()
    from transformers import AutoTokenizer

    from minnat.assets import TINY_QWEN3_DIR
    from minnat.integrations.trl import (INCLUSION_KEY, KEEP_KEY, build_trainer_for_loss,
                                         trl_inputs_from_generate_batch)

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_QWEN3_DIR))  # TRL needs one; _compute_loss never uses it
    trainer = build_trainer_for_loss(model, tokenizer, nat_method=None if engine == "trl" else case["method"],
                                     nat_budget=case["budget"], loss_type="grpo", beta=0.0,
                                     max_completion_length=batch.response_length)
    inputs = trl_inputs_from_generate_batch(batch.input_ids, batch.attention_mask, batch.response_mask,
                                            batch.advantages)
    if engine == "trl+nat":
        selection = case_selection(case, batch, seed)
        inputs |= {KEEP_KEY: selection.keep, INCLUSION_KEY: selection.inclusion_prob}
    model.train()
    return lambda: trainer._compute_loss(trainer.model, inputs)


def build_setup(spec: dict, lora_rank: int = 0):
    """The model and the batch every configuration shares (same seeds: byte-identical in every process).

    spec may also set "dtype" (default float32) and "gradient_checkpointing" (default False); with
    lora_rank > 0 the model gets fresh LoRA adapters on every decoder linear layer (`minnat.lora`),
    as `python -m minnat.bench --mode lora` measures."""
    model = build_model(spec["preset"], vocab_size=spec["vocab_size"], dtype=getattr(torch, spec.get("dtype", "float32")),
                        device=spec["device"], gradient_checkpointing=spec.get("gradient_checkpointing", False),
                        seed=spec["seed"])
    if lora_rank:
        from minnat.lora import add_lora

        torch.manual_seed(spec["seed"])
        model = add_lora(model, lora_rank).train()
    batch = make_batch(spec["batch_size"], spec["prompt_length"], spec["response_length"], model.config.vocab_size,
                       batch_seed(spec["seed"], spec["response_length"]), spec["shortest_response"])
    return model, batch.to(spec["device"])


# ----------------------------------------------------------------------------- one configuration, fresh process
def run_step(forward, model, meter=None) -> float:
    """One forward + backward; the gradients are dropped afterwards. Returns the loss."""
    if meter is None:
        loss = forward()
    else:
        with meter:
            loss = forward()
    loss.backward()
    value = float(loss.detach())
    del loss
    zero_gradients(model)
    return value


def measure_in_this_process(spec: dict) -> dict:
    """The memory figures of spec["case"] (the worker side: call it in a fresh process)."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model, batch = build_setup(spec, spec["case"].get("lora_rank", 0))
    forward = build_forward(spec["case"], model, batch, spec)
    run_step(forward, model)  # warm-up: lazy initialisation is not the step's cost
    gc.collect()
    meter = ActivationMeter(model)
    started = time.perf_counter()
    if str(device).startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        loss = run_step(forward, model, meter)
        synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        with PeakRSS() as rss:
            loss = run_step(forward, model, meter)
        start, peak, method = rss.start, rss.peak, f"peak RSS ({rss.method})"
    head = model.get_output_embeddings().weight
    return {"saved_for_backward_bytes": meter.bytes, "peak_above_start_bytes": peak - start, "peak_bytes": peak,
            "start_bytes": start, "memory_method": method, "single_step_seconds": time.perf_counter() - started,
            "loss": loss, "head_weight_gradient_bytes": head.numel() * head.element_size(),
            "response_tokens": int(batch.response_mask.sum()), "batch_fingerprint": batch.to("cpu").fingerprint()}


def measure_in_fresh_process(spec: dict, timeout: float = 1800) -> dict:
    """Run `measure_in_this_process(spec)` in a new Python interpreter and return its figures."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, "-m", "minnat.bench_memory", json.dumps(spec)], env=env,
                               capture_output=True, text=True, timeout=timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"the memory measurement of {case_name(spec['case'])} failed (exit {completed.returncode}):"
                           f"\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ----------------------------------------------------------------------------- time, interleaved in one process
def time_cases(spec: dict, cases: list[dict], repeats: int, log=print) -> dict[int, list[float]]:
    """Seconds per repeat of each case's update step; every repeat visits every case in a fresh random order."""
    torch.set_num_threads(spec["threads"])
    model, batch = build_setup(spec)
    forwards = [build_forward(case, model, batch, spec) for case in cases]
    for forward in forwards:
        run_step(forward, model)  # warm-up
    seconds = {index: [] for index in range(len(cases))}
    for repeat in range(repeats):
        order = list(range(len(cases)))
        random.Random(spec["seed"] * 31 + repeat).shuffle(order)
        for index in order:
            times = {}
            with stopwatch(times, "step", spec["device"]):
                run_step(forwards[index], model)
            seconds[index].append(times["step"])
        log(f"  timing repeat {repeat + 1}/{repeats} done")
    return seconds


# ----------------------------------------------------------------------------- the report
def reference_index(cases: list[dict], case: dict) -> int | None:
    """Head rows compare with "head before"; every other row with stock TRL (or minnat full without TRL)."""
    names = [case_name(other) for other in cases]
    wanted = ["LM head before"] if case["engine"] == "head" else ["TRL stock", "minnat full"]
    for name in wanted:
        if name in names:
            return names.index(name)
    return None


def add_memory_ratios(rows: list[dict], cases: list[dict]) -> None:
    for row, case in zip(rows, cases):
        reference = reference_index(cases, case)
        row["reference"] = None if reference is None else rows[reference]["name"]
        for key in ("saved_for_backward_bytes", "peak_above_start_bytes", "peak_bytes"):
            base = None if reference is None else rows[reference][key]
            row[key.replace("_bytes", "_ratio")] = row[key] / base if base else None
        if case["engine"] == "head":  # what is left once the [V, H] weight gradient (any design returns it) is out
            row["head_transient_bytes"] = row["peak_above_start_bytes"] - row["head_weight_gradient_bytes"]
        per_repeat = row.get("time_seconds_per_repeat")
        if per_repeat and reference is not None:
            paired = [mine / base for mine, base in zip(per_repeat, rows[reference]["time_seconds_per_repeat"])]
            spread = ratio_spread(paired) if rows[reference] is not row else {"reliable": True,
                                                                            "note": "the reference"}
            row["time_ratio"], row["time_ratio_per_repeat"] = statistics.median(paired), paired
            row["time_ratio_reliable"], row["time_ratio_note"] = spread["reliable"], spread["note"]
    heads = {row["name"]: row for row in rows if row["engine"] == "head"}
    if {"LM head tiled", "LM head before"} <= heads.keys():
        tiled, before = heads["LM head tiled"], heads["LM head before"]
        tiled["head_transient_ratio"] = tiled["head_transient_bytes"] / max(before["head_transient_bytes"], 1)


def mib(value) -> str:
    return "–" if value is None else f"{value / 2 ** 20:,.0f} MiB"


def ratio_cell(value, reliable=True) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" + ("" if reliable else " unreliable")


def markdown_report(rows: list[dict], header: str) -> str:
    lines = ["| configuration | saved for backward | peak above start | total peak | "
             "peak above start, ratio | time (s, median) | time ratio [per-repeat range] |", "|" + "---|" * 7]
    for row in rows:
        time_cell = "–" if not row.get("time_seconds_per_repeat") else f"{row['time_seconds']:.2f}"
        spread = "" if row.get("time_ratio_per_repeat") is None else \
            f" [{min(row['time_ratio_per_repeat']):.2f}–{max(row['time_ratio_per_repeat']):.2f}]"
        lines.append(f"| {row['name']} | {mib(row['saved_for_backward_bytes'])} | "
                     f"{mib(row['peak_above_start_bytes'])} | {mib(row['peak_bytes'])} | "
                     f"{ratio_cell(row.get('peak_above_start_ratio'))} vs {row['reference'] or '–'} | {time_cell} | "
                     f"{ratio_cell(row.get('time_ratio'), row.get('time_ratio_reliable', True))}{spread} |")
    memory_method = rows[0]["memory_method"] if rows else "–"
    return "\n".join([
        f"# Update-step memory, side by side\n\n{header}\n",
        f"Memory: {memory_method}, each configuration in a fresh process after one warm-up step; lower is better. "
        "Saved for backward = tensors autograd keeps from the forward; peak above start = the step's own high-water "
        "mark (activations, gradients, temporaries); total peak = the whole process (weights, libraries). "
        "Ratios: head rows against 'LM head before', the others against TRL stock (minnat full without TRL rows). Time: repeats interleaved in "
        "one process; a ratio whose repeats disagree beyond the noise bound is marked unreliable.\n",
        "\n".join(lines), "", "## Against the targets (issue 14)", "",
        *[f"- {line}" for line in target_lines(rows)], "",
        "Notes: TRL's fused LM head (`trl.kernels.ChunkedLogProbFunction`, tiles of 4,096 positions × 32,768 "
        "vocabulary) scores every position of every row on CPU — prompt included — and masks afterwards (it "
        "compacts to the completion positions only on CUDA/XPU with Triton); stock `_compute_loss` also computes "
        "the per-token entropy. minnat's rows score the response positions only, in tiles bounded by "
        "`minnat.logprobs.head_tile_sizes`. The LM-head rows' 'without the weight gradient' figure subtracts the "
        "[V, H] gradient both designs must return. Single-process figures (`single_step_seconds` in "
        "memory.json) are not the timing: only the interleaved repeats are.", ""])


def target_lines(rows: list[dict]) -> list[str]:
    by_name = {row["name"]: row for row in rows}
    lines = []

    def check(label, value, limit, reliable=True, note=""):
        if value is None:
            return
        if not reliable:
            lines.append(f"{label}: {value:.3f} — not a finding ({note})")
        else:
            verdict = "met" if value <= limit + 1e-12 else f"MISSED by {value - limit:.3f}"
            lines.append(f"{label}: {value:.3f} (target ≤ {limit:g}: {verdict})")

    full, rpc = by_name.get("minnat full"), by_name.get("minnat rpc ρ=0.5")
    if full and full.get("reference") == "TRL stock":
        check("minnat full peak above start / TRL's", full["peak_above_start_ratio"], TARGETS["full_peak_vs_trl"])
        check("minnat full time / TRL's", full.get("time_ratio"), TARGETS["full_time_vs_trl"],
              full.get("time_ratio_reliable", True), full.get("time_ratio_note", ""))
    if rpc and rpc.get("reference") == "TRL stock":
        check("minnat RPC ρ=0.5 peak above start / TRL's", rpc["peak_above_start_ratio"], TARGETS["rpc_peak_vs_trl"])
    before_step = by_name.get("minnat full, LM head before")
    if full and before_step:
        lines.append(f"minnat full's step, tiled head / previous head: peak above start "
                     f"{full['peak_above_start_bytes'] / before_step['peak_above_start_bytes']:.3f} "
                     f"({mib(full['peak_above_start_bytes'])} vs {mib(before_step['peak_above_start_bytes'])})")
    tiled = by_name.get("LM head tiled")
    if tiled and tiled.get("head_transient_ratio") is not None:
        check("LM head tiled / before, peak above start without the [V, H] weight gradient",
              tiled["head_transient_ratio"], TARGETS["head_peak_vs_before"])
        ratio = tiled.get("peak_above_start_ratio")  # None when the reference's peak RSS did not rise at all
        lines.append(f"LM head tiled / before, peak above start with the weight gradient: "
                     f"{'not measurable (the previous head showed no rise in peak RSS)' if ratio is None else f'{ratio:.3f}'}"
                     f" (the [V, H] gradient, {mib(tiled['head_weight_gradient_bytes'])}, is the same in both)")
        check("LM head tiled time / before", tiled.get("time_ratio"), TARGETS["head_time_vs_before"],
              tiled.get("time_ratio_reliable", True), tiled.get("time_ratio_note", ""))
    for row in rows:
        if row["engine"] == "trl+nat" and row.get("peak_above_start_ratio") is not None:
            timing = "" if row.get("time_ratio") is None else \
                (f", time {row['time_ratio']:.3f}" if row.get("time_ratio_reliable") else
                 f", time not a finding ({row['time_ratio_note']})")
            lines.append(f"{row['name']} / TRL stock: peak above start {row['peak_above_start_ratio']:.3f}{timing}")
    return lines


def run_memory_benchmark(options, log=print) -> list[dict]:
    """Memory in a fresh process per configuration, then interleaved timing; writes memory.json and memory.md."""
    device = "cuda" if str(options.device).startswith("cuda") else "cpu"
    spec = {"preset": options.preset, "vocab_size": options.vocab_size, "device": device, "seed": options.seed,
            "batch_size": options.batch_size, "prompt_length": options.prompt_length,
            "response_length": options.response_lengths[0], "shortest_response": options.shortest_response,
            "threads": options.threads}
    cases = case_list(options.engines, options.budgets, trl_is_available())
    if any(engine in options.engines for engine in ("trl", "trl+nat")) and not trl_is_available():
        log("trl (≥ 1.16) is not installed: the TRL rows are left out (pip install 'minnat[trl]').")
    rows = []
    for case in cases:
        started = time.perf_counter()
        figures = measure_in_fresh_process(spec | {"case": case})
        rows.append({"name": case_name(case), **case, **figures})
        log(f"  {case_name(case)}: peak above start {mib(figures['peak_above_start_bytes'])} "
            f"({time.perf_counter() - started:.0f} s)")
    if len({row["batch_fingerprint"] for row in rows}) > 1:
        raise RuntimeError("the configurations did not see the same batch; this is a bug in the benchmark.")
    if options.repeats > 0:
        seconds = time_cases(spec, cases, options.repeats, log)
        for index, row in enumerate(rows):
            row["time_seconds_per_repeat"] = seconds[index]
            row["time_seconds"] = statistics.median(seconds[index])
    add_memory_ratios(rows, cases)
    header = describe_memory_run(options, spec)
    out = Path(options.out)
    (out / "memory.json").write_text(json.dumps(rows, indent=1))
    markdown = markdown_report(rows, header)
    (out / "memory.md").write_text(markdown)
    log("\n" + markdown)
    return rows


def describe_memory_run(options, spec: dict) -> str:
    import platform

    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    model_config = build_model_config_text(spec)
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; `{getattr(options, 'command', 'python -m minnat.bench --mode memory')}`; "
            f"{cpu_model() or platform.machine()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, trl {trl_version}.\n\n"
            f"{model_config}, float32 on {spec['device']}; batch {spec['batch_size']} × (prompt "
            f"{spec['prompt_length']} + response L ~ U[{spec['shortest_response']:g}·T, T], T = "
            f"{spec['response_length']}); one update step (forward + backward, μ = 1, seq-mean-token-mean / TRL "
            f"'grpo', β = 0); {options.repeats} interleaved timing repeats; {describe_threads(options)}")


def cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def build_model_config_text(spec: dict) -> str:
    config = bench_config(spec["preset"], spec["vocab_size"])
    return (f"preset {spec['preset']} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
            f"{config.vocab_size:,}, tied head {config.tie_word_embeddings})")


if __name__ == "__main__":  # the worker: one configuration, in this fresh process
    result = measure_in_this_process(json.loads(sys.argv[1]))
    print(RESULT_MARK + json.dumps(result), flush=True)
