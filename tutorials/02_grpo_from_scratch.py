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
# # Tutorial 2 · GRPO from scratch
#
# NAT changes *which tokens* GRPO trains on and nothing else, so before NAT we need GRPO
# itself. This tutorial builds every piece of a GRPO update by hand on the tiny Qwen3 that
# ships with minnat (a 0.4M-parameter character-level model, warm-started on long addition),
# and checks each piece against the library:
#
# 1. sampling a **group** of $G$ responses per question, and scoring them;
# 2. the group-relative **advantages** $\hat A_i$;
# 3. the **log-probabilities** $\log \pi_\theta(o_{i,t} \mid q, o_{i,<t})$ of the response tokens;
# 4. the **clipped surrogate** and the **KL** penalty, per token;
# 5. the **loss aggregation** variants (GRPO, DAPO, Dr. GRPO) — checked for equality against
#    `minnat.grpo.policy_loss`, value *and* gradient.
#
# It runs in well under a minute on a laptop CPU, with no network.

# %%
import copy
import pathlib
import sys

# Make `import minnat` work when the notebook is opened from tutorials/ without installing.
ROOT = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "minnat" / "nat.py").is_file())
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
import torch

from minnat.grpo import group_advantages, policy_loss, token_terms
from minnat.logprobs import response_logprobs
from minnat.models import count_parameters, load_model
from minnat.rollout import generate
from minnat.tasks import get_task

torch.set_num_threads(1)  # the tiny model's matrices are too small to gain from more threads
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False, linewidth=120)
MODEL = "embedded"      # the tiny Qwen3 made for the task (minnat/assets/tiny-qwen3-long/)
TASK = "long-addition"  # ~250-token worked answers; "arithmetic" is the short task (~67 tokens)

# %% [markdown]
# ## 1. The task and the policy
#
# The embedded task is long addition of numbers of up to 14 digits, written out one narrated
# line per column, least-significant digit first (`b: 4+9+0=13 write 3 carry 1`), then the
# answer: worked answers of ~250 tokens. The reward $R_i$ is **verifiable**: 1 if the final
# answer is right, 0 otherwise. The tiny model was warm-started on a "sloppy teacher" that
# usually drops the carry of a column summing to exactly 10 or 11, so sampling sometimes gets
# a problem right and sometimes not — exactly the situation in which GRPO has something to
# learn. (Set `TASK = "arithmetic"` above for the short task; everything below runs on both.)

# %%
model, tokenizer = load_model(MODEL, task=TASK)
task = get_task(TASK)
example = task.train_examples[0]
print(f"{count_parameters(model):,} parameters, vocabulary of {len(tokenizer)} characters")
print("prompt:    ", repr(task.prompt_text(example)))
print("solution:  ", repr(example.solution))
print("reward of the right solution:", task.reward(example.solution, example),
      "  of a wrong one:", task.reward("answer 0", example))

# %% [markdown]
# ## 2. Sampling a group
#
# For each question $q$, GRPO samples a **group** of $G$ responses $o_1, \dots, o_G \sim
# \pi_{\theta_\text{old}}(\cdot \mid q)$ from the current policy, at temperature $\tau$, and scores
# them. `minnat.rollout.generate` does this with Hugging Face `generate` and returns a
# `RolloutBatch` in the layout `generate` produces:
#
# * `input_ids` $[B, P + T]$: the left-padded prompt in the first $P$ columns, then the
#   right-padded response;
# * `response_mask` $[B, T]$: `True` on $o_{i,1..|o_i|}$, every generated token up to and
#   including EOS, so row $i$ has $|o_i|$ response tokens;
# * `rewards` $[B]$: $R_i$. The $G$ responses to one question are consecutive rows.

