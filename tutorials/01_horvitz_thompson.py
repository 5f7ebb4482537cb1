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
# # Tutorial 1 · The Horvitz–Thompson estimator
#
# NAT ("Not All Tokens Are Needed") trains a language model with GRPO on a **random subset**
# of the response tokens and still gets, in expectation, exactly the full-token loss and
# gradient. The whole trick is an estimator from survey sampling (Horvitz and Thompson, 1952):
# the **Horvitz–Thompson (HT) estimator**. This tutorial builds it from scratch, on plain
# numbers, before any language model appears:
#
# 1. estimating a total from a sample whose inclusion probabilities $\pi_t$ are known;
# 2. why it is unbiased, and what its variance is — both checked exactly (by enumerating
#    every possible sample) and by simulation;
# 3. how the choice of $\pi_t$ and the budget $\rho$ move the variance;
# 4. why the normaliser must stay the **full** token count $|o_i|$: dividing by the number
#    of kept tokens instead gives a biased estimator.
#
# Everything here runs in a few seconds on a CPU. The `assert` cells are the tutorial's
# claims: if one of them stopped being true, this notebook (which runs in CI) would fail.

# %%
import itertools
import pathlib
import sys

# Make `import minnat` work when the notebook is opened from tutorials/ without installing.
ROOT = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "minnat" / "nat.py").is_file())
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt
import torch

from minnat.nat import rpc_cut_probabilities, rpc_inclusion_probabilities, select_tokens

torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. The problem: a total over tokens we cannot all afford
#
# Take one response $o$ of $|o| = L$ tokens. Full-token GRPO needs, for every token $t$,
# a per-token term $\ell_t$ (the clipped policy-gradient surrogate; tutorial 2 writes it
# out) and then their total or mean:
#
# $$ Y = \sum_{t=1}^{|o|} \ell_t, \qquad \bar Y = \frac{1}{|o|} \sum_{t=1}^{|o|} \ell_t . $$
#
# Computing $\ell_t$ costs a pass through the model at position $t$. Suppose we may only
# afford about a fraction $\rho$ of the tokens. For now the $\ell_t$ are just fixed numbers:
# we pick a profile that grows along the response, because in real answers the late tokens
# (the final answer) are often the ones that matter most — which will make the mistakes in
# section 4 visible.

# %%
L = 12
positions = torch.arange(1, L + 1, dtype=torch.float64)
ell = 0.3 + torch.sin(positions / 2) ** 2 + 0.15 * positions   # any fixed numbers will do
Y = ell.sum()
print("ℓ_t =", ell)
print(f"Y = Σ ℓ_t = {Y:.4f}    mean Ȳ = {Y / L:.4f}")

# %% [markdown]
# ## 2. The estimator
#
# Draw a random subset of tokens: token $t$ is kept ($\mathrm{keep}_t = 1$) with a
# **known inclusion probability** $\pi_t = P(\mathrm{keep}_t = 1) > 0$. The
# Horvitz–Thompson estimator weights every kept term by $1/\pi_t$:
#
# $$ \hat Y_{\mathrm{HT}} = \sum_{t=1}^{|o|} \frac{\mathrm{keep}_t}{\pi_t}\, \ell_t
#    = \sum_{t=1}^{|o|} w_t\, \ell_t, \qquad w_t = \frac{\mathrm{keep}_t}{\pi_t}. $$
#
# **Unbiasedness** needs one line — linearity of expectation and $E[\mathrm{keep}_t] = \pi_t$:
#
# $$ E\big[\hat Y_{\mathrm{HT}}\big] = \sum_t \frac{E[\mathrm{keep}_t]}{\pi_t}\,\ell_t
#    = \sum_t \frac{\pi_t}{\pi_t}\,\ell_t = Y . $$
#
# Note what it did *not* need: independence between tokens. Only the marginal $\pi_t$ of each
# token matters for the mean — which is why RPC, whose kept tokens are strongly dependent
# (a prefix), is unbiased too (section 5).
#
# **Variance.** When tokens are kept independently (*Poisson sampling*; URS is the special
# case $\pi_t = \rho$), the terms are independent and $\mathrm{Var}(\mathrm{keep}_t/\pi_t) = (1-\pi_t)/\pi_t$, so
#
# $$ \mathrm{Var}\big(\hat Y_{\mathrm{HT}}\big) = \sum_t \frac{1 - \pi_t}{\pi_t}\, \ell_t^2 . $$
#
# It vanishes at $\pi_t = 1$ (keep everything) and blows up when some $\pi_t \to 0$.
#
# ### Exact check: enumerate every subset
#
# With $L = 12$ there are only $2^{12} = 4096$ possible keep-masks. Under URS at budget
# $\rho$, a mask with $k$ kept tokens has probability $\rho^k (1-\rho)^{L-k}$. We compute the
# expectation and variance of $\hat Y_{\mathrm{HT}}$ **exactly**, as a weighted sum over all masks.

