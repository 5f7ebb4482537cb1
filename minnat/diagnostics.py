"""Diagnostics: how well NAT's cheap gradients agree with full GRPO's, and what the weights look like.

NAT's promise is unbiasedness: for a fixed batch of rollouts, the gradient of the NAT loss
with Horvitz–Thompson weights w_{i,t} = keep_{i,t}/π_{i,t} averages, over the random
selection, to the full-token GRPO gradient:

    g_full = ∇_θ L_full(θ),      g_k = ∇_θ L_NAT(θ; selection k),      E_k[g_k] = g_full.

It is exact because L_NAT is linear in the weights and E[w_{i,t}] = π_{i,t}/π_{i,t} = 1.
What NAT pays for using fewer tokens is variance. With V = E‖g_k − g_full‖² (the per-draw
variance) and independent draws, the running average ḡ_K = (1/K) Σ_{k≤K} g_k has

    E‖ḡ_K − g_full‖² = V / K,    so    relative error ‖ḡ_K − g_full‖/‖g_full‖ ≈ √(V/K)/‖g_full‖,

falling like 1/√K. `gradient_agreement` measures exactly this on a real batch: the cosine
similarity and relative L2 error of ḡ_K against g_full for K = 1..N, and the per-draw variance
V/‖g_full‖² of the method (full: 0; URS and RPC: larger the smaller ρ). In training, one draw
is used per step — the per-draw variance is what the optimiser sees on top of the sampling
noise of the rollouts themselves.

`ht_weight_curves` is the picture behind the weights: π_t and 1/π_t against token position t
for one response length L, and the empirical mean of keep_t/π_t over N draws, which sits at 1
at every position (within its standard error √((1 − π_t)/(π_t·N))).

Shapes follow `minnat.logprobs`: input_ids and attention_mask [B, P + T], response_mask [B, T],
advantages [B]. Gradients are flattened over every trainable parameter into one float64 [D].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from minnat.grpo import policy_loss
from minnat.logprobs import response_logprobs
from minnat.nat import (METHODS, RPC_CUT_DISTRIBUTIONS, Selection, check_budget, rpc_inclusion_probabilities,
                        select_tokens)

MAX_DRAWS = 100_000  # a guard against typos (N = 10**9) rather than a real limit


# ----------------------------------------------------------------------------- gradients

def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters a GRPO step updates (tied embeddings appear once)."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def policy_gradient(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                    advantages: torch.Tensor, selection: Selection | None = None, *,
                    loss_agg: str = "seq-mean-token-mean", temperature: float = 1.0) -> torch.Tensor:
    """∇_θ of the on-policy GRPO loss, flattened -> float64 [D] (D = trainable parameter count).

    selection None (or method "full") gives g_full; a NAT selection gives g_k with weights
    keep/π_t. On-policy means log π_old = log π_θ (detached), as in a μ = 1 trainer step, so
    the ratio is 1, clipping is inactive and the gradient is −(1/N) Σ_i (Â_i/|o_i|) Σ_t w_{i,t}
    ∇ log π_θ(o_{i,t}) for the default aggregation.

    Uses torch.autograd.grad, so the model's .grad fields are never touched: a model shared
    with other readers (the app) is left exactly as it was.
    """
    parameters = trainable_parameters(model)
    logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection,
                                 temperature=temperature)
    loss = policy_loss(logprobs, logprobs.detach(), advantages.to(logprobs.dtype), response_mask,
                       weights=None if selection is None else selection.weights.to(logprobs.dtype),
                       loss_agg=loss_agg)
    if not loss.requires_grad:  # the draw kept no token at all: the loss is the constant 0
        return torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64)
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).detach().flatten().to(torch.float64).cpu()
                      for g, p in zip(gradients, parameters)])


@dataclass
class GradientAgreement:
    """How the average of K NAT gradients approaches the full-token gradient, K = 1..N.

    cosine[K−1]           cos(ḡ_K, g_full)             (1 means the same direction)
    relative_error[K−1]   ‖ḡ_K − g_full‖ / ‖g_full‖    (≈ √(per_draw_variance / K))
    draw_relative_errors  ‖g_k − g_full‖ / ‖g_full‖ of each single draw k
    per_draw_variance     V/‖g_full‖² = (1/N) Σ_k ‖g_k − g_full‖² / ‖g_full‖²: the relative
                          variance one NAT draw adds (0 for full)
    kept_fraction         mean over draws of kept tokens / response tokens (≈ ρ)
    """

    method: str
    budget: float
    cut_distribution: str | None
    num_draws: int
    cosine: list[float]
    relative_error: list[float]
    draw_relative_errors: list[float]
    per_draw_variance: float
    kept_fraction: float
    full_gradient_norm: float
    draw_kept_fractions: list[float] = field(default_factory=list)

    @property
    def draws(self) -> list[int]:
        """K = 1..N, the x-axis of `cosine` and `relative_error`."""
        return list(range(1, self.num_draws + 1))

    def predicted_relative_error(self, draws: int) -> float:
        """√(V/K)/‖g_full‖: what independent unbiased draws predict for the average of K of them."""
        return math.sqrt(self.per_draw_variance / draws)

    @property
    def label(self) -> str:
        if self.method == "full":
            return "full"
        suffix = f", {self.cut_distribution}" if self.method == "rpc" and self.cut_distribution != "uniform-floor" else ""
        return f"{self.method.upper()} ρ={self.budget:g}{suffix}"


def check_draws(num_draws, name: str = "num_draws") -> int:
    """N must be a whole number of draws, at least 1."""
    if isinstance(num_draws, float) and num_draws.is_integer():
        num_draws = int(num_draws)
    if not isinstance(num_draws, int) or isinstance(num_draws, bool) or not 1 <= num_draws <= MAX_DRAWS:
        raise ValueError(f"{name} must be a whole number of draws between 1 and {MAX_DRAWS}; got {num_draws!r}.")
    return num_draws


def gradient_agreement(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                       advantages: torch.Tensor, method: str = "rpc", budget: float = 0.5, num_draws: int = 32,
                       seed: int = 0, *, cut_distribution: str = "uniform-floor",
                       loss_agg: str = "seq-mean-token-mean", temperature: float = 1.0,
                       full_gradient: torch.Tensor | None = None, on_draw=None,
                       should_stop=None) -> GradientAgreement:
    """Compare N NAT gradients (and their running average) with the full-token GRPO gradient.

    input_ids, attention_mask  [B, P + T]  a rollout batch (`RolloutBatch` fields)
    response_mask              bool [B, T]
    advantages                 [B] Â_i (`minnat.grpo.group_advantages(batch.rewards, G)`)
    method, budget             "full", "urs" or "rpc" at ρ ∈ (0, 1]; cut_distribution for RPC
    num_draws                  N independent selections, drawn from torch.Generator(seed)
    full_gradient              g_full if already computed (`policy_gradient` with no selection),
                               to share it between several methods and budgets
    on_draw(k, g_k)            called after each draw (progress bars)
    should_stop()              checked before each draw; when it returns True the result covers
                               the draws done so far (at least one)

    Memory is O(D): only g_full, the running sum and the current g_k are kept.
    Raises ValueError when g_full = 0 (e.g. every group's rewards are equal, so Â_i = 0): the
    relative error is then undefined.
    """
    if method not in METHODS:
        raise ValueError(f"unknown NAT method {method!r}; choose one of {METHODS}.")
    if cut_distribution not in RPC_CUT_DISTRIBUTIONS:
        raise ValueError(f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}.")
    budget = check_budget(budget)
    num_draws = check_draws(num_draws)
    advantages = torch.as_tensor(advantages).to(input_ids.device)
    options = dict(loss_agg=loss_agg, temperature=temperature)
    if full_gradient is None:
        full_gradient = policy_gradient(model, input_ids, attention_mask, response_mask, advantages, **options)
    full_gradient = full_gradient.to(torch.float64).cpu()
    full_norm = float(full_gradient.norm())
    if not full_norm > 0.0:
        raise ValueError("the full-token GRPO gradient of this batch is zero, so there is nothing to agree with "
                         "(usually every group's rewards are equal, which makes every advantage Â_i = 0). "
                         "Sample a batch whose groups mix right and wrong answers: more prompts, a larger "
                         "group, or another seed.")

    generator = torch.Generator().manual_seed(int(seed))
    running_sum = torch.zeros_like(full_gradient)
    cosine, relative_error, draw_errors, kept = [], [], [], []
    for draw in range(1, num_draws + 1):
        if should_stop is not None and draw > 1 and should_stop():
            break
        selection = select_tokens(response_mask.cpu(), method, budget, generator,
                                  cut_distribution=cut_distribution).to(input_ids.device)
        gradient = policy_gradient(model, input_ids, attention_mask, response_mask, advantages, selection, **options)
        running_sum += gradient
        average = running_sum / draw
        relative_error.append(float((average - full_gradient).norm()) / full_norm)
        average_norm = float(average.norm())
        cosine.append(float(average @ full_gradient) / (average_norm * full_norm) if average_norm > 0 else 0.0)
        draw_errors.append(float((gradient - full_gradient).norm()) / full_norm)
        kept.append(selection.kept_fraction)
        if on_draw is not None:
            on_draw(draw, gradient)

    done = len(relative_error)
    return GradientAgreement(
        method=method, budget=budget, cut_distribution=cut_distribution if method == "rpc" else None,
        num_draws=done, cosine=cosine, relative_error=relative_error, draw_relative_errors=draw_errors,
        per_draw_variance=sum(error * error for error in draw_errors) / done,
        kept_fraction=sum(kept) / done, full_gradient_norm=full_norm, draw_kept_fractions=kept)


def log_log_slope(draws, errors) -> float:
    """Least-squares slope of log(error) against log(K); about −1/2 for unbiased averaging."""
    points = [(math.log(k), math.log(e)) for k, e in zip(draws, errors) if e > 0]
    if len(points) < 2:
        raise ValueError("a slope needs at least two draws with a non-zero error.")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


# ----------------------------------------------------------------------------- HT weight curves

@dataclass
class HTWeightCurves:
    """π_t, 1/π_t and the empirical mean HT weight against position t = 1..L, all float64 [L].

    inclusion_prob   π_t: probability that token t is kept
    weight           1/π_t: the HT weight a kept token t carries
    mean_weight      (1/N) Σ_k keep_{k,t}/π_t over N draws — an unbiased estimate of 1
    standard_error   √((1 − π_t)/(π_t·N)): the standard deviation of mean_weight around 1
    kept_fraction    mean over the N draws of kept tokens / L (≈ ρ)
    """

    method: str
    budget: float
    cut_distribution: str | None
    length: int
    num_draws: int
    positions: torch.Tensor
    inclusion_prob: torch.Tensor
    weight: torch.Tensor
    mean_weight: torch.Tensor
    standard_error: torch.Tensor
    kept_fraction: float

    @property
    def expected_kept_tokens(self) -> float:
        """Σ_t π_t: tokens one draw keeps on average (ρL for URS, within [ρL, ρL + 1] for RPC)."""
        return float(self.inclusion_prob.sum())

    @property
    def label(self) -> str:
        if self.method == "rpc":
            return f"RPC ({self.cut_distribution})"
        return self.method.upper() if self.method == "urs" else "full"


def ht_weight_curves(length: int, budget: float, method: str = "rpc", cut_distribution: str = "uniform-floor",
                     num_draws: int = 1000, seed: int = 0) -> HTWeightCurves:
    """π_t and 1/π_t for one response of `length` tokens, and the mean weight of N selection draws.

    The draws are made by `minnat.nat.select_tokens` on a [N, L] mask (one row per draw), so
    the curve is exactly what training uses.
    """
    if isinstance(length, float) and length.is_integer():
        length = int(length)
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a whole number of tokens, at least 1; got {length!r}.")
    if method not in METHODS:
        raise ValueError(f"unknown NAT method {method!r}; choose one of {METHODS}.")
    budget = check_budget(budget)
    num_draws = check_draws(num_draws)
    # π_t in float64 (the "power" family's tail probabilities are far below float32's range).
    if method == "full":
        inclusion_prob = torch.ones(length, dtype=torch.float64)
    elif method == "urs":
        inclusion_prob = torch.full((length,), budget, dtype=torch.float64)
    else:
        inclusion_prob = rpc_inclusion_probabilities(torch.tensor([length]), length, budget, cut_distribution,
                                                     dtype=torch.float64)[0]
    generator = torch.Generator().manual_seed(int(seed))
    keep_counts = torch.zeros(length, dtype=torch.float64)
    rows_per_chunk = max(1, 4_000_000 // length)  # keep each [rows, L] block around a few MB
    for first in range(0, num_draws, rows_per_chunk):
        rows = min(rows_per_chunk, num_draws - first)
        selection = select_tokens(torch.ones(rows, length, dtype=torch.bool), method, budget, generator,
                                  cut_distribution=cut_distribution)
        keep_counts += selection.keep.sum(dim=0).to(torch.float64)
    # mean_k keep_{k,t}/π_t, i.e. the average HT weight at position t (0 for the draws that drop t).
    mean_weight = keep_counts / (num_draws * inclusion_prob)
    return HTWeightCurves(
        method=method, budget=budget, cut_distribution=cut_distribution if method == "rpc" else None,
        length=length, num_draws=num_draws, positions=torch.arange(1, length + 1),
        inclusion_prob=inclusion_prob, weight=1.0 / inclusion_prob, mean_weight=mean_weight,
        standard_error=torch.sqrt((1.0 - inclusion_prob).clamp(min=0.0) / (inclusion_prob * num_draws)),
        kept_fraction=float(keep_counts.sum()) / (num_draws * length))