# %%
G = 8
# Four questions on which the planted habit can slip exactly once (`task.slip_count`: for
# long-addition, one column summing to exactly 10 or 11; for arithmetic, one carry). The
# warm-started model gets such a question right in some of its samples, so most groups mix
# right and wrong answers — the groups GRPO learns from.
questions = [e for e in task.train_examples if task.slip_count(e) == 1][:4]
torch.manual_seed(1)
L_max = 420  # max_new_tokens: the generation limit, a constant of the run (the trainer's default)
batch = generate(model, tokenizer, task, questions, group_size=G, max_new_tokens=L_max, temperature=1.0)
B, T = batch.response_mask.shape
P = batch.prompt_columns
lengths = batch.response_mask.sum(dim=1)
print(f"B = {B} responses, P = {P} prompt columns, T = {T} response columns, |o_i| from "
      f"{int(lengths.min())} to {int(lengths.max())}")
for row in (0, 1):
    print(f"  R = {batch.rewards[row]:.0f}  {task.prompt_text(batch.examples[row])}{batch.completions[row]}")
print("rewards per group:\n", batch.rewards.view(-1, G))

# %% [markdown]
# ## 3. Group-relative advantages
#
# GRPO has no value network. The baseline of a response is the mean reward of its own group,
# and the scale is the group's standard deviation:
#
# $$ \hat A_i = \frac{R_i - \operatorname{mean}_{j}(R_j)}{\operatorname{std}_{j}(R_j) + \varepsilon}, $$
#
# the same $\hat A_i$ for every token of $o_i$. A group whose rewards are all equal (all right
# or all wrong) gets $\hat A_i = 0$ and teaches nothing.

# %%
grouped = batch.rewards.view(-1, G)
advantages_by_hand = ((grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-6)).flatten()
advantages = group_advantages(batch.rewards, G)
print("Â_i per group:\n", advantages.view(-1, G))
torch.testing.assert_close(advantages, advantages_by_hand, rtol=0, atol=0)
assert torch.allclose(advantages.view(-1, G).sum(dim=1), torch.zeros(B // G), atol=1e-5), "Â sums to 0 per group"

# %% [markdown]
# ## 4. Log-probabilities of the response tokens
#
# The policy gradient needs $\log \pi_\theta(o_{i,t} \mid q, o_{i,<t})$ at every response
# token. A causal LM's logits at column $j$ predict the token at column $j + 1$, so response
# token $t$ (column $P + t - 1$, counting $t$ from 1) is scored from the logits at column
# $P + t - 2$. Two details make a by-hand version match the sampler:
#
# * **position ids** come from the attention mask (`cumsum − 1`), so left padding does not
#   shift positions — exactly what `generate` used;
# * the log-softmax uses the **sampling temperature** $\tau$ (here 1).
#
# `minnat.logprobs.response_logprobs` computes the same numbers without ever materialising the
# $[B, T, V]$ logits, and — tutorial 3 — only at the tokens NAT keeps.

# %%
def logprobs_by_hand(policy, batch):
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids).logits                              # [B, P + T, V]
    predicting_response = logits[:, P - 1:-1].float().log_softmax(dim=-1)         # column j predicts j + 1
    tokens = batch.input_ids[:, P:]
    picked = predicting_response.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)      # [B, T]
    return torch.where(batch.response_mask, picked, torch.zeros_like(picked))


with torch.no_grad():
    by_hand = logprobs_by_hand(model, batch)
    library = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
print("row 0, first tokens:", by_hand[0, :6])
print("max |difference|   :", (by_hand - library).abs().max().item())
torch.testing.assert_close(library, by_hand, rtol=1e-5, atol=1e-5)