# %%
rho = 0.25
all_masks = torch.tensor(list(itertools.product([0, 1], repeat=L)), dtype=torch.bool)   # [4096, L]
rho_t = torch.tensor(rho, dtype=torch.float64)
mask_probability = torch.where(all_masks, rho_t, 1 - rho_t).prod(dim=1)                  # P(mask)
pi_urs = torch.full((L,), rho, dtype=torch.float64)                                       # π_t = ρ

ht_estimates = (all_masks * ell / pi_urs).sum(dim=1)
exact_mean = (mask_probability * ht_estimates).sum()
exact_variance = (mask_probability * (ht_estimates - Y) ** 2).sum()
formula_variance = ((1 - pi_urs) / pi_urs * ell**2).sum()
print(f"Σ P(mask) = {mask_probability.sum():.15f}")
print(f"E[Ŷ_HT] = {exact_mean:.12f}   Y = {Y:.12f}")
print(f"Var exact = {exact_variance:.10f}   formula Σ(1−π)/π·ℓ² = {formula_variance:.10f}")

# %%
assert torch.isclose(mask_probability.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
assert torch.isclose(exact_mean, Y, rtol=1e-12), "HT must be exactly unbiased"
assert torch.isclose(exact_variance, formula_variance, rtol=1e-10), "Poisson-sampling variance formula"

# %% [markdown]
# ### The same with minnat's selection, by simulation
#
# In minnat the draw is `minnat.nat.select_tokens(response_mask, method, budget)`. It returns
# a `Selection` with the keep mask, the exact $\pi_t$ (`inclusion_prob`) and the HT weights
# $w_t = \mathrm{keep}_t/\pi_t$ (`weights`). Giving it $N$ identical rows of length $L$ makes
# $N$ independent draws at once. The simulated mean must sit within a few standard errors of
# $Y$, and the simulated variance must match the formula.

# %%
draws = 20_000
generator = torch.Generator().manual_seed(1)
selection = select_tokens(torch.ones(draws, L, dtype=torch.bool), "urs", rho, generator)
print("first draw: keep   ", selection.keep[0].int().tolist())
print("            π_t    ", selection.inclusion_prob[0].tolist())
print("            w_t    ", selection.weights[0].tolist())

estimates = (selection.weights.double() * ell).sum(dim=1)            # one Ŷ_HT per draw
standard_error = estimates.std() / draws**0.5
print(f"mean of {draws} draws = {estimates.mean():.4f} ± {standard_error:.4f}   (Y = {Y:.4f})")
print(f"variance of the draws = {estimates.var():.3f}   formula = {formula_variance:.3f}")
print(f"kept fraction = {selection.keep.double().mean():.4f}   (ρ = {rho})")

# %%
assert torch.equal(selection.weights, selection.keep / selection.inclusion_prob)
assert abs(estimates.mean() - Y) < 5 * standard_error
assert abs(estimates.var() / formula_variance - 1) < 0.05
assert abs(selection.keep.double().mean() - rho) < 0.01

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
left.hist(estimates.numpy(), bins=60, color="#1f77b4", alpha=0.8)
left.axvline(Y, color="k", lw=2, label="true total Y")
left.axvline(estimates.mean(), color="#d62728", ls="--", lw=2, label="mean of the estimates")
left.set(title=f"Ŷ_HT over {draws:,} URS draws (ρ = {rho})", xlabel="estimate", ylabel="draws")
left.legend()
running = estimates.cumsum(0) / torch.arange(1, draws + 1)
right.semilogx(torch.arange(1, draws + 1), running, color="#1f77b4", label="running mean of Ŷ_HT")
right.axhline(Y, color="k", lw=1)
band = formula_variance.sqrt() / torch.arange(1, draws + 1).double().sqrt()
right.fill_between(torch.arange(1, draws + 1), Y - 2 * band, Y + 2 * band, color="grey", alpha=0.3,
                   label="Y ± 2·sd/√N")
right.set(title="the running mean converges to Y", xlabel="number of draws N", ylabel="estimate")
right.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# A single draw can be far off (the histogram is wide: at $\rho = 1/4$ each kept term is
# multiplied by 4), but it is right **on average**. In training that is exactly what we
# need: stochastic gradient descent already averages noisy, unbiased gradients over steps.
# The price of using fewer tokens is variance, never bias.
#
# ## 3. Variance, the budget $\rho$ and the choice of $\pi_t$
#
# With Poisson sampling, the expected number of kept tokens is $\sum_t \pi_t$. Fix it at
# $\rho\,|o|$ and compare three ways of spreading it:
#
# * **uniform** $\pi_t = \rho$ (URS);
# * **proportional to size** $\pi_t \propto |\ell_t|$ (capped at 1): the variance-optimal
#   choice for a fixed expected sample size (a Lagrange-multiplier exercise on the variance
#   formula) — but it needs $\ell_t$ *before* sampling, and computing $\ell_t$ is precisely
#   the cost NAT wants to avoid, so NAT cannot use it;
# * **inversely proportional** $\pi_t \propto 1/|\ell_t|$: a deliberately bad choice.
#
# The lesson for NAT: $\pi_t$ must be chosen *without looking at the tokens*, and the
# variance is smallest when no large term gets a tiny $\pi_t$. Keep this in mind for RPC,
# whose $\pi_t$ decreases along the response.

# %%
def probabilities_with_budget(shape: torch.Tensor, budget: float) -> torch.Tensor:
    """π_t ∝ shape_t, capped at 1, with Σ π_t = budget · L (water-filling on the cap)."""
    pi = torch.zeros_like(shape)
    capped = torch.zeros_like(shape, dtype=torch.bool)
    for _ in range(len(shape)):
        free_budget = budget * len(shape) - capped.sum()
        pi = torch.where(capped, torch.ones_like(shape), shape * free_budget / shape[~capped].sum())
        if not (pi > 1).any():
            break
        capped |= pi > 1
    return pi.clamp(max=1.0)


def ht_variance(pi: torch.Tensor) -> torch.Tensor:
    return ((1 - pi) / pi * ell**2).sum()


budgets = torch.linspace(0.05, 1.0, 40).tolist()
curves = {"uniform π_t = ρ (URS)": [], "π_t ∝ ℓ_t (needs ℓ first)": [], "π_t ∝ 1/ℓ_t": []}
for budget in budgets:
    choices = [torch.full((L,), budget, dtype=torch.float64), probabilities_with_budget(ell, budget),
               probabilities_with_budget(1 / ell, budget)]
    for name, pi in zip(curves, choices):
        assert torch.isclose(pi.sum(), torch.tensor(budget * L, dtype=torch.float64)), "same expected budget"
        curves[name].append(float(ht_variance(pi)))

fig, axis = plt.subplots(figsize=(6.5, 3.8))
for (name, values), colour in zip(curves.items(), ("#1f77b4", "#2ca02c", "#d62728")):
    axis.semilogy(budgets, values, label=name, color=colour)
axis.set(xlabel="budget ρ (expected fraction of tokens kept)", ylabel="Var(Ŷ_HT)",
         title="HT variance against budget, same expected number of kept tokens")
axis.legend()
fig.tight_layout()
plt.show()

# %%
uniform, proportional, inverse = (torch.tensor(values) for values in curves.values())
assert (uniform[1:] < uniform[:-1]).all(), "more budget, less variance"
assert uniform[-1] == 0 and proportional[-1] == 0, "ρ = 1 keeps everything: no variance at all"
assert (proportional <= uniform + 1e-9).all() and (uniform <= inverse + 1e-9).all()

# %% [markdown]
# ## 4. The normaliser must stay the full count $|o_i|$
#
# GRPO does not sum the per-token terms of response $o_i$: it averages them,
# $\bar Y_i = \frac{1}{|o_i|}\sum_t \ell_{i,t}$. The HT version keeps the **same** constant
# denominator:
#
# $$ \hat{\bar Y}_{\mathrm{HT}} = \frac{1}{|o_i|} \sum_t w_{i,t}\, \ell_{i,t}, \qquad
#    E\big[\hat{\bar Y}_{\mathrm{HT}}\big] = \frac{1}{|o_i|} \sum_t \ell_{i,t} = \bar Y_i . $$
#
# It is tempting to "average over the tokens we actually used" instead. Three such
# variants, all with a **random** denominator:
#
# | estimator | formula | problem |
# |---|---|---|
# | HT, kept-count normaliser | $\sum_t w_t \ell_t \,/\, \sum_t \mathrm{keep}_t$ | the weights already scale up by $\approx 1/\rho$; dividing by the kept count scales up again |
# | plain mean of kept tokens | $\sum_t \mathrm{keep}_t \ell_t \,/\, \sum_t \mathrm{keep}_t$ | ignores $\pi_t$: over-represents tokens that are kept more often |
# | self-normalised (Hájek) | $\sum_t w_t \ell_t \,/\, \sum_t w_t$ | a ratio of two random sums: $E[A/B] \ne E[A]/E[B]$ |
#
# A ratio of random variables is biased in general. We compute every estimator's exact
# expectation under both of NAT's schemes:
#
# * **URS** — enumerate all $2^{12}$ masks as above (an empty draw gives a loss of 0, as a
#   sum over zero tokens does in training);
# * **RPC** — keep a random prefix $o_{1..C}$; minnat gives $P(C = c)$ for every cut
#   (`rpc_cut_probabilities`) and the exact $\pi_t = P(C \ge t)$ (`rpc_inclusion_probabilities`),
#   so there are only $L$ cases to enumerate.

# %%
def expectations(masks: torch.Tensor, probability: torch.Tensor, pi: torch.Tensor) -> dict:
    """Exact E[estimate] of each normalisation, over all masks with their probabilities."""
    keep = masks.double()
    weights = keep / pi
    kept = keep.sum(dim=1)
    safe = lambda numerator, denominator: torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300),
                                                      torch.zeros_like(numerator))
    estimators = {
        "HT, full |o| (NAT)": (weights * ell).sum(1) / L,
        "HT, kept count": safe((weights * ell).sum(1), kept),
        "mean of kept": safe((keep * ell).sum(1), kept),
        "Hájek Σwℓ/Σw": safe((weights * ell).sum(1), weights.sum(1)),
    }
    return {name: float((probability * values).sum()) for name, values in estimators.items()}


