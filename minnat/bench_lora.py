"""LoRA and RPC on one GPU, measured and predicted: `python -m minnat.bench --mode lora`.

Full fine-tuning of Qwen3-8B stops at its static memory: in minnat's bf16 trainer every parameter
costs 2 bytes of weight, 2 of gradient and 4 of AdamW moments (8 B; 16 B in mixed precision with
float32 master weights), 66 GB for 8.2B parameters before a single activation. LoRA removes the
gradients and moments of the base weights; what is left to grow with the batch is the
activations — and those are what RPC cuts. This mode shows both, in three parts:

1. **Measured** on the chosen `--preset` (random weights; on CPU the presets that fit): the update
   step (forward + backward, μ = 1) for minnat full / URS ρ / RPC ρ, each with every weight
   trained and with LoRA rank r (`--lora-rank`), each in a fresh process (`minnat.bench_memory`):
   bytes saved for backward, the step's peak above its start (activations + gradients +
   temporaries) and the process's total peak.

2. **Per-token activation bytes** of every Qwen3 size, measured, not guessed: the bytes autograd
   saves for backward (`minnat.measure.ActivationMeter`, the forward alone) on the size's real
   widths (H, I, heads) with ONE and with TWO decoder layers and a small vocabulary:

       a_layer = bytes(2 layers) − bytes(1 layer)       per token given to the model, per layer
       a_rest  = bytes(1 layer) − a_layer               embedding, final norm, the tiled LM head's input

   in `--predict-dtype` (bf16, what a GPU run uses) on `--device` (on a GPU: its own attention
   kernels' saved tensors), with and without LoRA (its float32 adapters
   save float32 copies of their inputs) and with and without gradient checkpointing (which saves
   each layer's input and recomputes the layer in backward). Every layer of a size is the same,
   so n_ℓ·a_layer + a_rest is the full model's per-token cost.

3. **Predicted GPU budget** for Qwen3-0.6B … 8B, one backward pass of R rows (`--predict-rows`,
   the trainer's `--update-micro-batch-rows`) of prompt P + response L tokens
   (`--predict-prompt-length`, `--predict-response-length`; every row full length, the worst case):

       weights            2 B × N (bf16)
       training states    full: (2 gradient + 4 AdamW) B × N;  LoRA: 16 B × N_adapter (float32 A, B,
                          their gradients and both moments); N_adapter = r·Σ(d_in + d_out) over the
                          decoder's linear layers (`adapter_parameters`, checked against peft)
       activations        tokens × (n_ℓ·a_layer + a_rest), tokens = R·(P + L) for full-token GRPO and
                          R·(P + ρL) for RPC (the prompt is never cut); with gradient checkpointing
                          + tokens × a_layer without checkpointing (the one layer recomputed in backward)

   and which fit one 80 GB or one 141 GB GPU with 10% headroom (CUDA context, the allocator's
   fragmentation, backward temporaries the saved-tensor count does not see). Not included: the
   rollout's KV cache (generation runs before the update and frees it), a full-model KL
   reference copy (+2 B × N with `--kl-coef` > 0 when every weight trains; LoRA needs none).
   On the measured preset the same arithmetic is printed next to the measured saved-for-backward
   bytes, so the reader sees how far to trust it; `bench/run_gpu.sh` (LoRA rows) measures it on a GPU.

Outputs in --out: lora.json and lora.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from minnat.bench_common import batch_seed, bench_config, describe_threads, make_batch, policy_update_loss
from minnat.bench_memory import case_name, case_selection, measure_in_fresh_process, mib
from minnat.logprobs import LogprobStats, planned_tokens_to_model
from minnat.measure import ActivationMeter
from minnat.models import QWEN3_ARCHITECTURES, build_random_model, count_parameters, preset_config, resolve_device
from minnat.nat import select_tokens

GIB, GB = 2 ** 30, 10 ** 9
GPUS_GB = (80, 141)          # an 80 GB A100/H100 and a 141 GB H200
HEADROOM = 0.9               # a budget "fits" when it is at most 90% of the card
PREDICT_PRESETS = tuple(QWEN3_ARCHITECTURES)
FULL_STATE_BYTES = 2 + 4     # bf16 gradient + two bf16 AdamW moments per trained weight (minnat's trainer)
ADAPTER_BYTES = 4 * 4        # float32 adapter weight, gradient and two moments


# ----------------------------------------------------------------------------- parameter counts
def adapter_parameters(config, rank: int) -> int:
    """N_adapter of LoRA rank r on every decoder linear layer (peft's "all-linear"): r·(d_in + d_out) each."""
    hidden, inner, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    queries, keys = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = [(hidden, queries), (hidden, keys), (hidden, keys), (queries, hidden),       # q, k, v, o
              (hidden, inner), (hidden, inner), (inner, hidden)]                          # gate, up, down
    return rank * config.num_hidden_layers * sum(d_in + d_out for d_in, d_out in shapes)


def model_parameters(config) -> int:
    """N, counted on PyTorch's meta device (shapes only, nothing allocated)."""
    return count_parameters(build_random_model(replace_config(config), dtype="bfloat16", device="meta"))


def replace_config(config, **changes):
    """A copy of a transformers config with some fields changed (a new depth drops the per-layer type list)."""
    settings = config.to_dict() | changes
    if "num_hidden_layers" in changes:
        settings.pop("layer_types", None)
    return type(config).from_dict(settings)


# ----------------------------------------------------------------------------- per-token activation bytes
def saved_bytes_per_token(config, *, dtype: torch.dtype, lora_rank: int, gradient_checkpointing: bool,
                          rows: int = 2, length: int = 48, device: str = "cpu") -> float:
    """Bytes saved for backward per token given to the model, one update's forward on `config` (seeded random weights)."""
    model = build_random_model(replace_config(config), dtype=dtype, device=device,
                               gradient_checkpointing=gradient_checkpointing).train()
    if lora_rank:
        from minnat.lora import add_lora

        model = add_lora(model, lora_rank).train()
    batch = make_batch(rows, 8, length, config.vocab_size, seed=0, shortest_fraction=1.0)
    stats = LogprobStats()
    with ActivationMeter(model) as meter:
        batch = batch.to(device)
        loss = policy_update_loss(model, batch, select_tokens(batch.response_mask, "full"), stats=stats)
    del loss, model
    return meter.bytes / stats.tokens_to_model


def layer_activation_bytes(config, *, dtype: torch.dtype, lora_rank: int, gradient_checkpointing: bool,
                           device: str = "cpu") -> dict:
    """{"layer": a_layer, "rest": a_rest}: bytes per token of one decoder layer and of everything else."""
    narrow = replace_config(config, vocab_size=512, max_position_embeddings=4096)  # the head's tiles are transient
    one, two = (saved_bytes_per_token(replace_config(narrow, num_hidden_layers=layers), dtype=dtype,
                                      lora_rank=lora_rank, gradient_checkpointing=gradient_checkpointing,
                                      device=device)
                for layers in (1, 2))
    return {"layer": two - one, "rest": one - (two - one)}


def activation_profile(config, *, dtype: torch.dtype, lora_rank: int, device: str = "cpu") -> dict:
    """The four per-token profiles of one architecture: {(lora, checkpointing): {"layer", "rest"}}, as a flat dict."""
    profile = {}
    for lora_on in (False, True):
        for checkpointing in (False, True):
            key = f"{'lora' if lora_on else 'full_ft'}{'_gc' if checkpointing else ''}"
            profile[key] = layer_activation_bytes(config, dtype=dtype, lora_rank=lora_rank if lora_on else 0,
                                                  gradient_checkpointing=checkpointing, device=device)
    return profile


def activation_bytes(profile: dict, training: str, checkpointing: bool, layers: int, tokens: float) -> float:
    """Predicted bytes held by one backward pass over `tokens` tokens (see the module docstring)."""
    saved = profile[training + ("_gc" if checkpointing else "")]
    total = tokens * (layers * saved["layer"] + saved["rest"])
    if checkpointing:  # the layer being recomputed in backward holds its full activations once
        total += tokens * profile[training]["layer"]
    return total


# ----------------------------------------------------------------------------- the prediction
def predict_budget(preset: str, profile: dict, *, lora_rank: int, rows: int, prompt_length: int,
                   response_length: int, budget: float) -> list[dict]:
    """The GPU budget rows of one Qwen3 size: full fine-tuning and LoRA, full-token GRPO and RPC ρ."""
    config = preset_config(preset)
    parameters = model_parameters(config)
    adapters = adapter_parameters(config, lora_rank)
    tokens = {"full": rows * (prompt_length + response_length), "rpc": rows * (prompt_length + budget * response_length)}
    result = []
    for training, states in (("full_ft", FULL_STATE_BYTES * parameters), ("lora", ADAPTER_BYTES * adapters)):
        row = {"preset": preset, "training": training, "parameters": parameters,
               "adapter_parameters": adapters if training == "lora" else 0, "weights_bytes": 2 * parameters,
               "states_bytes": states, "rows": rows, "prompt_length": prompt_length,
               "response_length": response_length, "budget": budget}
        for method, count in tokens.items():
            for checkpointing in (False, True):
                key = f"{method}{'_gc' if checkpointing else ''}"
                held = activation_bytes(profile, training, checkpointing, config.num_hidden_layers, count)
                row[f"activation_bytes_{key}"] = held
                row[f"total_bytes_{key}"] = row["weights_bytes"] + states + held
        result.append(row)
    return result


def fits(total_bytes: float) -> str:
    for size in GPUS_GB:
        if total_bytes <= HEADROOM * size * GB:
            return f"fits {size} GB"
    return f"> {GPUS_GB[-1]} GB"


# ----------------------------------------------------------------------------- the measured part
def measure_preset(options, log=print) -> list[dict]:
    """Full / URS / RPC × (every weight, LoRA r) on options.preset, each in a fresh process."""
    device = "cuda" if str(options.device).startswith("cuda") else "cpu"
    dtype = "bfloat16" if device == "cuda" and options.dtype == "auto" else \
        ("float32" if options.dtype == "auto" else options.dtype)
    spec = {"preset": options.preset, "vocab_size": options.vocab_size, "device": device, "seed": options.seed,
            "batch_size": options.batch_size, "prompt_length": options.prompt_length,
            "response_length": options.response_lengths[0], "shortest_response": options.shortest_response,
            "threads": options.threads, "dtype": dtype, "gradient_checkpointing": options.gradient_checkpointing}
    methods = [("full", 1.0)] + [(method, budget) for budget in options.budgets for method in ("urs", "rpc")]
    batch = make_batch(spec["batch_size"], spec["prompt_length"], spec["response_length"],  # build_setup's batch
                       bench_config(options.preset, options.vocab_size).vocab_size,
                       batch_seed(spec["seed"], spec["response_length"]), spec["shortest_response"])
    rows = []
    for lora_rank in (0, options.lora_rank):
        for method, budget in methods:
            case = {"engine": "minnat", "method": method, "budget": budget, "lora_rank": lora_rank}
            started = time.perf_counter()
            figures = measure_in_fresh_process(spec | {"case": case})
            selection = case_selection(case, batch, spec["seed"])
            tokens = planned_tokens_to_model(batch.attention_mask, selection.keep)
            name = case_name(case) + (f", LoRA r={lora_rank}" if lora_rank else ", every weight")
            rows.append({"name": name, **case, **figures, "tokens_to_model": tokens, "dtype": dtype, "device": device})
            log(f"  {name}: saved for backward {mib(figures['saved_for_backward_bytes'])}, peak above start "
                f"{mib(figures['peak_above_start_bytes'])} ({time.perf_counter() - started:.0f} s)")
    return rows


def add_measured_prediction(rows: list[dict], options) -> None:
    """Beside each measured row: the per-token arithmetic of part 2 on the same preset, dtype and tokens."""
    config = bench_config(options.preset, options.vocab_size)
    dtype = getattr(torch, rows[0]["dtype"])
    profile = {}
    for lora_rank in sorted({row["lora_rank"] for row in rows}):
        profile[lora_rank] = layer_activation_bytes(config, dtype=dtype, lora_rank=lora_rank,
                                                    gradient_checkpointing=options.gradient_checkpointing,
                                                    device=rows[0]["device"])
    for row in rows:
        saved = profile[row["lora_rank"]]
        row["predicted_saved_bytes"] = row["tokens_to_model"] * (config.num_hidden_layers * saved["layer"] +
                                                                 saved["rest"])
        row["predicted_over_measured"] = row["predicted_saved_bytes"] / max(row["saved_for_backward_bytes"], 1)


# ----------------------------------------------------------------------------- the report
def gb(value) -> str:
    return f"{value / GB:,.1f} GB"


def markdown_report(measured: list[dict], profiles: dict, budget_rows: list[dict], header: str, options) -> str:
    lines = [f"# LoRA and RPC: update-step memory, measured and predicted\n\n{header}\n",
             f"## 1. Measured: preset {options.preset}, one update step, each configuration in a fresh process\n",
             "| configuration | tokens to the model | saved for backward | predicted (part 2's arithmetic) | "
             "peak above start | total peak |", "|---|---|---|---|---|---|"]
    for row in measured:
        lines.append(f"| {row['name']} | {row['tokens_to_model']:,} | {mib(row['saved_for_backward_bytes'])} | "
                     f"{mib(row.get('predicted_saved_bytes'))} ({row.get('predicted_over_measured', float('nan')):.2f}×) | "
                     f"{mib(row['peak_above_start_bytes'])} | {mib(row['peak_bytes'])} |")
    lines += ["", "Peak above start includes the weights' gradients when every weight trains (LoRA: the adapters' "
              "only); no optimizer step runs, so AdamW's moments are not in it (part 3 adds them).", "",
              f"## 2. Bytes saved for backward per token, measured on each size's widths "
              f"({options.predict_dtype}, 1- and 2-layer bodies)\n",
              "| preset | every weight: per layer | + rest | LoRA: per layer | + rest | every weight, checkpointed: "
              "per layer | LoRA, checkpointed: per layer |", "|---|---|---|---|---|---|---|"]
    for preset, profile in profiles.items():
        lines.append(f"| {preset} | {profile['full_ft']['layer'] / 1024:,.1f} KiB | {profile['full_ft']['rest'] / 1024:,.1f}"
                     f" KiB | {profile['lora']['layer'] / 1024:,.1f} KiB | {profile['lora']['rest'] / 1024:,.1f} KiB | "
                     f"{profile['full_ft_gc']['layer'] / 1024:,.1f} KiB | {profile['lora_gc']['layer'] / 1024:,.1f} KiB |")
    first = budget_rows[0] if budget_rows else {}
    shape = (f"{first.get('rows')} rows × (prompt {first.get('prompt_length')} + response {first.get('response_length')})"
             f" per backward pass, RPC at ρ = {first.get('budget')}")
    lines += ["", f"## 3. Predicted GPU budget: bf16 weights, {shape}; LoRA rank {options.lora_rank} on every "
              "decoder linear layer\n",
              "| preset | training | weights | training states | activations full / RPC | total full / RPC | "
              "with checkpointing: activations full / RPC | total full / RPC |", "|---|---|---|---|---|---|---|---|"]
    for row in budget_rows:
        training = "every weight" if row["training"] == "full_ft" else f"LoRA ({row['adapter_parameters'] / 1e6:.1f}M)"
        cells = []
        for suffix in ("", "_gc"):
            cells.append(f"{gb(row['activation_bytes_full' + suffix])} / {gb(row['activation_bytes_rpc' + suffix])}")
            cells.append(f"{gb(row['total_bytes_full' + suffix])} ({fits(row['total_bytes_full' + suffix])}) / "
                         f"{gb(row['total_bytes_rpc' + suffix])} ({fits(row['total_bytes_rpc' + suffix])})")
        lines.append(f"| {row['preset']} ({row['parameters'] / 1e9:.2f}B) | {training} | {gb(row['weights_bytes'])} | "
                     f"{gb(row['states_bytes'])} | " + " | ".join(cells) + " |")
    lines += ["", f"'fits N GB': the total is at most {HEADROOM:.0%} of the card. Training states: every weight = "
              f"bf16 gradient + two bf16 AdamW moments ({FULL_STATE_BYTES} B per parameter, minnat's trainer; mixed "
              f"precision with float32 master weights needs 16 B); LoRA = float32 adapters, gradients and moments "
              f"({ADAPTER_BYTES} B per adapter parameter). Not included: the rollout's KV cache (freed before the "
              "update) and, when every weight trains with --kl-coef > 0, a second bf16 copy for the reference "
              "(LoRA's reference is the base with its adapters off). A prediction, from saved-tensor counts on "
              "CPU: `bash bench/run_gpu.sh` measures the LoRA rows on a GPU.", ""]
    return "\n".join(lines)


def run_lora_benchmark(options, log=print) -> list[dict]:
    """Parts 1–3 of the module docstring; writes lora.json and lora.md to options.out."""
    out = Path(options.out)
    measured = []
    if not options.skip_measured:
        log(f"part 1: measuring preset {options.preset}, every weight and LoRA r={options.lora_rank}")
        measured = measure_preset(options, log)
        add_measured_prediction(measured, options)
    dtype = getattr(torch, options.predict_dtype)
    profiles, budget_rows = {}, []
    for preset in options.predict_presets:
        started = time.perf_counter()
        profiles[preset] = activation_profile(preset_config(preset), dtype=dtype, lora_rank=options.lora_rank,
                                              device=resolve_device(options.device))
        budget_rows += predict_budget(preset, profiles[preset], lora_rank=options.lora_rank,
                                      rows=options.predict_rows, prompt_length=options.predict_prompt_length,
                                      response_length=options.predict_response_length, budget=options.budgets[0])
        log(f"part 2: {preset} per-token activation bytes measured ({time.perf_counter() - started:.0f} s)")
    header = (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; `{getattr(options, 'command', 'python -m minnat.bench --mode lora')}`"
              f"; torch {torch.__version__}; {describe_threads(options)}")
    result = {"measured": measured, "per_token_activation_bytes": profiles, "predicted_budget": budget_rows,
              "settings": {"lora_rank": options.lora_rank, "predict_dtype": options.predict_dtype,
                           "headroom": HEADROOM, "gpus_gb": GPUS_GB}}
    (out / "lora.json").write_text(json.dumps(result, indent=1))
    markdown = markdown_report(measured, profiles, budget_rows, header, options)
    (out / "lora.md").write_text(markdown)
    log("\n" + markdown)
    return budget_rows
