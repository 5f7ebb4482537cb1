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

**Bias.** The contrasts (`minnat.nat.BIASED_METHODS`: rpc-unweighted, top-entropy) break
unbiasedness on purpose. With b = E_k[g_k] − g_full,

    E‖ḡ_K − g_full‖² = ‖b‖² + (V − ‖b‖²)/K,

so their error flattens at the relative bias ‖b‖/‖g_full‖ instead of falling like 1/√K.
`exact_bias` computes it exactly by enumerating every outcome of the selection on a tiny
batch (every cut combination, every URS mask, every stratified offset interval).
On a real batch `gradient_agreement` (and `selection_bias`) estimates it from the N draws,
with d_k = g_k − g_full, by the unbiased U-statistic

    ‖b‖² ≈ (‖Σ_k d_k‖² − Σ_k ‖d_k‖²) / (N(N − 1))        (the diagonal removed: E[d_k·d_l] = ‖b‖², k ≠ l)

and a jackknife standard error over groups of draws. NAT's estimate sits within a few
standard errors of 0; the contrasts' sits many standard errors above it.

`ht_weight_curves` is the picture behind the weights: π_t and 1/π_t against token position t
for one response length L, and the empirical mean of keep_t/π_t over N draws, which sits at 1
at every position (within its standard error √((1 − π_t)/(π_t·N))).

Shapes follow `minnat.logprobs`: input_ids and attention_mask [B, P + T], response_mask [B, T],
advantages [B]. Gradients are flattened over every trainable parameter into one float64 [D].
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch

from minnat.entropy import response_entropies
from minnat.grpo import policy_loss
from minnat.logprobs import response_logprobs
from minnat.nat import (ALL_METHODS, BIASED_METHODS, METHODS, RPC_CUT_DISTRIBUTIONS, Selection, check_budget,
                        check_method_options, check_response_mask, rpc_cut_probabilities,
                        rpc_inclusion_probabilities, select_for_method, select_tokens, selection_from_keep,
                        stratified_cut_law)

MAX_DRAWS = 100_000  # a guard against typos (N = 10**9) rather than a real limit


# ----------------------------------------------------------------------------- gradients

def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters a GRPO step updates (tied embeddings appear once)."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def policy_gradient(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                    advantages: torch.Tensor, selection: Selection | None = None, *,
                    loss_agg: str = "seq-mean-token-mean", temperature: float = 1.0,
                    max_new_tokens: int | None = None) -> torch.Tensor:
    """∇_θ of the on-policy GRPO loss, flattened -> float64 [D] (D = trainable parameter count).

    selection None (or method "full") gives g_full; a NAT selection gives g_k with weights
    keep/π_t. On-policy means log π_old = log π_θ (detached), as in a μ = 1 trainer step, so
    the ratio is 1, clipping is inactive and the gradient is −(1/N) Σ_i (Â_i/|o_i|) Σ_t w_{i,t}
    ∇ log π_θ(o_{i,t}) for the default aggregation. max_new_tokens: the generation limit, needed
    by Dr. GRPO's constant normaliser (default: the batch's response columns).

    Uses torch.autograd.grad, so the model's .grad fields are never touched: a model shared
    with other readers (the app) is left exactly as it was.
    """
    parameters = trainable_parameters(model)
    logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection,
                                 temperature=temperature)
    # NAT normalises over the full response mask; rpc-unweighted (biased) over its kept tokens.
    loss_mask = response_mask if selection is None else selection.loss_mask(response_mask)
    loss = policy_loss(logprobs, logprobs.detach(), advantages.to(logprobs.dtype), loss_mask,
                       weights=None if selection is None else selection.weights.to(logprobs.dtype),
                       loss_agg=loss_agg, max_new_tokens=max_new_tokens or response_mask.shape[1])
    if not loss.requires_grad:  # the draw kept no token at all: the loss is the constant 0
        return torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64)
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).detach().flatten().to(torch.float64).cpu()
                      for g, p in zip(gradients, parameters)])