true_mean = float(Y / L)
rows = {}
for budget in (0.25, 0.5):
    b = torch.tensor(budget, dtype=torch.float64)
    urs_probability = torch.where(all_masks, b, 1 - b).prod(dim=1)
    rows[f"URS ρ={budget}"] = expectations(all_masks, urs_probability, torch.full((L,), budget, dtype=torch.float64))
    cut_probability = rpc_cut_probabilities(L, budget)                                    # P(C = c), c = 1..L
    prefix_masks = torch.arange(L).unsqueeze(0) < torch.arange(1, L + 1).unsqueeze(1)     # row c-1 keeps t ≤ c
    pi_rpc = rpc_inclusion_probabilities(torch.tensor([L]), L, budget, dtype=torch.float64)[0]
    assert torch.allclose((cut_probability.unsqueeze(1) * prefix_masks).sum(0), pi_rpc), "π_t = P(C ≥ t)"
    rows[f"RPC ρ={budget}"] = expectations(prefix_masks, cut_probability, pi_rpc)

relative_bias = {scheme: {name: value / true_mean - 1 for name, value in row.items()} for scheme, row in rows.items()}
print(f"true mean Ȳ = {true_mean:.4f}\n")
print(f"{'relative bias E[est]/Ȳ − 1':28s}" + "".join(f"{scheme:>14s}" for scheme in rows))
for name in next(iter(rows.values())):
    print(f"{name:28s}" + "".join(f"{relative_bias[scheme][name]:>+14.2%}" for scheme in rows))

