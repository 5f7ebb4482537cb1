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
# # Tutorial 3 · URS and RPC: which tokens to keep, and what that saves
#
# Tutorial 1 showed that any sampling design with known inclusion probabilities $\pi_t > 0$
# gives an unbiased estimate once each kept term is weighted by $1/\pi_t$. Tutorial 2 wrote
# the GRPO loss, whose per-token terms $\ell_{i,t}$ we want to estimate. NAT proposes two
# designs, both with an expected budget of a fraction $\rho$ of each response's tokens:
#
# * **URS — uniform random sampling.** Keep each response token independently with
#   probability $\rho$: $\pi_{i,t} = \rho$.
# * **RPC — random prefix cutting.** Draw one random cut $C_i \in \{1, \dots, |o_i|\}$ per
#   response and keep the prefix $o_{i,1..C_i}$: $\pi_{i,t} = P(C_i \ge t)$.
#
# This tutorial draws both on a real rollout batch of the tiny Qwen3, looks at their
# $\pi_t$ and weights, shows **why only RPC can shorten the forward and backward pass**
# (causal attention), proves RPC's unbiasedness on the model by **enumerating every cut**,
# and measures the price: gradient variance against budget.

# %%
import copy
import pathlib
import sys

# Make `import minnat` work when the notebook is opened from tutorials/ without installing.
ROOT = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "minnat" / "nat.py").is_file())
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
import torch

from minnat.grpo import group_advantages, policy_loss
from minnat.logprobs import LogprobStats, response_logprobs
from minnat.models import load_model
from minnat.nat import (rpc_cut_probabilities, rpc_inclusion_probabilities, select_tokens,
                        selection_from_keep)
from minnat.rollout import generate
from minnat.tasks import get_task

torch.set_num_threads(1)  # the tiny model's matrices are too small to gain from more threads
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False, linewidth=120)
MODEL = "embedded"      # the tiny Qwen3 made for the task (minnat/assets/tiny-qwen3-long/)
TASK = "long-addition"  # ~250-token worked answers; "arithmetic" is the short task (~67 tokens)

model, tokenizer = load_model(MODEL, task=TASK)
task = get_task(TASK)
G = 8
# Four questions on which the planted habit can slip exactly once (`task.slip_count`: for
# long-addition, one column summing to exactly 10 or 11; for arithmetic, one carry). The
# warm-started model gets such a question right in some of its samples, so most groups mix
# right and wrong answers — the groups GRPO learns from.
questions = [e for e in task.train_examples if task.slip_count(e) == 1][:4]
# 420 new tokens: the trainer's default limit.
batch = generate(model, tokenizer, task, questions, group_size=G, max_new_tokens=420)
mask = batch.response_mask
lengths = mask.sum(dim=1)
advantages = group_advantages(batch.rewards, G)
B, T = mask.shape
print(f"{B} responses, |o_i| from {int(lengths.min())} to {int(lengths.max())}, "
      f"{int(lengths.sum())} response tokens; rewards per group: {batch.rewards.view(-1, G).mean(1).tolist()}")

# %% [markdown]
# ## 1. Drawing a selection
#
# `select_tokens(response_mask, method, budget, generator)` returns a `Selection`:
# `keep` (which tokens), `inclusion_prob` ($\pi_{i,t}$, exact), `weights`
# ($w_{i,t} = \mathrm{keep}_{i,t}/\pi_{i,t}$) and `cut_lengths` (RPC's $C_i$). The picture below
# shows one draw of each on this batch: URS keeps scattered tokens everywhere, RPC keeps a
# contiguous prefix of each response, of random length.

