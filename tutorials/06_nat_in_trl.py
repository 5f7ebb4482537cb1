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
# # Tutorial 6 · NAT inside TRL: from minnat's loop to `GRPOTrainer`
#
# minnat's trainer is one readable file for one device. Past one GPU, people train GRPO with
# [TRL](https://github.com/huggingface/trl): accelerate for DDP and DeepSpeed, vLLM for rollouts.
# `minnat.integrations.trl.NATGRPOTrainer` is TRL's own `GRPOTrainer` with NAT's selection
# inside. This tutorial walks from one minnat update step to the same step in TRL, then to a
# TRL training run, and ends with what changes at scale:
#
# 1. one update step in **minnat**: select, log-probs, HT-weighted loss, gradient;
# 2. the **same step inside TRL** — the same loss and gradient — and TRL's own GRPO at `full`;
# 3. what TRL gives the model: it pads every row to the longest completion, **RPC still halves it**;
# 4. a short **`trainer.train()`** through TRL on the embedded task;
# 5. what changes **at scale** (generation, parallelism, precision, refused settings), and the commands.
#
# Everything runs on a CPU in about a minute. TRL is an optional dependency:
# `pip install "minnat[trl]"`.

# %%
import copy
import logging
import pathlib
import shlex
import sys
import tempfile
import warnings

# Make `import minnat` work when the notebook is opened from tutorials/ without installing.
ROOT = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "minnat" / "nat.py").is_file())
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
import torch
import transformers

from minnat.grpo import group_advantages, policy_loss
from minnat.integrations.trl import (INCLUSION_KEY, KEEP_KEY, NATGRPOConfig, NATGRPOTrainer, build_trainer_for_loss,
                                     task_dataset, task_reward, trl_inputs_from_generate_batch)
from minnat.logprobs import response_logprobs
from minnat.models import load_model
from minnat.nat import select_tokens
from minnat.rollout import generate
from minnat.tasks import get_task

# TRL and transformers announce deprecations and options on stderr; this page keeps only results.
warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
logging.getLogger("trl").setLevel(logging.ERROR)
torch.manual_seed(0)
TASK = "long-addition"   # the trainer's default, ~250-token answers; "arithmetic" is the short task
MAX_NEW_TOKENS = 420     # the trainer's limit for long-addition (96 is enough for arithmetic)
model, tokenizer = load_model("embedded", task=TASK)
task = get_task(TASK, num_train=2000, num_eval=64)
print(f"{task} · model: {sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 1 · One update step in minnat
#
# Sample G = 8 responses for each of 4 questions, standardise the rewards within each group
# (Â_i), draw one RPC selection at ρ = 0.5, compute log π_θ only at the kept tokens (for RPC
# the model sees prompt + kept prefix), and take the HT-weighted loss. TRL's default
# `loss_type="dapo"` is minnat's `"token-mean"`: Σ_{i,t} w_{i,t} ℓ_{i,t} / Σ_i |o_i|, the
# normaliser always the full response count.

# %%
questions = [e for e in task.train_examples if task.slip_count(e) == 1][:4]   # one place to slip: mixed groups
batch = generate(model, tokenizer, task, questions, group_size=8, max_new_tokens=MAX_NEW_TOKENS)
advantages = group_advantages(batch.rewards, group_size=8, eps=1e-4)  # TRL's ε is 1e-4
selection = select_tokens(batch.response_mask, "rpc", 0.5, torch.Generator().manual_seed(1))


def minnat_step(network):
    network.zero_grad()
    logprobs = response_logprobs(network, batch.input_ids, batch.attention_mask, batch.response_mask, selection)
    loss = policy_loss(logprobs, logprobs.detach(), advantages, batch.response_mask, weights=selection.weights,
                       loss_agg="token-mean")  # first of μ updates: π_old = π_θ
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in network.parameters()])


minnat_model = copy.deepcopy(model)
minnat_loss, minnat_grad = minnat_step(minnat_model)
print(f"responses: {len(batch.rewards)}, lengths {batch.response_mask.sum(1).min()}–{batch.response_mask.sum(1).max()}"
      f" tokens; mean reward {batch.rewards.mean():.2f}; kept {selection.kept_fraction:.0%} of the tokens")
print(f"minnat loss {minnat_loss:.6f}, gradient norm {minnat_grad.norm():.6f}")