# %%
fig, axis = plt.subplots(figsize=(8, 3.6))
names = list(next(iter(rows.values())))
width = 0.8 / len(rows)
for index, scheme in enumerate(rows):
    axis.bar([i + index * width for i in range(len(names))], [100 * relative_bias[scheme][n] for n in names],
             width=width, label=scheme)
axis.axhline(0, color="k", lw=0.8)
axis.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(names))], names)
axis.set(ylabel="bias of E[estimate] (%)", title="Exact bias of four normalisations (only NAT's is zero)")
axis.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the table:
#
# * **HT with the full $|o|$ is exactly unbiased under both schemes** — and it is what
#   `minnat.grpo.policy_loss(..., weights=selection.weights)` computes: every normaliser
#   ($|o_i|$ for GRPO, $\sum_i |o_i|$ for DAPO's token mean, $B \cdot T$ for Dr. GRPO) is
#   counted on the full response mask.
# * **HT with the kept count** inflates the loss: under URS by about a factor $1/\rho$
#   (+100 % at $\rho = 1/2$, almost +300 % at $\rho = 1/4$), under RPC by tens of percent.
# * **The plain mean of the kept tokens** looks harmless under URS (all $\pi_t$ are equal, so
#   given the number kept it is a simple random sample; the only bias comes from the rare
#   empty draw, probability $(1-\rho)^{|o|}$), but under RPC it averages over prefixes only and
#   systematically under-weights late tokens.
# * **Hájek** fixes the scale but, as a ratio, stays biased under RPC (under URS all weights
#   are equal and it coincides with the plain mean of the kept tokens).

