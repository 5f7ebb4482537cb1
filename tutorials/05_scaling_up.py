# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 5 · Scaling up: Qwen3-0.6B on GSM8K, and NAT in your own trainer
#
# Everything so far ran on a 0.4M-parameter model. The code path for a real model is the
# same; what changes is the size of the numbers. This tutorial covers
#
# 1. what changes between the tiny model and **Qwen3-0.6B** (read from the configs — no
#    weights are allocated or downloaded);
# 2. the **exact commands** to train Qwen3-0.6B on GSM8K with full GRPO and with NAT on one
#    GPU, checked against the trainer's real flags;
# 3. the **memory and time** to expect, from the committed GPU benchmark when it is there, and
#    from a small measurement on this machine;
# 4. a **CPU-sized rehearsal** of the same command: the GSM8K code path end to end, offline;
# 5. how to carry the estimator into an **existing trainer** (TRL- or verl-style): a generic
#    `compute_loss` with the three lines NAT adds, checked against `minnat.grpo.policy_loss`;
# 6. **Qwen3-4B and 8B on one GPU with LoRA**: the commands, and the memory predicted for each
#    size with and without RPC, from `python -m minnat.bench --mode lora`.
#
# On a machine without a GPU or network (like the CI that executes this notebook) every step
# runs in its CPU-sized form.

# %%
import contextlib
import io
import json
import pathlib
import shlex
import statistics
import sys
import tempfile
import time

# Make `import minnat` work when the notebook is opened from tutorials/ without installing.
ROOT = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "minnat" / "nat.py").is_file())
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
import torch
from transformers import Qwen3ForCausalLM

from minnat.grpo import group_advantages, policy_loss
from minnat.logprobs import LogprobStats, response_logprobs
from minnat.measure import ActivationMeter
from minnat.models import QWEN3_VOCAB_SIZE, build_preset_model, count_parameters, load_model, preset_config
from minnat.nat import select_tokens
from minnat.rollout import generate
from minnat.tasks import get_task, write_gsm8k_fixture
from minnat.train import main, parse_args

torch.set_num_threads(1)  # small CPU workloads: one thread is fastest and leaves the other cores free
WORK = pathlib.Path(tempfile.mkdtemp(prefix="minnat-tutorial5-"))   # fixture and run folders go here
HAS_GPU = torch.cuda.is_available()
print("GPU:", torch.cuda.get_device_name(0) if HAS_GPU else "none — running the CPU-sized version of every step")

# %% [markdown]
# ## 1. From 0.4M to 0.6B parameters
#
# `minnat.models.preset_config` holds the public architecture of each Qwen3 size. A
# decoder-only Qwen3 has, with hidden size $H$, $n_h$ query heads and $n_{kv}$ key/value heads of
# dimension $d$, MLP width $I$, $n_\ell$ layers and vocabulary $V$:
#
# $$ \underbrace{V H}_{\text{embedding}} + n_\ell \Big( \underbrace{H d\,(2 n_h + 2 n_{kv})}_{q,k,v,o} + \underbrace{2d}_{q/k\text{ norms}}
#    + \underbrace{3 H I}_{\text{MLP}} + \underbrace{2H}_{\text{norms}} \Big) + H \;\big(+\, V H \text{ if the LM head is not tied}\big). $$
#
# We check the formula against a model built on PyTorch's `meta` device, which has shapes
# but no storage: nothing is allocated, nothing is downloaded.

# %%
def qwen3_parameters(config) -> int:
    H, I, d = config.hidden_size, config.intermediate_size, config.head_dim
    per_layer = H * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads) + 2 * d + 3 * H * I + 2 * H
    head = 0 if config.tie_word_embeddings else config.vocab_size * H
    return config.vocab_size * H + config.num_hidden_layers * per_layer + H + head


def head_share(config) -> float:
    """The LM head's share of the matmul FLOPs per token (≈ 2 × the weights a token is multiplied by;
    the embedding lookup is free, attention's length-dependent part is left out)."""
    head = config.vocab_size * config.hidden_size
    multiplied = qwen3_parameters(config) - (0 if config.tie_word_embeddings else head)
    return head / multiplied


head_shares = {}
print(f"{'preset':12s}{'layers':>8s}{'hidden':>8s}{'vocab':>9s}{'parameters':>16s}{'LM-head share of FLOPs/token':>31s}")
for preset in ("tiny", "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"):
    config = preset_config(preset)
    head_shares[preset] = head_share(config)
    print(f"{preset:12s}{config.num_hidden_layers:8d}{config.hidden_size:8d}{config.vocab_size:9d}"
          f"{qwen3_parameters(config):16,d}{head_shares[preset]:31.0%}")