# %%
generator = torch.Generator().manual_seed(0)
rho = 0.5
selections = {method: select_tokens(mask, method, rho, generator) for method in ("full", "urs", "rpc")}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
for axis, (method, selection) in zip(axes, selections.items()):
    image = mask.float() * 0.25 + selection.keep.float() * 0.75   # grey: dropped, dark: kept
    axis.imshow(image, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    axis.set(title=f"{method.upper()}  (kept {selection.kept_fraction:.0%} of the tokens)",
             xlabel="response position t")
axes[0].set_ylabel("response i")
fig.tight_layout()
plt.show()

rpc = selections["rpc"]
row = 0
print(f"RPC, row {row}: |o| = {int(lengths[row])}, cut C = {int(rpc.cut_lengths[row])}")
print("  π_t :", rpc.inclusion_prob[row, :int(lengths[row])])
print("  w_t :", rpc.weights[row, :int(lengths[row])])

# %%
for selection in selections.values():
    assert not (selection.keep & ~mask).any(), "never keeps padding"
    assert torch.equal(selection.weights, torch.where(selection.keep, 1 / selection.inclusion_prob,
                                                      torch.zeros_like(selection.weights)))
columns = torch.arange(T)
assert torch.equal(rpc.keep, columns < rpc.cut_lengths.unsqueeze(1)), "RPC keeps a prefix"
assert torch.equal(selections["full"].weights, mask.float())

# %% [markdown]
# ## 2. Inclusion probabilities and weights
#
# For URS, $\pi_t = \rho$ at every position and every kept token weighs $1/\rho$.
#
# For RPC the cut distribution is a choice. minnat draws a **cut fraction** $U \in [0, 1]$ with
# survival function $S(u) = P(U > u)$ and sets $C = \lceil U \cdot |o| \rceil$, which gives
# exactly
#
# $$ \pi_t = P(C \ge t) = P\big(U > (t-1)/|o|\big) = S\big((t-1)/|o|\big), \qquad
#    \textstyle\sum_t \pi_t \in [\rho |o|,\ \rho|o| + 1] \text{ when } E[U] = \rho . $$
#
# Two families are implemented (`RPC_CUT_DISTRIBUTIONS`):
#
# * **`uniform-floor`** (default): with probability $\alpha = 0.2\rho$ keep everything, otherwise
#   cut uniformly in the first fraction $w$ of the response: $S(u) = \alpha + (1-\alpha)\max(0, 1 - u/w)$.
#   Every $\pi_t \ge \alpha$, so no weight exceeds $1/(0.2\rho)$.
# * **`power`**: $U \sim \mathrm{Beta}(1, k)$ with $k = (1-\rho)/\rho$, $S(u) = (1-u)^k$. At
#   $\rho = 1/2$ this is the textbook uniform cut $C \sim \mathrm{Uniform}\{1..|o|\}$; its last
#   token has $\pi_{|o|} = |o|^{-k}$ — at $\rho = 1/4$, a weight of $|o|^3$.
#
# Both are unbiased. They differ in how large the weights of late tokens get, i.e. variance.
# Below: $\pi_t$ and $1/\pi_t$ for a 60-token response, and the **empirical mean weight** of
# 20 000 draws of `select_tokens` at every position — which must be 1 everywhere.

# %%
L, draws = 60, 20_000
designs = {"URS": ("urs", "uniform-floor"), "RPC uniform-floor": ("rpc", "uniform-floor"),
           "RPC power": ("rpc", "power")}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for name, (method, cut_distribution) in designs.items():
    for budget, style in ((0.5, "-"), (0.25, "--")):
        selection = select_tokens(torch.ones(draws, L, dtype=torch.bool), method, budget,
                                  torch.Generator().manual_seed(2), cut_distribution=cut_distribution)
        pi = selection.inclusion_prob[0].double()
        mean_weight = selection.weights.double().mean(dim=0)
        standard_error = ((1 - pi) / (pi * draws)).sqrt()
        label = f"{name}, ρ={budget}"
        axes[0].plot(range(1, L + 1), pi, style, label=label)
        axes[1].semilogy(range(1, L + 1), 1 / pi, style, label=label)
        if name != "RPC power" or budget == 0.5:   # power at ρ=1/4 keeps late tokens too rarely to see in 20k draws
            axes[2].plot(range(1, L + 1), mean_weight, style, label=label)
        reliable = pi * draws > 200
        assert ((mean_weight - 1).abs()[reliable] < 5 * standard_error[reliable] + 1e-9).all(), label
        assert abs(selection.keep.double().mean() * L - pi.sum()) < 0.05 * L, "kept ≈ Σ π_t"
        assert budget * L - 1e-6 <= pi.sum() <= budget * L + 1 + 1e-6, "budget met within one token"
axes[0].set(xlabel="position t", ylabel="π_t", title=f"inclusion probability, |o| = {L}")
axes[1].set(xlabel="position t", ylabel="1/π_t", title="HT weight of a kept token")
axes[2].set(xlabel="position t", ylabel="mean of keep/π over draws", title=f"E[w_t] = 1 ({draws:,} draws)",
            ylim=(0, 2))
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Why RPC can physically cut the sequence, and URS cannot
#
# In a decoder-only transformer, attention is **causal**: the hidden state at position $j$
# is computed from positions $\le j$ only. So $\log\pi_\theta(o_t \mid q, o_{<t})$ for
# $t \le C$ does not depend on anything after the prefix. If we only need the log-probs of
# $o_{1..C}$, the model can be given prompt $+\ o_{1..C-1}$ and nothing else (the last kept
# token is a target, never an input): the forward pass, the activations stored for backward
# and the backward pass all shrink.
#
# Check it on one response: the log-probs of a prefix are the same (to float rounding) when
# (a) the suffix is replaced by random tokens, and (b) the suffix is removed altogether.

# %%
def token_logprobs(input_ids, prompt_columns):
    """log π_θ of every token after the prompt, one full forward pass (one unpadded sequence)."""
    logits = model(input_ids=input_ids.unsqueeze(0)).logits[0].float()
    return logits[prompt_columns - 1:-1].log_softmax(-1).gather(-1, input_ids[prompt_columns:, None]).squeeze(-1)


row = int(torch.argmax(lengths))                      # the longest response
prompt = batch.input_ids[row, :batch.prompt_columns][batch.attention_mask[row, :batch.prompt_columns].bool()]
response = batch.input_ids[row, batch.prompt_columns:][mask[row]]
P, L_row, cut = len(prompt), len(response), len(response) // 2
original = torch.cat([prompt, response])
random_suffix = original.clone()
random_suffix[P + cut:] = torch.randint(3, len(tokenizer), (L_row - cut,), generator=torch.Generator().manual_seed(3))
with torch.no_grad():
    full_lp = token_logprobs(original, P)
    changed_lp = token_logprobs(random_suffix, P)
    cut_lp = token_logprobs(original[:P + cut], P)    # prompt + o_1..o_C (o_C only as the last target)
print(f"|o| = {L_row}, cut after C = {cut} tokens")
print(f"max |Δ log π| on the prefix, suffix replaced: {(full_lp[:cut] - changed_lp[:cut]).abs().max():.2e}")
print(f"max |Δ log π| on the prefix, suffix removed:  {(full_lp[:cut] - cut_lp).abs().max():.2e}")
print(f"max |Δ log π| on the suffix, suffix replaced: {(full_lp[cut:] - changed_lp[cut:]).abs().max():.2e}  (of course)")
assert torch.allclose(full_lp[:cut], changed_lp[:cut], atol=1e-5)
assert torch.allclose(full_lp[:cut], cut_lp, atol=1e-5)

# %% [markdown]
# URS has no such luck: its kept tokens are scattered, and a kept token late in the response
# attends to every earlier token — kept or dropped. Changing a **dropped** token changes the
# log-prob of a later **kept** one, so the transformer must still read the whole sequence.
# URS only saves the LM head ($H \times V$ — 151 936 outputs per position for Qwen3) and the
# log-softmax at dropped positions.

# %%
dropped = 5
tampered = original.clone()
tampered[P + dropped] = (tampered[P + dropped] + 1 - 3) % (len(tokenizer) - 3) + 3   # another ordinary character
with torch.no_grad():
    tampered_lp = token_logprobs(tampered, P)
later_changes = (tampered_lp[dropped + 1:] - full_lp[dropped + 1:]).abs()   # every later token, kept or not
kept_later = dropped + 1 + int(later_changes.argmax())
print(f"changing dropped token {dropped + 1} moves log π of later tokens by up to {later_changes.max():.2e} "
      f"(token {kept_later + 1}); {int((later_changes > 1e-5).sum())} of the {L_row - dropped - 1} later tokens "
      "move by more than 1e-5")
assert later_changes.max() > 1e-5

# %% [markdown]
# `response_logprobs(model, input_ids, attention_mask, response_mask, selection)` uses this:
#
# * **full**: one pass over prompt + response;
# * **URS**: the same pass, the LM head only at kept positions;
# * **RPC**: each row is given only prompt + its kept prefix. Rows are sorted by the length
#   they need and grouped into micro-batches (`plan_micro_batches`), which trades a little
#   padding against the fixed cost of each extra pass.
#
# What a selection *requires* the transformer to read does not depend on that grouping: row
# $i$ needs its prompt and every response token before its last kept one,
# $P_i + (\text{last kept position}) - 1$ tokens (the last kept token is only a target). For
# RPC the last kept position is the cut $C_i$; for URS it is almost always near the end.
# `Selection.cut_lengths` holds it for every method. Below, `response_logprobs` reports what it
# gave the model in a `LogprobStats`; with one row per pass (`max_rows_per_micro_batch=1`,
# no padding at all) RPC's count is exactly the requirement. On kept positions all three agree
# with the full computation.

# %%
prompt_lengths = batch.attention_mask[:, :batch.prompt_columns].sum(dim=1)


def tokens_needed(selection):
    """Σ_i (P_i + last kept position − 1): what the transformer must read to score every kept token."""
    last_kept = selection.cut_lengths
    return int(torch.where(last_kept > 0, prompt_lengths + last_kept - 1, torch.zeros_like(last_kept)).sum())


with torch.no_grad():
    reference = response_logprobs(model, batch.input_ids, batch.attention_mask, mask)
costs = {}
for method, selection in selections.items():
    stats = LogprobStats()
    with torch.no_grad():
        values = response_logprobs(model, batch.input_ids, batch.attention_mask, mask, selection, stats=stats,
                                   max_rows_per_micro_batch=1)
    assert torch.allclose(values[selection.keep], reference[selection.keep], atol=1e-5)
    assert (values[~selection.keep] == 0).all()
    costs[method] = {"needed": tokens_needed(selection), "given": stats.tokens_to_model,
                     "head": stats.positions_scored}
    print(f"{method:5s} tokens needed {costs[method]['needed']:5d}, given to the transformer {stats.tokens_to_model:5d} "
          f"in {stats.micro_batches:2d} pass(es); positions through the LM head {stats.positions_scored:5d}")
assert costs["rpc"]["given"] == costs["rpc"]["needed"], "RPC reads exactly prompt + prefix"
assert costs["rpc"]["needed"] < 0.85 * costs["full"]["needed"], "RPC shortens the input"
assert costs["urs"]["needed"] >= 0.9 * costs["full"]["needed"], "URS does not"
assert costs["urs"]["head"] < 0.7 * costs["full"]["head"], "URS saves LM-head positions"
for method in ("urs", "rpc"):
    assert costs[method]["head"] == int(selections[method].keep.sum()), "the LM head runs exactly at the kept tokens"

# %% [markdown]
# The prompt is always read, so RPC's transformer input shrinks by less than a factor $\rho$.
# (Full and URS are given one pass padded to the longest response, hence "given" > "needed"
# for them.) Tutorial 4 measures the time and activation memory RPC saves in a training step.
#
# ## 4. Unbiasedness on the model, exactly: enumerate every cut
#
# The claim: for a fixed rollout batch, $E[L_\text{NAT}] = L_\text{full}$ and
# $E[\nabla_\theta L_\text{NAT}] = \nabla_\theta L_\text{full}$, where the NAT loss is computed
# through the **truncated** forward pass. We check it without any sampling.
#
# Cuts are drawn independently per response, and every aggregation is a sum of per-response
# terms with constant normalisers, so the expectation splits response by response:
#
# $$ E[L_\text{NAT}] = \sum_i \sum_{c=1}^{|o_i|} P(C_i = c)\; L_\text{NAT}\big(\text{row } i \text{ keeps } o_{i,1..c},\ \text{other rows keep nothing}\big), $$
#
# and the same for the gradient. `rpc_cut_probabilities(|o_i|, ρ)` gives $P(C_i = c)$. To make
# the check demanding we pretend the policy has moved since sampling ($\log\pi_\text{old}$ and
# $\log\pi_\text{ref}$ perturbed with noise), so clipping and the KL term are active. We use 4
# responses, a float64 copy of the model (tighter rounding) and both cut families.

# %%
exact_model = copy.deepcopy(model).double()
rows = torch.argsort(lengths)[:4]                          # the four shortest responses
ids, attention, sub_mask = batch.input_ids[rows], batch.attention_mask[rows], mask[rows]
sub_advantages = advantages[rows].double() + torch.tensor([0.3, -0.5, 0.7, -0.2], dtype=torch.float64)  # never all 0
with torch.no_grad():
    current = response_logprobs(exact_model, ids, attention, sub_mask)
noise = torch.Generator().manual_seed(4)
old = torch.where(sub_mask, current + 0.2 * torch.randn(current.shape, generator=noise, dtype=torch.float64), 0.0)
ref = torch.where(sub_mask, current + 0.2 * torch.randn(current.shape, generator=noise, dtype=torch.float64), 0.0)
loss_options = dict(ref_logprobs=ref, clip_eps=0.2, kl_coef=0.1)
parameters = list(exact_model.parameters())


def loss_and_gradient(selection=None):
    logprobs = response_logprobs(exact_model, ids, attention, sub_mask, selection)
    loss = policy_loss(logprobs, old, sub_advantages, sub_mask,
                       weights=None if selection is None else selection.weights, **loss_options)
    return loss.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)])