# %% [markdown]
# ## 2 · The same step inside TRL
#
# `build_trainer_for_loss` makes a real `NATGRPOTrainer` (TRL's `GRPOTrainer` subclass) with no
# dataset, and `trl_inputs_from_generate_batch` turns the batch into the dict TRL's
# `_compute_loss` reads (`prompt_ids`, `completion_ids`, `completion_mask`, `advantages`,
# `num_items_in_batch`, …). During training the trainer draws the selection itself, once per
# generation batch, and stores it in two extra keys of that dict, `nat_keep` and
# `nat_inclusion_prob`; here we put minnat's own draw there, so both sides see the same tokens.
#
# Note what stays untouched: `completion_mask`. TRL also uses it as the **attention mask**, so
# zeroing the dropped tokens there would change what the model sees and bias the gradient.

# %%
trl_model = copy.deepcopy(model)
nat_trainer = build_trainer_for_loss(trl_model, tokenizer, nat_method="rpc", nat_budget=0.5, loss_type="dapo")
inputs = trl_inputs_from_generate_batch(batch.input_ids, batch.attention_mask, batch.response_mask, advantages)
inputs = {**inputs, KEEP_KEY: selection.keep, INCLUSION_KEY: selection.inclusion_prob}
trl_model.zero_grad()
trl_loss = nat_trainer._compute_loss(trl_model, inputs)
trl_loss.backward()
trl_grad = torch.cat([p.grad.flatten() for p in trl_model.parameters()])
gradient_gap = float((trl_grad - minnat_grad).abs().max() / minnat_grad.abs().max())
print(f"TRL + NAT loss {trl_loss.item():.6f}  (minnat {minnat_loss:.6f}); largest gradient difference "
      f"{gradient_gap:.1e} of the largest entry")
assert abs(trl_loss.item() - minnat_loss.item()) <= 1e-5 * max(1.0, abs(minnat_loss.item()))
assert gradient_gap < 1e-4

# %% [markdown]
# And with `nat_method="full"` (every token, w = 1) the NAT trainer is TRL's GRPO: against the
# **stock** `trl.GRPOTrainer` on the same inputs, loss and gradient agree to float32 rounding
# (TRL scores with its own fused LM head; `tests/test_trl_integration.py` checks every loss type).
# At the first of μ updates the ratio is 1, so the loss is −Σ_i Â_i |o_i| / Σ_i |o_i|: nearly 0,
# while its gradient is not.

# %%
stock_model, full_model = copy.deepcopy(model), copy.deepcopy(model)
stock = build_trainer_for_loss(stock_model, tokenizer, nat_method=None, loss_type="dapo")
full = build_trainer_for_loss(full_model, tokenizer, nat_method="full", loss_type="dapo")
full_inputs = trl_inputs_from_generate_batch(batch.input_ids, batch.attention_mask, batch.response_mask, advantages)
results = {}
for name, trainer, network in [("stock GRPOTrainer", stock, stock_model), ("NATGRPOTrainer, full", full, full_model)]:
    network.zero_grad()
    loss = trainer._compute_loss(network, full_inputs)
    loss.backward()
    results[name] = (loss.item(), torch.cat([p.grad.flatten() for p in network.parameters()]))
    print(f"{name:>22}: loss {loss.item():+.3e}, gradient norm {results[name][1].norm():.6f}")
(stock_loss, stock_grad), (full_loss, full_grad) = results.values()
assert abs(stock_loss - full_loss) <= 1e-4 * max(1.0, abs(stock_loss))
assert (stock_grad - full_grad).abs().max() <= 1e-4 * stock_grad.abs().max()

# %% [markdown]
# ## 3 · What TRL gives the model — and what RPC gives it
#
# TRL pads every completion of a generation batch to the longest one and runs row chunks of
# that width; cutting rows inside that path would save almost nothing. `NATGRPOTrainer` scores
# through `minnat.logprobs.response_logprobs` instead: rows are grouped by the columns they
# need, and with RPC each row needs only prompt + kept prefix. A forward hook on the
# transformer body counts the tokens each trainer's update gives it, on this batch.