meta_model = build_preset_model("qwen3-0.6b", device="meta", dtype="bfloat16")   # shapes only, no memory
assert count_parameters(meta_model) == qwen3_parameters(preset_config("qwen3-0.6b")) == 596_049_920
assert count_parameters(load_model("embedded")[0]) == qwen3_parameters(preset_config("tiny"))
del meta_model

# %% [markdown]
# Two things matter for NAT at this scale:
#
# * the **vocabulary** of 151 936 tokens: the LM head and log-softmax cost
#   $H \times V$ per scored position — the part URS saves on dropped tokens. For Qwen3-0.6B that
#   is about a quarter of the FLOPs per token (last column), so URS at $\rho = 1/2$ can save at
#   most about an eighth of the update's compute;
# * the **length** of GSM8K answers (hundreds of tokens, like the embedded long-addition task's ~250):
#   the transformer body's cost grows with prompt + response length — the part only RPC cuts.
#
# ## 2. The commands, on one GPU
#
# On a machine with a CUDA GPU and network access (first `pip install` the CUDA build of torch,
# then `pip install -r requirements.txt`):
#
# ```bash
# huggingface-cli download Qwen/Qwen3-0.6B   # once: ~1.2 GB of bf16 weights (the trainer also fetches it)
#
# # full-token GRPO, the baseline
# python -m minnat.train --model Qwen/Qwen3-0.6B --task gsm8k --device cuda \
#     --method full --steps 200 --batch-size 64 --group-size 8 --max-new-tokens 512 \
#     --learning-rate 1e-6 --warmup-steps 10 --update-micro-batch-rows 16 \
#     --eval-every 25 --num-eval 200 --eval-batch-size 100 --out runs/qwen3-0.6b-gsm8k-full
#
# # NAT: RPC at ρ = 0.5 — the same run, half the response tokens in the update
# python -m minnat.train --model Qwen/Qwen3-0.6B --task gsm8k --device cuda \
#     --method rpc --budget 0.5 --steps 200 --batch-size 64 --group-size 8 --max-new-tokens 512 \
#     --learning-rate 1e-6 --warmup-steps 10 --update-micro-batch-rows 16 \
#     --eval-every 25 --num-eval 200 --eval-batch-size 100 --out runs/qwen3-0.6b-gsm8k-rpc
# ```
#
# Notes on the flags: `--batch-size 64 --group-size 8` is 8 questions × 8 answers per step;
# `--update-micro-batch-rows 16` accumulates gradients over 4 chunks of 16 responses (exactly
# the same loss — `aggregation_share` rescales each chunk); GRPO on a 0.6B chat model wants a
# small learning rate (1e-6); `--dtype auto` is bf16 on CUDA; add `--gradient-checkpointing` for
# larger models, `--data-path` for a local copy of GSM8K (JSONL, GSM8K's format), and
# `--mask-truncated` to leave answers cut off at `--max-new-tokens` out of the loss.
#
# The cell below checks that every flag in those commands exists — in
# `python -m minnat.train --help` and in the parser the trainer really uses — and that the
# resulting configurations validate. If the CLI changes, this notebook fails in CI.

# %%
GPU_COMMANDS = {
    method: ["--model", "Qwen/Qwen3-0.6B", "--task", "gsm8k", "--device", "cuda", "--method", method,
             *(["--budget", "0.5"] if method == "rpc" else []),
             "--steps", "200", "--batch-size", "64", "--group-size", "8", "--max-new-tokens", "512",
             "--learning-rate", "1e-6", "--warmup-steps", "10", "--update-micro-batch-rows", "16",
             "--eval-every", "25", "--num-eval", "200", "--eval-batch-size", "100",
             "--out", f"runs/qwen3-0.6b-gsm8k-{method}"]
    for method in ("full", "rpc")
}
# `python -m minnat.train --help`, printed by the very parser the command line uses (in-process: no start-up cost).
with contextlib.redirect_stdout(io.StringIO()) as captured, contextlib.suppress(SystemExit):
    parse_args(["--help"])
help_text = captured.getvalue()
assert help_text.startswith("usage: python -m minnat.train")
for method, argv in GPU_COMMANDS.items():
    flags = [arg for arg in argv if arg.startswith("--")]
    missing = [flag for flag in flags if flag not in help_text]
    assert not missing, f"flags not in `python -m minnat.train --help`: {missing}"
    config = parse_args(argv)      # the trainer's own parser; validate() checks the values
    config.validate()
    assert (config.model, config.task, config.device, config.method) == ("Qwen/Qwen3-0.6B", "gsm8k", "cuda", method)
    print("python -m minnat.train " + shlex.join(argv))