full_loss, full_gradient = loss_and_gradient()
sub_lengths = sub_mask.sum(dim=1)
for cut_distribution in ("uniform-floor", "power"):
    budget = 0.4
    pi = rpc_inclusion_probabilities(sub_lengths, sub_mask.shape[1], budget, cut_distribution, dtype=torch.float64)
    expected_loss, expected_gradient, passes = 0.0, torch.zeros_like(full_gradient), 0
    for i in range(len(rows)):
        for c, probability in enumerate(rpc_cut_probabilities(int(sub_lengths[i]), budget, cut_distribution), 1):
            keep = torch.zeros_like(sub_mask)
            keep[i, :c] = True
            loss, gradient = loss_and_gradient(selection_from_keep(keep, pi, "rpc", budget, cut_distribution))
            expected_loss += probability * loss
            expected_gradient += probability * gradient
            passes += 1
    gradient_error = (expected_gradient - full_gradient).abs().max() / full_gradient.abs().max()
    print(f"{cut_distribution:14s} ({passes} truncated passes): E[L_NAT] = {expected_loss:+.10f}   "
          f"L_full = {full_loss:+.10f}   max |E[∇] − ∇_full| / max|∇_full| = {gradient_error:.1e}")
    assert torch.isclose(expected_loss, full_loss, rtol=1e-7, atol=1e-10)
    assert gradient_error < 1e-6     # Qwen3's RMSNorm runs in float32 even in a float64 model