# %%
for scheme, row in relative_bias.items():
    assert abs(row["HT, full |o| (NAT)"]) < 1e-12, f"NAT's estimator must be exactly unbiased under {scheme}"
    assert row["HT, kept count"] > 0.3, "the kept-count normaliser inflates the loss"
for budget in (0.25, 0.5):
    assert relative_bias[f"RPC ρ={budget}"]["mean of kept"] < -0.05, "prefix means under-weight late tokens"
    assert abs(relative_bias[f"RPC ρ={budget}"]["Hájek Σwℓ/Σw"]) > 0.005, "a ratio estimator is biased"
assert abs(relative_bias["URS ρ=0.25"]["mean of kept"] + 0.75**L) < 1e-12, "URS: bias = −P(empty draw)"

# %% [markdown]
# ## 5. Dependent inclusions: the variance of a random prefix
#
# RPC keeps a prefix $o_{1..C}$, so inclusions are far from independent: if token $t$ is
# kept, every earlier token is too. Unbiasedness only used the marginals $\pi_t$ and still
# holds (section 4 checked it exactly). The variance, though, now needs the **joint**
# inclusion probabilities $\pi_{st} = P(\mathrm{keep}_s = \mathrm{keep}_t = 1)$:
#
# $$ \mathrm{Var}\big(\hat Y_{\mathrm{HT}}\big) = \sum_{s}\sum_{t} \frac{\pi_{st} - \pi_s \pi_t}{\pi_s \pi_t}\, \ell_s \ell_t,
#    \qquad \text{for a prefix: } \pi_{st} = P(C \ge \max(s,t)) = \pi_{\max(s,t)} . $$
#
# (With independent inclusions $\pi_{st} = \pi_s\pi_t$ for $s \ne t$ and the formula
# collapses to section 2's.) Let us check it against exact enumeration of the cuts and
# compare with URS at the same budget.