# %% [markdown]
# ## 3. What to expect: memory and time
#
# **Static memory** is arithmetic. With bf16 weights (the trainer's default on CUDA) and
# PyTorch's AdamW, whose two moment buffers take the parameters' dtype, a 0.6B model needs
# weights + gradients + 2 moments = 4 copies × 2 bytes per parameter, before activations.
# A KL term (`--kl-coef > 0`) adds a frozen bf16 reference copy.

# %%
parameters = qwen3_parameters(preset_config("qwen3-0.6b"))
static = {"weights (bf16)": 2 * parameters, "gradients (bf16)": 2 * parameters, "AdamW moments (2 × bf16)": 4 * parameters}
for name, size in static.items():
    print(f"{name:26s} {size / 2**30:6.2f} GiB")
print(f"{'total before activations':26s} {sum(static.values()) / 2**30:6.2f} GiB   (+ {2 * parameters / 2**30:.2f} GiB "
      "for a reference model when --kl-coef > 0)")

# %% [markdown]
# **Activations and time** depend on the hardware and the lengths, so they are measured.
# `python -m minnat.bench` times the update step (forward + backward of the GRPO loss) for
# full, URS and RPC on the same batch and reports the ratios to full; `bench/run_gpu.sh` runs
# it for the Qwen3 sizes on one GPU. If its results are committed under `bench/results/`,
# the next cell quotes them.

# %%
def load_bench_results(root: pathlib.Path, filename: str) -> dict:
    """{folder: rows} for every committed benchmark file of that name under bench/results/."""
    results = {}
    for path in sorted(root.glob(f"**/{filename}")):
        try:
            rows = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rows, list) and rows and all(isinstance(row, dict) and "method" in row for row in rows):
            results[str(path.parent.relative_to(root))] = rows
    return results


def show(value, scale=1.0, unit="", digits=2):
    return "–" if value is None else f"{value / scale:.{digits}f}{unit}"


results_root = ROOT / "bench" / "results"
update_results = load_bench_results(results_root, "bench.json")
step_results = load_bench_results(results_root, "step.json")
if not update_results:
    print("No benchmark results are committed under bench/results/: see the measurement on this machine below.")
for folder, bench_rows in update_results.items():
    first = bench_rows[0]
    print(f"\nbench/results/{folder}: preset {first.get('preset', '?')}, {first.get('device', '?')}, "
          f"{first.get('dtype', '?')}, {first.get('batch_size')} rows × (prompt {first.get('prompt_length')} + "
          f"response ≤ {first.get('response_length')}) tokens")
    print(f"  {'method':6s}{'ρ':>5s}{'T':>6s}{'time':>10s}{'× full':>8s}{'peak memory':>13s}{'× full':>8s}"
          f"{'activations × full':>20s}{'tokens × full':>15s}")
    for row in bench_rows:
        print(f"  {row['method']:6s}{row['budget']:5.2f}{row.get('response_length', 0):6d}"
              f"{show(row.get('time_seconds'), unit=' s', digits=3):>10s}{show(row.get('time_ratio')):>8s}"
              f"{show(row.get('peak_memory_bytes'), 2**30, ' GiB', 1):>13s}{show(row.get('peak_memory_ratio')):>8s}"
              f"{show(row.get('activation_ratio')):>20s}{show(row.get('tokens_to_model_ratio')):>15s}")
for folder, step_rows in step_results.items():
    print(f"\nbench/results/{folder} (whole training steps: rollout + update):")
    for row in step_rows:
        print(f"  {row['method']:6s} ρ={row['budget']:<5g} rollout {show(row.get('rollout_seconds'), unit=' s')}, "
              f"update {show(row.get('update_seconds'), unit=' s')} ({show(row.get('update_share'), 0.01, '%', 0)} "
              "of the step)")

# %% [markdown]
# **The same measurement on this machine, CPU-sized.** A Qwen3 with the embedded model's tiny
# body but **Qwen's 151 936-token vocabulary**, on a GSM8K-shaped batch (a short prompt,
# longer responses). All responses have the same length and RPC runs one pass per row
# (`max_rows_per_micro_batch=1`), so that padding plays no role in the comparison. For each method at ρ = 0.5 we measure what the update step gives the
# transformer, the positions that go through the LM head, the activation memory saved for
# backward, and the wall time (median of 3). The ratios, not the absolute numbers, are what
# carry over to a GPU.

# %%
config = preset_config("tiny")
config.vocab_size = QWEN3_VOCAB_SIZE
torch.manual_seed(0)
wide_vocab_model = Qwen3ForCausalLM(config).train()
B, P, L = 4, 16, 64
generator = torch.Generator().manual_seed(0)
input_ids = torch.randint(0, QWEN3_VOCAB_SIZE, (B, P + L), generator=generator)
attention_mask = torch.ones_like(input_ids)
response_mask = torch.ones(B, L, dtype=torch.bool)
advantages = torch.randn(B, generator=generator)