assert full_gradient.abs().max() > 0, "the check is not vacuous"

# %% [markdown]
# ## 5. The price: variance against budget
#
# Unbiased is not free. One NAT draw gives a gradient $g_k$ that scatters around the full
# gradient $g_\text{full}$; its **relative variance** $E\lVert g_k - g_\text{full}\rVert^2 / \lVert g_\text{full}\rVert^2$
# is what the optimiser sees on top of the rollouts' own noise. We estimate it on the whole
# rollout batch (on-policy, $\mu = 1$, as in the trainer) for each design and budget, and put
# it next to what each draw costs: the tokens the transformer needs to read (`tokens_needed`).
# (`minnat.diagnostics.gradient_agreement` packages this measurement; here it is written out.)

# %%
def on_policy_gradient(selection=None):
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, mask, selection)
    loss = policy_loss(logprobs, logprobs.detach(), advantages, mask,
                       weights=None if selection is None else selection.weights)
    if not loss.requires_grad:
        return torch.zeros_like(full)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]).double()


full = torch.zeros(1)
full = on_policy_gradient()
full_tokens = tokens_needed(select_tokens(mask, "full"))
assert full.norm() > 0, "this batch needs a group with mixed rewards (change the questions or the seed)"
budgets, num_draws = [0.1, 0.25, 0.5, 0.75, 1.0], 16
compared = {name: designs[name] for name in ("URS", "RPC uniform-floor")}   # "power": see its tail below
variance = {name: [] for name in compared}
variance_error = {name: [] for name in compared}
cost = {name: [] for name in compared}
for name, (method, cut_distribution) in compared.items():
    generator = torch.Generator().manual_seed(5)
    for budget in budgets:
        squared_errors, tokens = [], []
        for _ in range(num_draws if budget < 1 else 1):   # ρ = 1 keeps everything: one draw says it all
            selection = select_tokens(mask, method, budget, generator, cut_distribution=cut_distribution)
            squared_errors.append(float((on_policy_gradient(selection) - full).norm() ** 2))
            tokens.append(tokens_needed(selection))
        relative = torch.tensor(squared_errors) / float(full.norm() ** 2)
        variance[name].append(float(relative.mean()))
        variance_error[name].append(float(relative.std() / len(relative) ** 0.5) if len(relative) > 1 else 0.0)
        cost[name].append(sum(tokens) / len(tokens) / full_tokens)
    print(f"{name:18s} relative variance " + "  ".join(f"ρ={b}: {v:9.3g}" for b, v in zip(budgets, variance[name])))

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
for name in compared:
    left.errorbar(budgets[:-1], variance[name][:-1], yerr=variance_error[name][:-1], marker="o", capsize=3, label=name)
    right.plot(budgets, cost[name], marker="o", label=name)