# %% [markdown]
# ## 5. The clipped surrogate and the KL penalty
#
# GRPO reuses a rollout batch for $\mu \ge 1$ optimiser steps. During those steps the policy
# $\pi_\theta$ drifts away from the policy that sampled the data, $\pi_{\theta_\text{old}}$, and the
# per-token importance ratio corrects for it:
#
# $$ r_{i,t}(\theta) = \frac{\pi_\theta(o_{i,t} \mid q, o_{i,<t})}{\pi_{\theta_\text{old}}(o_{i,t} \mid q, o_{i,<t})}
#    = \exp\big(\log\pi_\theta - \log\pi_{\theta_\text{old}}\big). $$
#
# PPO's clipping stops the update from exploiting large ratios. The per-token loss, with a KL
# penalty of weight $\beta$ towards a frozen reference policy $\pi_\text{ref}$, is
#
# $$ \ell_{i,t} = -\min\Big(r_{i,t}\,\hat A_i,\; \operatorname{clip}\big(r_{i,t},\, 1-\varepsilon,\, 1+\varepsilon_\text{high}\big)\,\hat A_i\Big)
#    + \beta\, \mathrm{KL}_{i,t}, $$
#
# $$ \mathrm{KL}_{i,t} = \frac{\pi_\text{ref}}{\pi_\theta} - \log\frac{\pi_\text{ref}}{\pi_\theta} - 1 \quad(\text{the "k3" estimator: unbiased for } \mathrm{KL}(\pi_\theta\,\|\,\pi_\text{ref}),\ \text{and} \ge 0 \text{ per token}). $$
#
# The left plot shows the surrogate as a function of $r$: for a good response ($\hat A > 0$)
# the loss stops decreasing once $r > 1 + \varepsilon$; for a bad one once $r < 1 - \varepsilon$.
# Beyond those points the gradient is zero.

# %%
ratio_grid = torch.linspace(0.3, 1.8, 301)
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
for advantage, colour in ((1.0, "#2ca02c"), (-1.0, "#d62728")):
    advantage_tensor = torch.full_like(ratio_grid, advantage)
    surrogate = -torch.minimum(ratio_grid * advantage_tensor, ratio_grid.clamp(0.8, 1.2) * advantage_tensor)
    left.plot(ratio_grid, surrogate, color=colour, label=f"Â = {advantage:+.0f}")
for edge in (0.8, 1.2):
    left.axvline(edge, color="grey", ls=":", lw=1)
left.set(xlabel="ratio r", ylabel="per-token loss", title="clipped surrogate, ε = 0.2")
left.legend()
log_ratio = torch.linspace(-2, 2, 201)  # log π_ref − log π_θ
right.plot(log_ratio, torch.exp(log_ratio) - log_ratio - 1, label="k3 = e^x − x − 1 (≥ 0)")
right.plot(log_ratio, -log_ratio, ls="--", label="k1 = −x (can be < 0)")
right.axhline(0, color="k", lw=0.6)
right.set(xlabel="x = log π_ref − log π_θ", ylabel="per-token KL estimate", title="KL estimators")
right.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### A few optimiser steps on one batch ($\mu = 3$)
#
# To see ratios different from 1 we do what a trainer with $\mu > 1$ does: compute
# $\log\pi_{\theta_\text{old}}$ once (no gradient), then take optimiser steps on the same batch.
# $\pi_\text{ref}$ is a frozen copy of the starting model. The loss used for the steps here is
# `policy_loss` itself; we rebuild it by hand afterwards.

# %%
reference = copy.deepcopy(model).eval().requires_grad_(False)
with torch.no_grad():
    old_logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    ref_logprobs = response_logprobs(reference, batch.input_ids, batch.attention_mask, batch.response_mask)
clip_eps, clip_eps_high, beta = 0.2, 0.28, 0.05
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # the trainer's scale (1.5e-4 peak)
model.train()
for update in range(3):
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    loss = policy_loss(logprobs, old_logprobs, advantages, batch.response_mask, ref_logprobs=ref_logprobs,
                       clip_eps=clip_eps, clip_eps_high=clip_eps_high, kl_coef=beta)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"update {update + 1}: loss {loss.item():+.5f}")

# %% [markdown]
# Now, at the updated $\theta$, every per-token quantity by hand:

# %%
mask = batch.response_mask
logprobs = logprobs_by_hand(model, batch)            # differentiable: we will compare gradients too
zero = torch.zeros_like(logprobs)
ratio = torch.exp(torch.where(mask, logprobs - old_logprobs, zero))
A = advantages.unsqueeze(1)                           # the same Â_i for every token of o_i
surrogate = -torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps_high) * A)
x = torch.where(mask, ref_logprobs - logprobs, zero)
kl = torch.exp(x) - x - 1
ell = torch.where(mask, surrogate + beta * kl, zero)  # ℓ_{i,t}, [B, T]

in_response = ratio[mask].detach()
print(f"ratio r: min {in_response.min():.3f}  max {in_response.max():.3f}; "
      f"outside [1−ε, 1+ε_high]: {((in_response < 1 - clip_eps) | (in_response > 1 + clip_eps_high)).float().mean():.1%}")
print(f"KL per token: mean {kl[mask].mean():.5f}  min {kl[mask].min():.2e}")

library_ell, library_ratio, is_clipped, library_kl = token_terms(
    logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, clip_eps=clip_eps,
    clip_eps_high=clip_eps_high, kl_coef=beta)
torch.testing.assert_close(library_ell, ell)
torch.testing.assert_close(library_kl, kl)
assert (kl[mask] >= -1e-6).all(), "k3 is non-negative token by token (up to float32 rounding of e^x − x − 1)"
assert in_response.sub(1).abs().max() > 1e-4, "the updates moved the policy, so r ≠ 1"

# %%
fig, axis = plt.subplots(figsize=(7, 3.4))
tokens = in_response.numpy()
axis.hist(tokens, bins=60, color="#1f77b4")
for edge in (1 - clip_eps, 1 + clip_eps_high):
    axis.axvline(edge, color="k", ls=":", lw=1)
axis.set(xlabel="r_{i,t} after 3 updates", ylabel="tokens", yscale="log",
         title=f"importance ratios of the {len(tokens)} response tokens (dotted: clip range)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Almost every ratio is exactly 1: most tokens of these solutions are copied digits that the
# model predicts with probability ≈ 1 before and after the update. The tokens that move are
# the **decisions** — above all the carries (`carry 0` / `carry 1` after a column summing to 10
# or 11), the habit the warm start got wrong.
# A few moved past the clip range; for them the surrogate is flat and their gradient is 0.
#
# ## 6. Aggregating the per-token terms
#
# The last choice is how the $\ell_{i,t}$ become one scalar. Three conventions are in use, and
# `policy_loss(..., loss_agg=...)` implements all of them ($N$ = responses with $|o_i| > 0$,
# $L_\max$ = `max_new_tokens`, the run's generation limit):
#
# | `loss_agg` | used by | loss |
# |---|---|---|
# | `seq-mean-token-mean` | GRPO | $\displaystyle \frac{1}{N}\sum_i \frac{1}{|o_i|}\sum_{t=1}^{|o_i|} \ell_{i,t}$ |
# | `token-mean` | DAPO | $\displaystyle \frac{1}{\sum_i |o_i|}\sum_i \sum_{t=1}^{|o_i|} \ell_{i,t}$ |
# | `seq-mean-token-sum-norm` | Dr. GRPO | $\displaystyle \frac{1}{B \cdot L_\max}\sum_i \sum_{t=1}^{|o_i|} \ell_{i,t}$ |
#
# They differ in how much one token of a long response counts against one token of a short
# one. Every denominator is a **count over the full response mask** — the property NAT relies
# on (tutorial 1, section 4). We rebuild each by hand and assert equality with `policy_loss`,
# for the value and for the gradient with respect to every model parameter.

# %%
has_tokens = lengths > 0
by_hand_losses = {
    "seq-mean-token-mean": (ell.sum(dim=1) / lengths.clamp(min=1))[has_tokens].sum() / has_tokens.sum(),
    "token-mean": ell.sum() / lengths.sum(),
    "seq-mean-token-sum-norm": ell.sum() / (B * L_max),
}
parameters = [p for p in model.parameters() if p.requires_grad]
for loss_agg, hand_loss in by_hand_losses.items():
    library_loss = policy_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs,
                               clip_eps=clip_eps, clip_eps_high=clip_eps_high, kl_coef=beta, loss_agg=loss_agg,
                               max_new_tokens=L_max)
    hand_gradient = torch.autograd.grad(hand_loss, parameters, retain_graph=True)
    library_gradient = torch.autograd.grad(library_loss, parameters, retain_graph=True)
    gradient_error = max((a - b).abs().max().item() for a, b in zip(hand_gradient, library_gradient))
    gradient_scale = max(g.abs().max().item() for g in library_gradient)
    print(f"{loss_agg:24s} by hand {hand_loss.item():+.7f}   policy_loss {library_loss.item():+.7f}   "
          f"max |Δ grad| {gradient_error:.1e} (max |grad| {gradient_scale:.1e})")
    torch.testing.assert_close(library_loss, hand_loss, rtol=1e-6, atol=1e-8)
    assert gradient_error <= 1e-5 * gradient_scale + 1e-10