def update_step(selection):
    stats, meter = LogprobStats(), ActivationMeter(wide_vocab_model)
    start = time.perf_counter()
    with meter:
        logprobs = response_logprobs(wide_vocab_model, input_ids, attention_mask, response_mask, selection,
                                     stats=stats, max_rows_per_micro_batch=1)   # RPC: one pass per row, no padding
        loss = policy_loss(logprobs, logprobs.detach(), advantages, response_mask,
                           weights=None if selection is None else selection.weights)
    loss.backward()
    wide_vocab_model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, stats, meter.bytes


measured = {}
selections = {"full": None, "urs": select_tokens(response_mask, "urs", 0.5, generator),
              "rpc": select_tokens(response_mask, "rpc", 0.5, generator)}
update_step(None)  # warm-up
runs = {method: [] for method in selections}
for repeat in range(3):                       # interleaved, so that a busy moment hits every method alike
    for method, selection in selections.items():
        runs[method].append(update_step(selection))
for method, results in runs.items():
    measured[method] = {"time": statistics.median(r[0] for r in results), "tokens": results[0][1].tokens_to_model,
                        "head positions": results[0][1].positions_scored, "activation": results[0][2]}
print(f"{'method':8s}{'kept':>6s}{'tokens to model':>17s}{'LM-head positions':>19s}{'activation':>12s}{'time':>9s}")
for method, values in measured.items():
    kept = 1.0 if selections[method] is None else selections[method].kept_fraction
    print(f"{method:8s}{kept:6.0%}{values['tokens']:17d}{values['head positions']:19d}"
          f"{values['activation'] / 1e6:10.1f}MB{values['time']:8.2f}s")
ratios = {method: {key: values[key] / measured["full"][key] for key in values} for method, values in measured.items()}

fig, axis = plt.subplots(figsize=(8, 3.4))
keys = ["tokens", "head positions", "activation", "time"]
for offset, method in ((-0.2, "urs"), (0.2, "rpc")):
    axis.bar([i + offset for i in range(len(keys))], [ratios[method][k] for k in keys], width=0.4, label=method.upper())
axis.axhline(1, color="k", lw=0.8)
axis.axhline(0.5, color="grey", ls=":", lw=0.8)
axis.set_xticks(range(len(keys)), ["tokens to model", "LM-head positions", "activation memory", "wall time"])
axis.set(ylabel="ratio to full", title="update step at ρ = 0.5, tiny body + Qwen3 vocabulary (CPU)")
axis.legend()
fig.tight_layout()
plt.show()

# %%
for method in ("urs", "rpc"):
    kept = selections[method].keep.sum().item() / response_mask.sum().item()
    assert ratios[method]["head positions"] == kept, "the LM head runs exactly at the kept tokens"
# URS still runs the body over (nearly) every token: only columns after a row's last kept token go
assert ratios["urs"]["tokens"] >= 0.9, "URS gives the transformer (nearly) every token"
assert ratios["rpc"]["tokens"] < 0.8, "RPC gives it prompt + prefix only"
assert ratios["rpc"]["activation"] < 0.8

# %% [markdown]
# Reading it: with a 151 936-token vocabulary the LM head is a large share of a small body's
# step, so URS's savings in LM-head positions can show in wall time here (wall time on a shared
# CPU is noisy, and every extra micro-batch pass has a fixed cost). On Qwen3-0.6B, whose
# 28 layers do three quarters of the work, URS saves much less, and RPC — which also shortens the
# body's forward and backward and the activations it holds — is the one that matters. The
# benchmark results above (when present) have measured ratios, next to the paper's headline
# numbers as `minnat.bench` quotes them:

# %%
from minnat.bench import PAPER

print(PAPER)
assert 0.2 < head_shares["qwen3-0.6b"] < 0.3 and head_shares["tiny"] < 0.05

# %% [markdown]
# **Where the time goes in a full step.** A training step is rollout + update. At this
# scale, with Hugging Face `generate`, sampling 64 answers of up to 512 tokens typically takes a large
# share of the step, and NAT does not touch it: it makes the *update* cheaper. Every
# `metrics.jsonl` line has `rollout_seconds` and `update_seconds`, so you can read the split for
# your own runs.
#
# ## 4. The CPU-sized rehearsal: the same command, offline
#
# Without a GPU or network, the same command runs with three substitutions: the embedded
# model instead of `Qwen/Qwen3-0.6B`, a small offline GSM8K-format file from
# `minnat.tasks.write_gsm8k_fixture` instead of the hub dataset, and `--device cpu` with tiny
# sizes. It exercises the whole GSM8K path — prompt building, sampling, `math_verify` rewards,
# the NAT update, evaluation, checkpointing. (The embedded model has never seen a word
# problem, so its reward is 0; the point is the plumbing.)