left.set(xlabel="budget ρ", ylabel="E‖g − g_full‖² / ‖g_full‖²", yscale="log",
         title=f"relative gradient variance of one draw (± s.e., {num_draws} draws)")
right.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="tokens ∝ ρ")
right.set(xlabel="budget ρ", ylabel="tokens the transformer must read / full", title="what one draw costs",
          ylim=(0, 1.05))
left.legend()
right.legend()
fig.tight_layout()
plt.show()

# %%
for name in compared:
    assert variance[name][-1] < 1e-8, f"{name}: ρ = 1 keeps every token, so no variance"
    assert variance[name][0] > variance[name][3] > 0, f"{name}: less budget, more variance"
    print(f"{name:18s} ± s.e. of those means: " + "  ".join(f"ρ={b}: {e:.2g}" for b, e in zip(budgets, variance_error[name])))
for index, budget in enumerate(budgets[:-1]):
    assert cost["RPC uniform-floor"][index] < cost["URS"][index], "RPC gives the model fewer tokens"
print("tokens needed / full:", {name: [round(c, 2) for c in values] for name, values in cost.items()})
assert min(cost["URS"][2:]) > 0.9, "from ρ = 0.5 on, URS runs the transformer over (almost) everything"
assert variance["RPC uniform-floor"][0] > variance["URS"][0], "at ρ = 0.1 RPC pays more variance than URS"