# %%
for budget in (0.25, 0.5):
    cut_probability = rpc_cut_probabilities(L, budget)
    pi_rpc = rpc_inclusion_probabilities(torch.tensor([L]), L, budget, dtype=torch.float64)[0]
    prefix_estimates = (prefix_masks.double() / pi_rpc * ell).sum(dim=1)
    exact_rpc_variance = (cut_probability * (prefix_estimates - Y) ** 2).sum()
    index = torch.arange(L)
    joint = pi_rpc[torch.maximum(index.unsqueeze(0), index.unsqueeze(1))]                 # π_st = π_max(s,t)
    formula_rpc_variance = ((joint - pi_rpc.outer(pi_rpc)) / pi_rpc.outer(pi_rpc) * ell.outer(ell)).sum()
    urs_variance = ht_variance(torch.full((L,), budget, dtype=torch.float64))
    print(f"ρ={budget}: Var RPC exact {exact_rpc_variance:8.3f}  formula {formula_rpc_variance:8.3f}   "
          f"(URS at the same budget: {urs_variance:.3f};  E[kept] RPC {pi_rpc.sum():.2f}, URS {budget * L:.2f})")
    assert torch.isclose(exact_rpc_variance, formula_rpc_variance, rtol=1e-10)
    assert torch.isclose((cut_probability * prefix_estimates).sum(), Y, rtol=1e-12)
    assert exact_rpc_variance > urs_variance, "one cut per response: more variance than URS here"

# %% [markdown]
# At the same budget RPC's variance is here an order of magnitude larger than URS's: its kept
# tokens are all-or-nothing correlated (one cut decides them all), and late tokens are kept
# rarely (small $\pi_t$, large weight $1/\pi_t$) — exactly where this profile's terms are
# largest. What RPC buys with that variance is a **much cheaper computation**: the model can
# stop reading at the cut, which tutorial 3 shows is exact because of causal attention. In
# training, the variance is further averaged over the many responses of a batch and over
# steps (tutorial 3 measures it on real gradients).
#
# ## Summary
#
# * $\hat Y_{\mathrm{HT}} = \sum_t \frac{\mathrm{keep}_t}{\pi_t}\ell_t$ is unbiased for any
#   sampling design with known $\pi_t > 0$ — independent (URS) or dependent (RPC).
# * The variance depends on the design; with independent sampling it is
#   $\sum_t \frac{1-\pi_t}{\pi_t}\ell_t^2$, decreasing in $\rho$ and zero at $\rho = 1$.
# * The normaliser is part of the estimator: keep $|o_i|$ (or the batch's full token count).
#   Any data-dependent denominator makes a ratio, and ratios are biased.
#
# **Next:** [tutorial 2](02_grpo_from_scratch.ipynb) writes the GRPO loss whose per-token
# terms $\ell_{i,t}$ we have been estimating.