@dataclass
class GradientAgreement:
    """How the average of K selection gradients approaches the full-token gradient, K = 1..N.

    cosine[K−1]           cos(ḡ_K, g_full)             (1 means the same direction)
    relative_error[K−1]   ‖ḡ_K − g_full‖ / ‖g_full‖    (≈ √(bias² + (V − bias²)/K))
    draw_relative_errors  ‖g_k − g_full‖ / ‖g_full‖ of each single draw k
    per_draw_variance     V/‖g_full‖² = (1/N) Σ_k ‖g_k − g_full‖² / ‖g_full‖²: the relative
                          mean squared error of one draw (0 for full; bias² + variance)
    kept_fraction         mean over draws of kept tokens / response tokens (≈ ρ)
    bias_squared          unbiased estimate of ‖E[g_k] − g_full‖²/‖g_full‖² (may be < 0 by noise)
    bias_squared_standard_error  its jackknife standard error over groups of draws
    bias                  √max(bias_squared, 0): the relative bias (NAT: 0 up to noise)
    bias_standard_error   jackknife standard error of `bias`
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
    cut_sampling: str | None = None
    bias_squared: float = 0.0
    bias_squared_standard_error: float = 0.0
    bias: float = 0.0
    bias_standard_error: float = 0.0

    @property
    def draws(self) -> list[int]:
        """K = 1..N, the x-axis of `cosine` and `relative_error`."""
        return list(range(1, self.num_draws + 1))

    @property
    def biased(self) -> bool:
        """True for the contrasts (the method is biased by construction, whatever the estimate says)."""
        return self.method in BIASED_METHODS

    @property
    def bias_z(self) -> float:
        """bias_squared / its standard error: how many standard errors the bias is away from 0."""
        if self.bias_squared_standard_error > 0:
            return self.bias_squared / self.bias_squared_standard_error
        return math.inf if self.bias_squared > 0 else 0.0

    def predicted_relative_error(self, draws: int) -> float:
        """√(bias² + (V − bias²)/K): the expected error of the average of K draws (√(V/K) when unbiased)."""
        bias_squared = min(max(self.bias_squared, 0.0), self.per_draw_variance)
        return math.sqrt(bias_squared + (self.per_draw_variance - bias_squared) / draws)

    @property
    def label(self) -> str:
        return method_label(self.method, self.budget, self.cut_distribution, self.cut_sampling)


def method_label(method: str, budget: float, cut_distribution: str | None = None,
                 cut_sampling: str | None = None) -> str:
    """"RPC ρ=0.5", "rpc-unweighted ρ=0.5 (biased)", ... for plots and tables."""
    if method == "full":
        return "full"
    name = method.upper() if method in METHODS else method
    extras = [part for part in (cut_distribution if cut_distribution not in (None, "uniform-floor") else None,
                                "stratified" if cut_sampling == "stratified" else None) if part]
    suffix = f", {', '.join(extras)}" if extras else ""
    return f"{name} ρ={budget:g}{suffix}" + (" (biased)" if method in BIASED_METHODS else "")


def check_draws(num_draws, name: str = "num_draws") -> int:
    """N must be a whole number of draws, at least 1."""
    if isinstance(num_draws, float) and num_draws.is_integer():
        num_draws = int(num_draws)
    if not isinstance(num_draws, int) or isinstance(num_draws, bool) or not 1 <= num_draws <= MAX_DRAWS:
        raise ValueError(f"{name} must be a whole number of draws between 1 and {MAX_DRAWS}; got {num_draws!r}.")
    return num_draws


class BiasAccumulator:
    """Streams d_k = (g_k − g_full)/‖g_full‖ into group sums: the U-statistic ‖b‖² and its jackknife error.

    Draw k goes to group k mod M. Memory O(M·D).
    """

    def __init__(self, dimension: int, groups: int):
        self.sums = torch.zeros(groups, dimension, dtype=torch.float64)
        self.squares = torch.zeros(groups, dtype=torch.float64)
        self.counts = torch.zeros(groups, dtype=torch.float64)
        self.seen = 0

    def add(self, difference: torch.Tensor) -> None:
        group = self.seen % self.sums.shape[0]
        self.sums[group] += difference
        self.squares[group] += difference @ difference
        self.counts[group] += 1
        self.seen += 1

    @staticmethod
    def _estimate(total_sum_squared, squares, count):
        return (total_sum_squared - squares) / (count * (count - 1)) if count > 1 else float("nan")

    def result(self) -> tuple[float, float, float, float]:
        """(bias², its standard error, bias, its standard error), all relative to ‖g_full‖."""
        total = self.sums.sum(dim=0)
        total_squared, squares, count = float(total @ total), float(self.squares.sum()), float(self.counts.sum())
        estimate = self._estimate(total_squared, squares, count)
        used = [group for group in range(self.sums.shape[0]) if self.counts[group] > 0]
        if not math.isfinite(estimate):  # a single draw: no estimate
            return 0.0, math.inf, 0.0, math.inf
        if count < 3 or len(used) < 2:
            return estimate, math.inf, math.sqrt(max(estimate, 0.0)), math.inf
        leave_out, leave_out_root = [], []
        for group in used:
            rest = total - self.sums[group]
            value = self._estimate(float(rest @ rest), squares - float(self.squares[group]),
                                   count - float(self.counts[group]))
            leave_out.append(value)
            leave_out_root.append(math.sqrt(max(value, 0.0)))

        def jackknife(values):
            mean = sum(values) / len(values)
            return math.sqrt((len(values) - 1) / len(values) * sum((v - mean) ** 2 for v in values))

        return estimate, jackknife(leave_out), math.sqrt(max(estimate, 0.0)), jackknife(leave_out_root)


def gradient_agreement(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                       advantages: torch.Tensor, method: str = "rpc", budget: float = 0.5, num_draws: int = 32,
                       seed: int = 0, *, cut_distribution: str = "uniform-floor", cut_sampling: str = "independent",
                       loss_agg: str = "seq-mean-token-mean", temperature: float = 1.0,
                       max_new_tokens: int | None = None, full_gradient: torch.Tensor | None = None,
                       on_draw=None, should_stop=None, bias_groups: int = 10) -> GradientAgreement:
    """Compare N selection gradients (and their running average) with the full-token GRPO gradient.

    input_ids, attention_mask  [B, P + T]  a rollout batch (`RolloutBatch` fields)
    response_mask              bool [B, T]
    advantages                 [B] Â_i (`minnat.grpo.group_advantages(batch.rewards, G)`)
    method, budget             any of `minnat.nat.ALL_METHODS` at ρ ∈ (0, 1]: the NAT methods "full",
                               "urs", "rpc", or the biased contrasts "rpc-unweighted", "top-entropy"
    cut_distribution, cut_sampling  RPC's cut family and "independent" / "stratified" cuts
    num_draws                  N independent selections, drawn from torch.Generator(seed)
    full_gradient              g_full if already computed (`policy_gradient` with no selection),
                               to share it between several methods and budgets
    on_draw(k, g_k)            called after each draw (progress bars)
    should_stop()              checked before each draw; when it returns True the result covers
                               the draws done so far (at least one)
    bias_groups                M groups of draws for the jackknife error of the bias

    Memory is O(M·D). top-entropy is deterministic given θ: its entropies are computed once
    and every draw is the same, so its error is its bias at every K.
    Raises ValueError when g_full = 0 (e.g. every group's rewards are equal, so Â_i = 0): the
    relative error is then undefined.
    """
    check_method_options(method, cut_distribution, cut_sampling, methods=ALL_METHODS)
    budget = check_budget(budget)
    num_draws = check_draws(num_draws)
    advantages = torch.as_tensor(advantages).to(input_ids.device)
    options = dict(loss_agg=loss_agg, temperature=temperature, max_new_tokens=max_new_tokens)
    full_gradient, full_norm, entropies = gradient_reference(model, input_ids, attention_mask, response_mask,
                                                             advantages, method, full_gradient, **options)

    generator = torch.Generator().manual_seed(int(seed))
    running_sum = torch.zeros_like(full_gradient)
    bias = BiasAccumulator(full_gradient.numel(), max(2, int(bias_groups)))
    cosine, relative_error, draw_errors, kept = [], [], [], []
    for draw in range(1, num_draws + 1):
        if should_stop is not None and draw > 1 and should_stop():
            break
        selection = select_for_method(response_mask.cpu(), method, budget, generator, entropies=entropies,
                                      cut_distribution=cut_distribution,
                                      cut_sampling=cut_sampling).to(input_ids.device)
        gradient = policy_gradient(model, input_ids, attention_mask, response_mask, advantages, selection, **options)
        running_sum += gradient
        bias.add((gradient - full_gradient) / full_norm)
        average = running_sum / draw
        relative_error.append(float((average - full_gradient).norm()) / full_norm)
        average_norm = float(average.norm())
        cosine.append(float(average @ full_gradient) / (average_norm * full_norm) if average_norm > 0 else 0.0)
        draw_errors.append(float((gradient - full_gradient).norm()) / full_norm)
        kept.append(selection.kept_fraction)
        if on_draw is not None:
            on_draw(draw, gradient)

    done = len(relative_error)
    bias_squared, bias_squared_error, relative_bias, relative_bias_error = bias.result()
    if method == "top-entropy" or method == "full":  # deterministic: every draw is the same, the bias is exact
        bias_squared, bias_squared_error = relative_error[0] ** 2, 0.0
        relative_bias, relative_bias_error = relative_error[0], 0.0
    rpc_like = method in ("rpc", "rpc-unweighted")
    return GradientAgreement(
        method=method, budget=budget, cut_distribution=cut_distribution if rpc_like else None,
        num_draws=done, cosine=cosine, relative_error=relative_error, draw_relative_errors=draw_errors,
        per_draw_variance=sum(error * error for error in draw_errors) / done,
        kept_fraction=sum(kept) / done, full_gradient_norm=full_norm, draw_kept_fractions=kept,
        cut_sampling=cut_sampling if rpc_like else None, bias_squared=bias_squared,
        bias_squared_standard_error=bias_squared_error, bias=relative_bias, bias_standard_error=relative_bias_error)


def gradient_reference(model, input_ids, attention_mask, response_mask, advantages, method, full_gradient=None,
                       **options):
    """What every comparison against full GRPO starts from -> (g_full, ‖g_full‖, entropies or None).

    The entropies are the policy's per-token entropies [B, T], needed only by "top-entropy"
    (computed once: that contrast is deterministic given θ)."""
    full_gradient, full_norm = checked_full_gradient(model, input_ids, attention_mask, response_mask, advantages,
                                                     full_gradient, **options)
    entropies = (response_entropies(model, input_ids, attention_mask, response_mask,
                                    temperature=options["temperature"]).cpu() if method == "top-entropy" else None)
    return full_gradient, full_norm, entropies


def checked_full_gradient(model, input_ids, attention_mask, response_mask, advantages, full_gradient=None,
                          **options) -> tuple[torch.Tensor, float]:
    """g_full (float64 [D] on CPU) and ‖g_full‖, with a clear error when it is zero."""
    if full_gradient is None:
        full_gradient = policy_gradient(model, input_ids, attention_mask, response_mask, advantages, **options)
    full_gradient = full_gradient.to(torch.float64).cpu()
    full_norm = float(full_gradient.norm())
    if not full_norm > 0.0:
        raise ValueError("the full-token GRPO gradient of this batch is zero, so there is nothing to agree with "
                         "(usually every group's rewards are equal, which makes every advantage Â_i = 0). "
                         "Sample a batch whose groups mix right and wrong answers: more prompts, a larger "
                         "group, or another seed.")
    return full_gradient, full_norm


# ----------------------------------------------------------------------------- bias

@dataclass
class SelectionBias:
    """‖E[g] − g_full‖ / ‖g_full‖ of one selection method on one batch.

    exact            True: E[g] by enumerating every outcome with its probability (standard errors 0);
                     False: Monte Carlo over num_outcomes draws (`gradient_agreement`'s estimate)
    relative_bias    ‖E[g] − g_full‖/‖g_full‖ (Monte Carlo: √max(bias², 0))
    standard_error   of relative_bias (jackknife; 0 when exact)
    bias_squared, bias_squared_standard_error   the squared bias and its error (the test statistic)
    num_outcomes     outcomes enumerated (exact) or draws made (Monte Carlo)
    """

    method: str
    budget: float
    cut_distribution: str | None
    cut_sampling: str | None
    exact: bool
    relative_bias: float
    standard_error: float
    bias_squared: float
    bias_squared_standard_error: float
    num_outcomes: int

    @property
    def z(self) -> float:
        """Standard errors between the squared bias and 0 (inf when exact and non-zero)."""
        if self.bias_squared_standard_error > 0:
            return self.bias_squared / self.bias_squared_standard_error
        return math.inf if self.bias_squared > 1e-10 else 0.0

    @property
    def label(self) -> str:
        return method_label(self.method, self.budget, self.cut_distribution, self.cut_sampling)


def selection_bias(model, input_ids, attention_mask, response_mask, advantages, method: str = "rpc",
                   budget: float = 0.5, num_draws: int = 64, seed: int = 0, **options) -> SelectionBias:
    """Monte Carlo bias of a method on a real batch: N draws, with a jackknife standard error.
    Options as `gradient_agreement` (cut_distribution, cut_sampling, loss_agg, temperature, full_gradient)."""
    result = gradient_agreement(model, input_ids, attention_mask, response_mask, advantages, method, budget,
                                num_draws, seed, **options)
    return SelectionBias(method=result.method, budget=result.budget, cut_distribution=result.cut_distribution,
                         cut_sampling=result.cut_sampling, exact=False, relative_bias=result.bias,
                         standard_error=result.bias_standard_error, bias_squared=result.bias_squared,
                         bias_squared_standard_error=result.bias_squared_standard_error,
                         num_outcomes=result.num_draws)


def selection_outcomes(response_mask: torch.Tensor, method: str, budget: float, *, entropies=None,
                       cut_distribution: str = "uniform-floor", cut_sampling: str = "independent",
                       max_outcomes: int = 4096):
    """Every outcome of one selection with its probability: yields (Selection, probability).

    full and top-entropy have one outcome; URS 2^(Σ|o_i|) masks; RPC and rpc-unweighted every
    combination of cuts (independent: the product of each row's law; stratified: the exact
    joint law, `minnat.nat.stratified_cut_law`).
    """
    lengths = check_response_mask(response_mask)
    mask = response_mask.bool()
    columns = mask.shape[1]
    if method in ("full", "top-entropy"):
        yield select_for_method(mask, method, budget, entropies=entropies), 1.0
        return
    if method == "urs":
        positions = mask.nonzero().tolist()
        if 2 ** len(positions) > max_outcomes:
            raise ValueError(f"URS on {len(positions)} response tokens has 2^{len(positions)} outcomes, more than "
                             f"max_outcomes={max_outcomes}; use a smaller batch or the Monte Carlo selection_bias.")
        pi = mask.float() * budget
        for bits in itertools.product([False, True], repeat=len(positions)):
            keep = torch.zeros_like(mask)
            for (row, column), bit in zip(positions, bits):
                keep[row, column] = bit
            kept = sum(bits)
            yield selection_from_keep(keep, pi, "urs", budget), budget ** kept * (1 - budget) ** (len(bits) - kept)
        return
    if cut_sampling == "stratified":
        law = stratified_cut_law(lengths, budget, cut_distribution)
    else:
        count = math.prod(max(int(length), 1) for length in lengths)
        if count > max_outcomes:
            raise ValueError(f"{count} cut combinations exceed max_outcomes={max_outcomes}; use shorter responses "
                             "or the Monte Carlo selection_bias.")
        choices = [list(zip(range(1, int(length) + 1), rpc_cut_probabilities(int(length), budget,
                                                                             cut_distribution).tolist()))
                   if length else [(0, 1.0)] for length in lengths]
        law = [(torch.tensor([cut for cut, _ in combo]), math.prod(p for _, p in combo))
               for combo in itertools.product(*choices)]
    pi = rpc_inclusion_probabilities(lengths, columns, budget, cut_distribution)
    for cuts, probability in law:
        keep = torch.arange(columns).unsqueeze(0) < cuts.unsqueeze(1)
        selection = selection_from_keep(keep, pi, "rpc", budget, cut_distribution)
        if method == "rpc-unweighted":  # the same cuts, weight 1, normalised over the kept tokens
            selection = dataclasses.replace(selection, method=method, weights=keep.float(), normaliser_mask=keep)
        yield selection, probability


def row_separable(method: str, loss_agg: str) -> bool:
    """True when an RPC-type loss is a sum of per-row terms with constant weights, so E[g] needs each
    row's cut law only (Σ_i |o_i| passes instead of Π_i |o_i|; stratified cuts have the same marginals).
    rpc-unweighted under token-mean divides by Σ_i C_i, which couples the rows."""
    if method not in ("rpc", "rpc-unweighted"):
        return False
    return loss_agg in ("seq-mean-token-mean", "seq-mean-token-sum-norm") or (loss_agg == "token-mean"
                                                                             and method == "rpc")


def expected_gradient_by_rows(model, input_ids, attention_mask, response_mask, advantages, method, budget,
                              cut_distribution, *, loss_agg, **options):
    """E[g] = Σ_i share_i Σ_c P(C_i = c) g_i(c), g_i(c) the gradient of row i alone cut at c.

    share_i turns row i's one-row loss into its part of the batch loss: 1/N (N rows with tokens) for
    seq-mean-token-mean, |o_i|/Σ|o| for token-mean, 1/B for seq-mean-token-sum-norm.
    Returns (E[g] float64 [D], total probability / rows, passes).
    """
    lengths = check_response_mask(response_mask.cpu())
    rows = [row for row in range(lengths.shape[0]) if lengths[row] > 0]
    share = {"seq-mean-token-mean": lambda row: 1.0 / len(rows),
             "token-mean": lambda row: float(lengths[row]) / float(lengths.sum()),
             "seq-mean-token-sum-norm": lambda row: 1.0 / lengths.shape[0]}[loss_agg]
    expected, probability_sum, passes = None, 0.0, 0
    columns = response_mask.shape[1]
    for row in rows:
        index = slice(row, row + 1)
        length = int(lengths[row])
        pi = rpc_inclusion_probabilities(lengths[index], columns, budget, cut_distribution)
        for cut, probability in enumerate(rpc_cut_probabilities(length, budget, cut_distribution).tolist(), 1):
            keep = torch.arange(columns).unsqueeze(0) < cut
            selection = selection_from_keep(keep, pi, "rpc", budget, cut_distribution)
            if method == "rpc-unweighted":
                selection = dataclasses.replace(selection, method=method, weights=keep.float(), normaliser_mask=keep)
            gradient = policy_gradient(model, input_ids[index], attention_mask[index], response_mask[index],
                                       advantages[index], selection.to(input_ids.device), loss_agg=loss_agg,
                                       **options)
            term = probability * share(row) * gradient
            expected = term if expected is None else expected + term
            probability_sum += probability / len(rows)
            passes += 1
    return expected, probability_sum, passes


def exact_bias(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
               advantages: torch.Tensor, method: str = "rpc", budget: float = 0.5, *,
               cut_distribution: str = "uniform-floor", cut_sampling: str = "independent",
               loss_agg: str = "seq-mean-token-mean", temperature: float = 1.0, max_new_tokens: int | None = None,
               full_gradient: torch.Tensor | None = None, max_outcomes: int = 4096) -> SelectionBias:
    """‖E[g] − g_full‖/‖g_full‖ exactly: E[g] = Σ_outcomes P(outcome)·g(outcome), on a tiny batch.

    NAT methods give 0 up to float rounding (the model's float32 RMSNorm: ~1e-7); the contrasts
    give their true bias. Every outcome costs one forward + backward, so keep the batch tiny
    (a few responses of a few tokens); `max_outcomes` guards against combinatorial blow-up.
    """
    check_method_options(method, cut_distribution, cut_sampling, methods=ALL_METHODS)
    budget = check_budget(budget)
    advantages = torch.as_tensor(advantages).to(input_ids.device)
    options = dict(loss_agg=loss_agg, temperature=temperature, max_new_tokens=max_new_tokens)
    full_gradient, full_norm, entropies = gradient_reference(model, input_ids, attention_mask, response_mask,
                                                             advantages, method, full_gradient, **options)
    if row_separable(method, loss_agg):
        expected, total_probability, outcomes = expected_gradient_by_rows(
            model, input_ids, attention_mask, response_mask, advantages, method, budget, cut_distribution,
            **options)
    else:
        expected, total_probability, outcomes = torch.zeros_like(full_gradient), 0.0, 0
        for selection, probability in selection_outcomes(response_mask.cpu(), method, budget, entropies=entropies,
                                                         cut_distribution=cut_distribution,
                                                         cut_sampling=cut_sampling, max_outcomes=max_outcomes):
            gradient = policy_gradient(model, input_ids, attention_mask, response_mask, advantages,
                                       selection.to(input_ids.device), **options)
            expected += probability * gradient
            total_probability += probability
            outcomes += 1
    if abs(total_probability - 1.0) > 1e-9:
        raise RuntimeError(f"the enumerated outcomes' probabilities sum to {total_probability}, not 1.")
    relative = float((expected - full_gradient).norm()) / full_norm
    rpc_like = method in ("rpc", "rpc-unweighted")
    return SelectionBias(method=method, budget=budget, cut_distribution=cut_distribution if rpc_like else None,
                         cut_sampling=cut_sampling if rpc_like else None, exact=True, relative_bias=relative,
                         standard_error=0.0, bias_squared=relative ** 2, bias_squared_standard_error=0.0,
                         num_outcomes=outcomes)


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


# ----------------------------------------------------------------------------- expected weight per position

def expected_token_weights(response_mask: torch.Tensor, method: str, budget: float = 0.5, *,
                           cut_distribution: str = "uniform-floor", entropies: torch.Tensor | None = None,
                           loss_agg: str = "seq-mean-token-mean") -> torch.Tensor:
    """Each response token's expected weight in the loss, relative to full GRPO's -> float64 [B, T].

    Write the loss as Σ_{i,t} c_{i,t} ℓ_{i,t}. Full GRPO (seq-mean-token-mean) has c_{i,t} = 1/(N|o_i|);
    this returns E[c_{i,t}] / c^full_{i,t}, exactly, from π_t and the normaliser (0 off the mask):

      full, urs, rpc    E[keep_t/π_t] = 1 at every position: the HT weights restore full GRPO's balance.
      rpc-unweighted    weight 1 on the prefix, normalised over the kept C_i tokens instead of |o_i|:
                        E[|o_i|·[t ≤ C_i]/C_i] = Σ_{c ≥ t} P(C_i = c)·|o_i|/c. It falls with π_t
                        towards the end of the response, and the early positions, kept by almost
                        every cut and divided by a short C_i, weigh more than 1.
      top-entropy       keep_t ∈ {0, 1} (the batch's top-ρ entropies; `entropies` [B, T] needed),
                        full normaliser: 1 on the kept, high-entropy tokens, 0 elsewhere.

    The law of each row's cut is the same with independent or stratified cuts, and these weights
    need only that marginal. loss_agg: "seq-mean-token-mean" (the trainer's default) or
    "seq-mean-token-sum-norm" (constant normaliser B·L_max: rpc-unweighted's weight is then π_t);
    under "token-mean" rpc-unweighted divides by Σ_j C_j, which couples the rows: not computed here.
    """
    check_method_options(method, cut_distribution, "independent", methods=ALL_METHODS)
    budget = check_budget(budget)
    if loss_agg not in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        raise ValueError(f"expected_token_weights covers loss_agg 'seq-mean-token-mean' and "
                         f"'seq-mean-token-sum-norm'; got {loss_agg!r} (under token-mean rpc-unweighted's "
                         "normaliser Σ_j C_j couples the rows: estimate it by sampling instead).")
    lengths = check_response_mask(response_mask.cpu())
    mask = response_mask.bool().cpu()
    if method in METHODS:
        return mask.to(torch.float64)
    if method == "top-entropy":
        return select_for_method(mask, method, budget, entropies=entropies).keep.to(torch.float64)
    if loss_agg == "seq-mean-token-sum-norm":
        return rpc_inclusion_probabilities(lengths, mask.shape[1], budget, cut_distribution,
                                           dtype=torch.float64) * mask
    weights = torch.zeros(mask.shape, dtype=torch.float64)
    for row, length in enumerate(lengths.tolist()):
        if length:
            cut_law = rpc_cut_probabilities(length, budget, cut_distribution)        # P(C = c), c = 1..L
            per_cut = cut_law * length / torch.arange(1, length + 1, dtype=torch.float64)
            weights[row, :length] = per_cut.flip(0).cumsum(0).flip(0)               # Σ_{c ≥ t}
    return weights


def expected_weight_profile(weights: torch.Tensor, response_mask: torch.Tensor,
                            bins: int = 20) -> tuple[list[float], list[float]]:
    """`expected_token_weights` averaged by relative position u = (t − ½)/|o_i| in `bins` equal bins, over
    every response token of the batch -> (bin centres, mean weight per bin; NaN for an empty bin).

    One curve for a batch of responses of different lengths: where in a response the weight sits."""
    mask = response_mask.bool().cpu()
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float64)
    positions = (torch.arange(mask.shape[1], dtype=torch.float64).unsqueeze(0) + 0.5) / lengths
    index = (positions * bins).long().clamp(max=bins - 1)[mask]
    values = weights.cpu().to(torch.float64)[mask]
    totals = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, values)
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(values))
    means = torch.where(counts > 0, totals / counts.clamp(min=1), torch.full_like(totals, float("nan")))
    return [(b + 0.5) / bins for b in range(bins)], means.tolist()