# %% [markdown]
# Reading the plots: the variance grows as the budget shrinks (ρ = 1 has none), and at small
# budgets RPC's is several times URS's: one cut decides all of a response's tokens at once, and
# the late tokens it keeps weigh up to $1/\alpha = 1/(0.2\rho)$ (50 at ρ = 0.1), where URS's
# weigh $1/\rho$ (10). The error bars (16 draws each, printed above) are wide at small budgets
# for the same reason: a few draws with large weights carry most of the mean — a heavy-tailed
# variance, which is why one draw per training step is noisier than its typical size suggests.
# On the cost side URS needs (almost) the whole sequence — only at tiny budgets does the
# last kept token sit noticeably before the end — while RPC's input shrinks with $\rho$
# (down to the prompt, which is always read).
#
# We left RPC's `power` family out of the measurement: its variance lives in a **tail** that
# a few draws rarely visit, so a small Monte Carlo sample would flatter it. The largest weight a draw can put on one
# token is $1/\min_t \pi_t$ — bounded by $1/(0.2\rho)$ for `uniform-floor`, but $|o|^{(1-\rho)/\rho}$
# for `power`, up to its floor: a float64 uniform takes the values $j/2^{53}$, so no sampler driven by
# one can keep a token with a probability below $2^{-53}$, and minnat floors `power`'s $\pi_t$ at
# $2^{-24}$ (`POWER_MIN_INCLUSION`, weights $\le 1.7\cdot 10^7$) rather than use weights that assume
# a law the sampler does not draw. For this batch's longest response:

# %%
longest = int(lengths.max())
print(f"largest possible HT weight on one token of a {longest}-token response:")
for budget in (0.1, 0.25, 0.5, 0.75):
    worst = {name: 1 / float(rpc_inclusion_probabilities(torch.tensor([longest]), longest, budget, distribution,
                                                         dtype=torch.float64)[0, -1])
             for name, distribution in (("uniform-floor", "uniform-floor"), ("power", "power"))}
    print(f"  ρ={budget:<5}  URS {1 / budget:8.3g}   RPC uniform-floor {worst['uniform-floor']:8.3g}   "
          f"RPC power {worst['power']:10.3g}")
    assert worst["uniform-floor"] <= 1 / (0.2 * budget) + 1e-9