# %%
fixture = write_gsm8k_fixture(WORK / "gsm8k", num_train=16, num_eval=4)
print(fixture, sorted(p.name for p in fixture.iterdir()))
print(json.loads((fixture / "train.jsonl").read_text().splitlines()[0]))
task = get_task("gsm8k", data_path=str(fixture))
print(task, "| reward of a right answer:", task.reward(task.train_examples[0].solution, task.train_examples[0]))
assert task.reward(task.train_examples[0].solution, task.train_examples[0]) == 1.0

cpu_argv = ["--model", "embedded", "--task", "gsm8k", "--data-path", str(fixture), "--device", "cpu",
            "--method", "rpc", "--budget", "0.5", "--steps", "2", "--batch-size", "8", "--group-size", "4",
            "--max-new-tokens", "32", "--learning-rate", "1e-6", "--warmup-steps", "1",
            "--eval-every", "2", "--num-eval", "4", "--eval-batch-size", "4", "--num-threads", "1",
            "--out", str(WORK / "runs" / "gsm8k-rpc-cpu")]
print("python -m minnat.train " + shlex.join(cpu_argv))
# `main(argv)` is exactly what `python -m minnat.train` runs; called in-process to skip the interpreter start-up.
with contextlib.redirect_stderr(io.StringIO()):   # the progress bar
    exit_code = main(cpu_argv)
assert exit_code == 0
summary = json.loads((WORK / "runs" / "gsm8k-rpc-cpu" / "summary.json").read_text())
assert summary["task"] == "gsm8k" and summary["steps"] == 2
assert 0 < summary["response_tokens_used"] < summary["response_tokens_generated"], "RPC used a part of the tokens"

# %% [markdown]
# ## 5. NAT in an existing trainer
#
# Most GRPO trainers (TRL's `GRPOTrainer`, verl's actor) compute the loss the same way: one
# forward pass over prompt + completion, per-token log-probs, a per-token clipped surrogate,
# and a masked mean. NAT needs **three additions** and one thing left alone:
#
# 1. **draw the selection** after the rollout: `selection = select_tokens(completion_mask, "rpc", ρ)`;
# 2. **(RPC) feed the model only what the kept tokens need**: nothing after the longest kept
#    prefix — a column slice, exact under causal attention (tutorial 3);
# 3. **multiply the per-token loss by the HT weights** `selection.weights` ($\mathrm{keep}_t/\pi_t$,
#    0 on dropped tokens);
# 4. and **do not touch the normaliser**: it stays the full `completion_mask`'s count.
#
# Here is a generic TRL-style `compute_loss` with those lines marked. Its inputs use TRL's
# names (`prompt_ids`, `prompt_mask`, `completion_ids`, `completion_mask`, `advantages`,
# `old_per_token_logps`).

# %%
def selective_log_softmax(logits, index):
    """log softmax(logits)[index] without keeping the [B, T, V] log-softmax around."""
    return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def compute_loss(model, inputs, nat_method="full", nat_budget=1.0, generator=None, clip_eps=0.2):
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    T = completion_ids.shape[1]

    selection = select_tokens(completion_mask.bool(), nat_method, nat_budget, generator)   # NAT 1: which tokens, π_t
    needed = int(selection.cut_lengths.max())                                              # NAT 2: RPC needs nothing after
    completion_ids, completion_in = completion_ids[:, :needed], completion_mask[:, :needed]  # the longest kept prefix

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_in], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)   # left-padded prompts: positions as in generate
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, prompt_ids.shape[1] - 1:-1].float()           # column j predicts token j + 1
    per_token_logps = selective_log_softmax(logits, completion_ids)
    per_token_logps = torch.nn.functional.pad(per_token_logps, (0, T - needed))   # back to [B, T]; 0 after the cut

    old = inputs["old_per_token_logps"]
    ratio = torch.exp(torch.where(completion_mask.bool(), per_token_logps - old, torch.zeros_like(old)))
    advantages = inputs["advantages"].unsqueeze(1)
    per_token_loss = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    per_token_loss = per_token_loss * selection.weights                                   # NAT 3: × keep_t / π_t
    # Unchanged: the normaliser is |o_i| from the FULL completion mask — not selection.keep.sum(-1).
    loss = ((per_token_loss * completion_mask).sum(dim=1) / completion_mask.sum(dim=1).clamp(min=1)).mean()
    return loss, per_token_logps, selection