# %%
seen = []
hook = model.get_decoder().register_forward_pre_hook(
    lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
tokens = {}
for label, method, overhead in [("stock TRL (full)", None, None), ("NAT full", "full", 128),
                                ("NAT URS ρ=0.5", "urs", 128), ("NAT RPC ρ=0.5", "rpc", 128),
                                ("NAT RPC ρ=0.5, no padding", "rpc", 0)]:
    extra = {} if method is None else {"nat_micro_batch_overhead_tokens": overhead}
    trainer = build_trainer_for_loss(model, tokenizer, nat_method=method, nat_budget=0.5, **extra)
    step_inputs = trl_inputs_from_generate_batch(batch.input_ids, batch.attention_mask, batch.response_mask,
                                                 advantages, trainer=trainer)  # NAT: a fresh selection
    seen.clear()
    trainer._compute_loss(model, step_inputs).backward()
    tokens[label] = sum(seen)
hook.remove()
model.zero_grad()

figure, axis = plt.subplots(figsize=(6.5, 2.6))
axis.barh(list(tokens)[::-1], list(tokens.values())[::-1],
          color=["#264653", "#264653", "#e9c46a", "#8ab17d", "#2a9d8f"])
for row, value in enumerate(list(tokens.values())[::-1]):
    axis.text(value, row, f" {value:,} ({value / tokens['stock TRL (full)']:.2f}×)", va="center")
axis.set_xlabel("tokens given to the transformer in one update (rows × columns)")
axis.set_xlim(0, 1.35 * max(tokens.values()))
axis.set_title("one update on 32 responses")
plt.tight_layout()
plt.show()
assert tokens["NAT RPC ρ=0.5, no padding"] <= 0.6 * tokens["stock TRL (full)"]
assert tokens["NAT RPC ρ=0.5"] < tokens["NAT full"]

# %% [markdown]
# URS gives the body every token (a kept token late in a response needs all the columns before
# it); its saving is only the LM head at dropped positions — large for Qwen's 151,936-token
# vocabulary, invisible for this 100-token one. RPC's forward **and** backward are shorter.
# Part of the "NAT full" bar's saving is simply less padding (length grouping); the gap from
# "NAT full" to "NAT RPC" is the cut. The last bar is what the rows need exactly (prompt + kept
# prefix, one pass per distinct length); the default planner pads rows into fewer passes,
# because each pass costs about 128 tokens' worth of fixed overhead
# (`nat_micro_batch_overhead_tokens`) — on short answers that padding is a large share, on
# these 264–403-token responses a small one. Time ratios of TRL's update step with and without NAT are
# what `python -m minnat.bench` measures; this page counts tokens, which do not depend on how
# loaded the machine is.
#
# ## 4 · A short training run through TRL
#
# `NATGRPOConfig` is TRL's `GRPOConfig` plus `nat_method`, `nat_budget` and
# `nat_cut_distribution`; every other field means what it means in TRL. `task_dataset` and
# `task_reward` turn the minnat task into TRL's dataset (a `prompt` column) and reward function.
# One step = 8 prompts × 8 responses, one optimizer step, as in `python -m minnat.train`.
#
# This run uses the **short arithmetic task** and its embedded model: ten TRL steps of 64
# ~70-token answers flip its planted habit in about a minute on a CPU. The long-addition task
# needs the trainer's full default — 30 steps of 128 responses of ~250 tokens, several minutes
# here — which `python examples/trl/grpo_nat.py` runs (its defaults are the trainer's).

# %%
TRAIN_TASK, TRAIN_MAX_NEW_TOKENS = "arithmetic", 96
train_task = get_task(TRAIN_TASK, num_train=2000, num_eval=64)


def held_out_accuracy(network):
    return generate(network, train_tokenizer, train_task, train_task.eval_examples, max_new_tokens=TRAIN_MAX_NEW_TOKENS,
                    greedy=True).rewards.mean()


run_folder = tempfile.TemporaryDirectory(prefix="minnat-tutorial-06-")
# A fresh copy: TRL patches `model.forward` in place (its fused LM head, whose closure keeps the original
# model), so a deepcopy of a model already handed to a trainer would still generate with the original.
train_model, train_tokenizer = load_model("embedded", task=TRAIN_TASK)
accuracy_before = float(held_out_accuracy(train_model))
args = NATGRPOConfig(output_dir=run_folder.name, nat_method="rpc", nat_budget=0.5, use_cpu=True, bf16=False,
                     max_steps=10, per_device_train_batch_size=64, num_generations=8, max_completion_length=TRAIN_MAX_NEW_TOKENS,
                     learning_rate=1e-4, top_k=0, gradient_checkpointing=False, logging_steps=1,
                     save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
trainer = NATGRPOTrainer(model=train_model, reward_funcs=task_reward(train_task), args=args,
                         train_dataset=task_dataset(train_task), processing_class=train_tokenizer)
trainer.remove_callback(transformers.PrinterCallback)  # the log stays in trainer.state.log_history
trainer.train()
accuracy_after = float(held_out_accuracy(train_model))
log = [entry for entry in trainer.state.log_history if "reward" in entry]
print(f"held-out greedy accuracy: {accuracy_before:.1%} -> {accuracy_after:.1%} after {len(log)} TRL steps")
print(f"kept fraction per step ≈ {sum(e['nat/kept_fraction'] for e in log) / len(log):.2f}, "
      f"largest HT weight {max(e['nat/max_ht_weight'] for e in log):.0f}")

figure, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
left.plot([e["step"] for e in log], [e["reward"] for e in log], marker="o")
left.set_xlabel("step")
left.set_ylabel("mean sampled reward")
right.plot([e["step"] for e in log], [e["nat/tokens_to_model"] for e in log], marker="o", color="#264653")
right.set_xlabel("step")
right.set_ylabel("tokens to the model per update")
plt.tight_layout()
plt.show()
assert accuracy_after >= accuracy_before + 0.4
run_folder.cleanup()

# %% [markdown]
# The sampled reward (temperature 1) moves little; the greedy answers, which is what the habit
# flip changes, go from mostly wrong to mostly right — as in tutorial 4 with minnat's own loop.
#
# ## 5 · What changes at scale
#
# | | minnat's loop (`python -m minnat.train`) | TRL + NAT (`NATGRPOTrainer`) |
# |---|---|---|
# | rollouts | `model.generate` | `generate`, or **vLLM** (`use_vllm=True`, `vllm_mode="colocate"` on the training GPUs or `"server"`) |
# | devices | one | many, through **accelerate**: DDP and DeepSpeed ZeRO-1/2/3 (under ZeRO-3 the LM head is called as a module, in checkpointed chunks, because its weight is sharded); FSDP is refused for now |
# | precision | bf16 weights on CUDA | `bf16=True`: autocast, as in TRL |
# | selection | once per rollout batch | once per **generation batch**, on each rank with its own generator; stored in the inputs, so it survives TRL's shuffle and split, and all μ updates reuse it |
# | old / reference log-probs | at kept tokens, RPC on prompt + prefix | the same: `_get_per_token_logps_and_entropies` is replaced while a batch is scored |
# | normaliser | full mask | TRL's, from the full mask: `dapo` divides by `num_items_in_batch`, the generation batch's token count over all ranks |
# | vLLM importance sampling | — | token modes at the kept tokens; sequence modes (TRL's default) need every token's old log-prob, which NAT then computes (no saving on that pass) |
# | refused | — | GSPO (`importance_sampling_level="sequence"`), `vespo`, `top_entropy_quantile < 1`, the entropy bonus, the off-policy mask: each needs every token |
#
# The commands (`examples/trl/grpo_nat.py`; the accelerate configs are in `examples/trl/accelerate/`):

# %%
commands = [
    "python examples/trl/grpo_nat.py",
    "torchrun --nproc_per_node 2 examples/trl/grpo_nat.py --steps 4",
    "accelerate launch --config_file examples/trl/accelerate/ddp.yaml --num_processes 8 examples/trl/grpo_nat.py "
    "--model Qwen/Qwen3-0.6B --task gsm8k --bf16 --gradient-checkpointing --learning-rate 1e-6 "
    "--max-new-tokens 512 --steps 200",
    "accelerate launch --config_file examples/trl/accelerate/zero2.yaml --num_processes 8 examples/trl/grpo_nat.py "
    "--model Qwen/Qwen3-8B --task gsm8k --bf16 --gradient-checkpointing --learning-rate 1e-6 "
    "--max-new-tokens 512 --steps 200 --vllm colocate",
]
sys.path.insert(0, str(ROOT / "examples" / "trl"))
from grpo_nat import parse_arguments  # noqa: E402  (the example's own argument parser)

for command in commands:
    words = shlex.split(command)
    script_arguments = words[words.index("examples/trl/grpo_nat.py") + 1:]
    parsed = parse_arguments(script_arguments)  # every flag above is one the script really has
    print(f"{command}\n    -> model {parsed.model}, task {parsed.task}, NAT {parsed.method} ρ={parsed.budget}, "
          f"vLLM {parsed.vllm or 'no'}")