power_tail = 1 / float(rpc_inclusion_probabilities(torch.tensor([longest]), longest, 0.1, "power",
                                                   dtype=torch.float64)[0, -1])
assert longest**9 > 2**53 and power_tail == 2**24, "power at ρ = 0.1: |o|^9 is beyond reach, π_t is floored at 2^-24"

# %% [markdown]
# A rare draw with a weight of $10^{7}$ on a single token can wreck an update, even
# though the estimator is unbiased: that is why minnat's default is `uniform-floor`. Whether
# RPC's extra variance is worth its cheaper steps is an empirical question — tutorial 4 runs
# the three methods side by side.
#
# ## 6. Why the $1/\pi_t$ matters: three conditions, two counter-examples
#
# Everything above rests on three conditions. Together they make the NAT loss an unbiased
# estimate of the full loss, and its gradient of the full gradient; drop any one and that
# stops being true:
#
# 1. **$\pi_t > 0$ on every response token.** A token that can never be kept adds nothing to
#    $E[\cdot]$, and no weight can bring it back.
# 2. **Each kept token weighs exactly $1/\pi_t$**, so that $E[w_t] = \pi_t \cdot 1/\pi_t = 1$.
# 3. **The normaliser and the selection are fixed given the batch.** $|o_i|$ (or $\sum|o_i|$,
#    or $B \cdot L_\max$) does not depend on which tokens the draw kept: dividing by the kept count
#    gives a ratio of two random numbers, and the mean of a ratio is not the ratio of the means.
#    The selection does not depend on $\theta$ either; it only decides which tokens the loss sees.
#    (A law that moved with $\theta$ would still give the right gradient at the current $\theta$
#    *if* its $\pi_t$ were known and positive. top-entropy fails condition 1, not this one.)
#
# Two token subsets that people try first make good counter-examples. minnat has both, always
# labelled as biased (`minnat.nat.select_tokens_biased`, `--method` in the trainer):
#
# * **rpc-unweighted**: RPC's cut, weight 1 on each kept token, normalised over the kept tokens
#   ($|o_i| \to C_i$). In other words, "train on the truncated answer". It breaks condition 2, since late tokens are
#   kept with probability $\pi_t < 1$ and nothing makes up for it, and condition 3, since the
#   normaliser $C_i$ is random.
# * **top-entropy**: keep the fraction $\rho$ of response tokens with the highest entropy under
#   the current policy, weight 1 (TRL's `top_entropy_quantile`, arXiv 2506.01939). It breaks
#   condition 1: the low-entropy tokens have $\pi_t = 0$. Its selection is a function of $\theta$ and
#   is the same every time.
#
# First the exact bias $\lVert E[g] - g_\text{full}\rVert / \lVert g_\text{full}\rVert$, by enumeration
# on the four short responses of section 4 (`minnat.diagnostics.exact_bias`: RPC-type losses that
# are sums of per-row terms are enumerated cut by cut, row by row).

# %%
from minnat.diagnostics import exact_bias, gradient_agreement, policy_gradient

exact = {method: exact_bias(exact_model, ids, attention, sub_mask, sub_advantages, method=method, budget=0.5)
         for method in ("rpc", "rpc-unweighted", "top-entropy")}
for result in exact.values():
    print(f"{result.label:28s} exact relative bias {result.relative_bias:.2e}   ({result.num_outcomes} outcomes)")
assert exact["rpc"].relative_bias < 1e-5, "NAT: zero, up to float32 rounding in RMSNorm"
assert exact["rpc-unweighted"].relative_bias > 0.05, "the truncated answer: a large bias"
assert exact["top-entropy"].relative_bias > 1000 * exact["rpc"].relative_bias, "top-entropy: small, but not zero"

# %% [markdown]
# rpc-unweighted is far off. top-entropy's bias is real (thousands of times NAT's rounding
# error) but small here, and the reason is instructive. The warm-started model is almost certain
# of most tokens, and a token with $\pi_\theta(o_t) \approx 1$ has $\nabla \log \pi_\theta(o_t) \approx 0$,
# so dropping it costs little gradient. That is the bet the 80/20 paper makes. How big the bias
# is depends on how peaked the policy is, and the bet stops paying once the low-entropy
# tokens carry gradient (a less confident policy, or a larger ρ of tokens dropped); the tests
# show a large bias on an untrained model.