# %% [markdown]
# Check it on a real rollout of the embedded long-addition model (on-policy as with μ = 1; set
# `TASK = "arithmetic"` for the short task):
#
# * with `nat_method="full"` it is plain GRPO, equal to `policy_loss` without weights;
# * with RPC it equals `policy_loss(..., weights=selection.weights)` fed by minnat's own
#   `response_logprobs` (which cuts each row separately instead of at the longest prefix);
# * the model really was given fewer columns;
# * averaged over draws, its gradient approaches the full gradient.

# %%
TASK = "long-addition"  # ~250-token worked answers, the trainer's default task
model, tokenizer = load_model("embedded", task=TASK)
task = get_task(TASK)
questions = [e for e in task.train_examples if task.slip_count(e) == 1][:4]   # one place to slip: mixed groups
torch.manual_seed(0)
batch = generate(model, tokenizer, task, questions, group_size=8, max_new_tokens=420)
P = batch.prompt_columns
inputs = {"prompt_ids": batch.input_ids[:, :P], "prompt_mask": batch.attention_mask[:, :P],
          "completion_ids": batch.input_ids[:, P:], "completion_mask": batch.response_mask.long(),
          "advantages": group_advantages(batch.rewards, 8)}
with torch.no_grad():
    inputs["old_per_token_logps"] = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)

full_loss, logps, _ = compute_loss(model, inputs)
torch.testing.assert_close(full_loss, policy_loss(logps, inputs["old_per_token_logps"], inputs["advantages"],
                                                  batch.response_mask), rtol=1e-5, atol=1e-7)

generator = torch.Generator().manual_seed(1)
nat_loss, nat_logps, selection = compute_loss(model, inputs, "rpc", 0.5, generator)
minnat_logps = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask, selection)
minnat_loss = policy_loss(minnat_logps, inputs["old_per_token_logps"], inputs["advantages"], batch.response_mask,
                          weights=selection.weights)
torch.testing.assert_close(nat_loss, minnat_loss, rtol=1e-5, atol=1e-6)
# On-policy the full loss is −mean(Â) = 0 (advantages are centred per group); its gradient is not 0.
print(f"full loss {full_loss.item():+.5f}   one RPC draw {nat_loss.item():+.5f} (minnat: {minnat_loss.item():+.5f})")
T = batch.response_mask.shape[1]
cuts = selection.cut_lengths.sort().values
print(f"RPC kept {selection.kept_fraction:.0%} of the tokens; one slice for the whole batch gives the model "
      f"{int(cuts.max())} of {T} completion columns")
micro = cuts.view(-1, 8).amax(dim=1)          # 4 micro-batches of 8 rows, rows sorted by cut length
print(f"sorted by cut into micro-batches of 8 rows, each sliced at its own longest cut: "
      f"{int((8 * micro).sum())} of {len(cuts) * T} row-columns ({(8 * micro).sum() / (len(cuts) * T):.0%})")


def gradient(loss):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


full_gradient = gradient(compute_loss(model, inputs)[0])
assert full_gradient.norm() > 0, "this batch needs a group with mixed rewards (change the questions or the seed)"
running, errors, single_draw_errors = torch.zeros_like(full_gradient), [], []
for draw in range(1, 33):
    draw_gradient = gradient(compute_loss(model, inputs, "rpc", 0.5, generator)[0])
    running += draw_gradient
    errors.append(float((running / draw - full_gradient).norm() / full_gradient.norm()))
    single_draw_errors.append(float((draw_gradient - full_gradient).norm() / full_gradient.norm()))
typical_single = (torch.tensor(single_draw_errors) ** 2).mean().sqrt().item()
print(f"relative error of one RPC gradient (rms over 32 draws): {typical_single:.3f}")
print("relative error of the average of K RPC gradients:     ",
      ", ".join(f"K={k}: {errors[k - 1]:.3f}" for k in (1, 2, 4, 8, 16, 32)), f"  (1/√32 of one draw: {typical_single / 32**0.5:.3f})")
assert errors[-1] < 0.5 * typical_single, "averaging unbiased draws converges to the full gradient (like 1/√K)"