# %% [markdown]
# How much weight does one token of response $i$ get? Under GRPO it is $1/(N|o_i|)$ — short
# responses' tokens count more; under DAPO and Dr. GRPO every token counts the same. (Dr.
# GRPO's constant $B \cdot L_\max$ also removes the length bias of GRPO's per-sequence mean.)

# %%
order = torch.argsort(lengths)
token_weights = {
    "GRPO  1/(N·|o_i|)": 1.0 / (has_tokens.sum() * lengths.clamp(min=1)),
    "DAPO  1/Σ|o_j|": torch.full((B,), 1.0 / lengths.sum()),
    "Dr. GRPO  1/(B·T)": torch.full((B,), 1.0 / (B * T)),
}
fig, axis = plt.subplots(figsize=(7, 3.4))
for name, weights in token_weights.items():
    axis.plot(lengths[order], weights[order], marker="o", ms=3, label=name)
axis.set(xlabel="response length |o_i|", ylabel="weight of one of its tokens", yscale="log",
         title="per-token weight in the loss, by aggregation")
axis.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Where NAT will enter
#
# `policy_loss` takes one more argument, `weights` $[B, T]$: it multiplies each $\ell_{i,t}$ by
# $w_{i,t}$ before aggregating and leaves every normaliser alone. Full GRPO is $w_{i,t} = 1$;
# NAT passes the Horvitz–Thompson weights $w_{i,t} = \mathrm{keep}_{i,t} / \pi_{i,t}$ of a random
# token selection (tutorial 3). A last check of that contract:

# %%
for loss_agg in by_hand_losses:
    options = dict(ref_logprobs=ref_logprobs, clip_eps=clip_eps, clip_eps_high=clip_eps_high, kl_coef=beta,
                   loss_agg=loss_agg, max_new_tokens=L_max)
    unweighted = policy_loss(logprobs, old_logprobs, advantages, mask, **options)
    all_ones = policy_loss(logprobs, old_logprobs, advantages, mask, weights=mask.float(), **options)
    torch.testing.assert_close(all_ones, unweighted, rtol=0, atol=0)
print("weights = 1 on every response token reproduces full GRPO exactly, for every aggregation")

# %% [markdown]
# ## Summary
#
# * A GRPO step: sample $G$ responses per question, $\hat A_i$ = reward standardised within the
#   group, per-token $\ell_{i,t}$ = clipped surrogate $+\ \beta\cdot$k3-KL, then one of three
#   aggregations whose denominators count the full response mask.
# * Every piece was rebuilt by hand and matched `minnat.grpo` exactly (advantages) or to
#   float32 rounding (log-probs, per-token terms, loss values and gradients).
# * NAT's only change to this loss is a weight per token.
#
# **Next:** [tutorial 3](03_urs_and_rpc.ipynb) draws those weights with URS and RPC, and shows
# why only RPC can make the model's forward and backward pass shorter.