# %% [markdown]
# On the whole batch we cannot enumerate, so we do what a learner would do: average $K$
# independent draws and watch the error of the average (`gradient_agreement`). With
# $b = E[g_k] - g_\text{full}$ and per-draw mean squared error $V$,
#
# $$ E\lVert \bar g_K - g_\text{full}\rVert^2 = \lVert b\rVert^2 + (V - \lVert b\rVert^2)/K . $$
#
# NAT has $b = 0$, so its error keeps falling like $1/\sqrt K$. The contrasts' error flattens at
# their bias, and no number of draws removes it. `gradient_agreement` also estimates
# $\lVert b\rVert^2$ from the draws (an unbiased U-statistic) with a jackknife standard error.

# %%
full_gradient = policy_gradient(model, batch.input_ids, batch.attention_mask, mask, advantages)
agreement = {method: gradient_agreement(model, batch.input_ids, batch.attention_mask, mask, advantages,
                                        method=method, budget=0.5, num_draws=32, seed=6, full_gradient=full_gradient)
             for method in ("rpc", "urs", "rpc-unweighted", "top-entropy")}
fig, axis = plt.subplots(figsize=(7, 4))
for method, result in agreement.items():
    line, = axis.plot(result.draws, result.relative_error, label=f"{result.label}: bias {result.bias:.2f} ± "
                                                                 f"{result.bias_standard_error:.2f}")
    axis.plot(result.draws, [result.predicted_relative_error(k) for k in result.draws], ls=":", color=line.get_color())
axis.set(xscale="log", yscale="log", xlabel="K draws averaged", ylabel="‖ḡ_K − g_full‖ / ‖g_full‖",
         title="average of K draws vs the full gradient (dotted: √(b² + (V − b²)/K))")
axis.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
from minnat.diagnostics import log_log_slope

for method in ("rpc", "urs"):
    result = agreement[method]
    print(f"{result.label}: log-log slope {log_log_slope(result.draws, result.relative_error):+.2f} (1/√K: −0.5)")
    assert result.relative_error[-1] < 2.5 * result.predicted_relative_error(result.num_draws), "NAT: about √(V/K)"
    assert result.bias_z < 3, "NAT: no bias that the draws can detect"
for method in ("rpc-unweighted", "top-entropy"):
    result = agreement[method]
    assert result.bias_z > 3 and result.relative_error[-1] > 0.8 * result.bias, "the contrasts flatten at their bias"
assert agreement["rpc"].relative_error[-1] < agreement["rpc-unweighted"].bias, "32 NAT draws beat the truncated answer"
print({method: f"bias {r.bias:.3f} ± {r.bias_standard_error:.3f} (z = {r.bias_z:.1f})" for method, r in agreement.items()})

# %% [markdown]
# With 32 draws NAT's curves are noisy. A few tokens carry most of this batch's gradient, so
# one draw that keeps or drops them moves the average a lot. Still, they follow the dotted
# $\sqrt{V/K}$ on average, and their estimated bias is within noise of 0.
# More draws make NAT's error as small as we like. The contrasts settle at an error of about
# their bias, however many draws are averaged, and that is also what each of their training steps
# is off by in expectation. Whether that bias hurts learning on a task is a separate question,
# answered by measurement: `scripts/compare_methods.py` trains all five.
#
# ## Summary
#
# * `select_tokens` draws URS ($\pi_t = \rho$) or RPC ($\pi_t = P(C \ge t)$, exact) selections with
#   HT weights $1/\pi_t$; the mean weight is 1 at every position.
# * Causal attention makes a prefix's log-probs independent of the suffix, so RPC computes
#   them on prompt + prefix only; URS must still run the whole sequence.
# * Enumerating every cut reproduces the full-token loss and gradient exactly, through the
#   truncated computation, with clipping and KL active.
# * Fewer tokens cost variance; RPC trades more variance than URS for a shorter pass.
# * Unbiasedness needs π_t > 0 everywhere, weights 1/π_t, and a normaliser and selection fixed
#   given the batch. rpc-unweighted and top-entropy each break some of these: their error flattens at their bias.
#
# **Next:** [tutorial 4](04_training_with_nat.ipynb) trains with full, URS and RPC.