# %% [markdown]
# In **verl** the same three additions go into the actor's update: draw the selection on
# the batch's `response_mask` before the micro-batch loop; for RPC slice each micro-batch's
# `input_ids`/`attention_mask`/`position_ids` to prompt + longest kept prefix before the forward
# pass; and multiply the per-token policy-loss matrix by the weights before
# `agg_loss(loss_mat, loss_mask, loss_agg_mode)`. Pass the **full** `response_mask` as `loss_mask`
# — not the selection's `keep` — so that every mode ("token-mean", "seq-mean-token-mean",
# "seq-mean-token-sum-norm", …) keeps a normaliser that does not depend on the draw, and stays
# unbiased.
#
# One caution for any trainer, visible above: one "longest kept prefix" slice for a whole
# batch saves little, because some row almost always keeps its whole answer. Sort the rows by
# cut length before splitting the batch into micro-batches and slice each at its own longest
# cut — what `minnat.logprobs.response_logprobs` does (`plan_micro_batches`).
#
# ## 6. Bigger Qwen3 on one GPU: LoRA
#
# Training every weight of Qwen3-8B needs 8 bytes per parameter in minnat's bf16 trainer (weight,
# gradient, two AdamW moments; 16 in mixed precision) — 66 GB before one activation. With LoRA
# (`--lora-rank R`, peft: `pip install "minnat[lora]"`) the base weights are frozen and only small
# adapters A, B train (W + (α/r)·BA on every decoder linear layer); the KL's reference is the
# base model with the adapters switched off, so no second copy is loaded. NAT composes with it
# unchanged — it chooses tokens, LoRA chooses parameters (`tests/test_lora.py` checks by
# enumeration that the NAT gradient on the adapters averages exactly to full GRPO's).
#
# ```bash
# pip install "minnat[lora]"
# # Qwen3-8B, RPC at ρ = 0.5, LoRA rank 16, on one 80 GB GPU
# python -m minnat.train --model Qwen/Qwen3-8B --task gsm8k --device cuda --gradient-checkpointing \
#     --lora-rank 16 --lora-alpha 32 --method rpc --budget 0.5 --steps 200 --batch-size 64 --group-size 8 \
#     --max-new-tokens 1024 --learning-rate 1e-5 --warmup-steps 10 --update-micro-batch-rows 16 \
#     --eval-every 25 --num-eval 200 --eval-batch-size 100 --out runs/qwen3-8b-gsm8k-lora-rpc
# # Qwen3-4B: the same with --model Qwen/Qwen3-4B
# ```
#
# LoRA wants a larger learning rate than full fine-tuning (1e-5 here against 1e-6; tune it).
# The checkpoints hold the adapter only (~0.2 GB for 8B at rank 16) and the name of the base;
# `--resume` continues exactly, and `python app.py` or `load_model(checkpoint)` loads the merged model.
#
# **The memory to expect.** `python -m minnat.bench --mode lora` measures the bytes autograd saves
# per token on each size's real widths (a 1- and a 2-layer body in bf16, with and without LoRA and
# gradient checkpointing) and adds weights and training states. The committed run predicts one
# backward pass of 16 rows × (256 prompt + 1024 response tokens):

# %%
def load_lora_budget(root: pathlib.Path):
    """(folder, rows of the predicted budget) of the newest committed `--mode lora` result, or (None, [])."""
    found = sorted(root.glob("**/lora.json"))
    if not found:
        return None, []
    result = json.loads(found[-1].read_text())
    return str(found[-1].parent.relative_to(root)), result["predicted_budget"]


lora_folder, budget_rows = load_lora_budget(results_root)
print(f"bench/results/{lora_folder}/lora.md" if lora_folder else "no `--mode lora` result committed yet")
print(f"{'preset':12s}{'training':14s}{'weights+states':>16s}{'full, GC':>11s}{'RPC, GC':>10s}{'full, no GC':>13s}"
      f"{'RPC, no GC':>12s}   (totals in GB)")
for row in budget_rows:
    static = (row["weights_bytes"] + row["states_bytes"]) / 1e9
    print(f"{row['preset']:12s}{'every weight' if row['training'] == 'full_ft' else 'LoRA':14s}{static:16.1f}"
          f"{row['total_bytes_full_gc'] / 1e9:11.1f}{row['total_bytes_rpc_gc'] / 1e9:10.1f}"
          f"{row['total_bytes_full'] / 1e9:13.1f}{row['total_bytes_rpc'] / 1e9:12.1f}")
by_key = {(row["preset"], row["training"]): row for row in budget_rows}
if by_key:
    eight_lora, eight_full = by_key[("qwen3-8b", "lora")], by_key[("qwen3-8b", "full_ft")]
    assert eight_lora["total_bytes_rpc_gc"] < 0.9 * 80e9 < eight_full["total_bytes_full_gc"]  # LoRA fits 80 GB, full does not
    assert eight_lora["activation_bytes_rpc"] < 0.65 * eight_lora["activation_bytes_full"]    # RPC cuts the activations

# %% [markdown]
# Reading it (GC = `--gradient-checkpointing`):
#
# * **Every weight** of 8B needs 66 GB of weights and states alone; with checkpointing the total
#   is ~77 GB for full-token GRPO — over 90% of an 80 GB card, inside a 141 GB one.
# * **LoRA** brings 8B's static memory to ~17 GB, so the activations decide: with checkpointing
#   ~30 GB (full-token) or ~25 GB (RPC) — one 80 GB GPU, with room for longer answers or more rows
#   per pass. Without checkpointing the activations of 16 × 1280 tokens (218 GB full-token, 131 GB
#   RPC) fit no single card: there RPC's ρ = 0.5 is worth 40% of the update's memory.
# * LoRA's activations are *larger* per token than full fine-tuning's (289 against 210 KiB per
#   token and layer for 8B without checkpointing): peft keeps the adapters in float32, and each
#   adapted layer saves a float32 copy of its input for backward. With checkpointing that cost is
#   confined to the one layer being recomputed.
# * Not in these totals: the rollout's KV cache (HF `generate`; 64 × 1280 tokens of Qwen3-8B is
#   below, freed before the update), and, when every weight trains with `--kl-coef` > 0, a second
#   bf16 copy of the model for the reference (LoRA needs none).
#
# The numbers are predictions from saved-tensor counts on a CPU; `bash bench/run_gpu.sh` runs
# the same mode on a GPU and measures the peak with `torch.cuda.max_memory_allocated`.

# %%
config_8b = preset_config("qwen3-8b")
kv_bytes_per_token = 2 * config_8b.num_hidden_layers * config_8b.num_key_value_heads * config_8b.head_dim * 2   # K and V, bf16
print(f"rollout KV cache, Qwen3-8B, 64 × (256 + 1024) tokens: {64 * 1280 * kv_bytes_per_token / 1e9:.1f} GB")

# The same flags, checked against the trainer's parser (the CPU-sized rehearsal just below runs them).
lora_argv = ["--model", "Qwen/Qwen3-8B", "--task", "gsm8k", "--device", "cuda", "--gradient-checkpointing",
             "--lora-rank", "16", "--lora-alpha", "32", "--method", "rpc", "--budget", "0.5", "--steps", "200",
             "--batch-size", "64", "--group-size", "8", "--max-new-tokens", "1024", "--learning-rate", "1e-5",
             "--warmup-steps", "10", "--update-micro-batch-rows", "16", "--eval-every", "25", "--num-eval", "200",
             "--eval-batch-size", "100", "--out", "runs/qwen3-8b-gsm8k-lora-rpc"]
lora_config = parse_args(lora_argv)
assert (lora_config.lora_rank, lora_config.lora_alpha, lora_config.lora_targets) == (16, 32.0, "all-linear")

# %% [markdown]
# **The CPU rehearsal with LoRA**: two steps of the embedded model with rank-4 adapters and a KL
# to the base, then the checkpoint — an adapter, not a model — loaded back merged.

# %%
lora_run = WORK / "runs" / "lora-rpc-cpu"
rehearsal = ["--task", "arithmetic", "--lora-rank", "4", "--kl-coef", "0.05", "--steps", "2", "--batch-size", "8",
             "--group-size", "4", "--max-new-tokens", "72", "--num-eval", "4", "--eval-batch-size", "4",
             "--num-threads", "1", "--out", str(lora_run)]
with contextlib.redirect_stderr(io.StringIO()):
    assert main(rehearsal) == 0
lora_summary = json.loads((lora_run / "summary.json").read_text())
checkpoint = lora_run / "checkpoints" / "step-000002"
print(f"trainable parameters: {lora_summary['trainable_parameters']:,} of {lora_summary['parameters']:,}; "
      f"checkpoint files: {sorted(p.name for p in checkpoint.iterdir())}")
merged_model, _ = load_model(str(checkpoint))
assert not (checkpoint / "model.safetensors").exists() and count_parameters(merged_model) < lora_summary["parameters"]

# %% [markdown]
# ## Summary
#
# * Qwen3-0.6B: 596M parameters (a quarter of them the 151 936 × 1024 embedding), ~4.4 GiB of
#   weights, gradients and AdamW state in bf16 before activations.
# * `python -m minnat.train --model Qwen/Qwen3-0.6B --task gsm8k --device cuda --method rpc --budget 0.5 ...`
#   is the whole recipe; the CPU rehearsal runs the same code offline.
# * Carrying NAT into another trainer is three lines — select, (RPC) slice, weight — plus the
#   discipline of leaving the normaliser alone.
# * Qwen3-4B/8B on one GPU: `--lora-rank 16 --gradient-checkpointing`; LoRA removes the weights'
#   states, RPC then cuts the activations that are left (predicted for 8B: ~30 GB full-token, ~25 GB
#   RPC at 16 × 1280 tokens per pass, against ~77 GB when every weight trains).

# %%
import shutil

shutil.rmtree(WORK)  # the fixture and the rehearsal's run folder were temporary; skip this cell to keep them
