"""Token selection and Horvitz–Thompson weights: the heart of NAT.

Full-token GRPO sums a per-token term ℓ_{i,t} over every response token o_{i,t}.
NAT keeps only a random subset of those tokens. Token t of response i is kept with a
known *inclusion probability* π_{i,t} > 0, and each kept term is multiplied by 1/π_{i,t}
(the Horvitz–Thompson weight). With keep_{i,t} ∈ {0, 1} and E[keep_{i,t}] = π_{i,t}:

    E[ Σ_t keep_{i,t} · ℓ_{i,t} / π_{i,t} ] = Σ_t π_{i,t} · ℓ_{i,t} / π_{i,t} = Σ_t ℓ_{i,t}

so the NAT loss — and, because the selection does not depend on θ, its gradient — equals
the full-token loss in expectation, exactly, for any fixed batch of rollouts. The
normaliser (|o_i|, or the batch's token count) stays the one of the FULL response; see
`minnat.grpo.policy_loss`.

Two schemes, both expose the same `Selection`:

* URS — uniform random sampling. Keep each response token independently with
  probability ρ, so π_t = ρ and every kept token weighs 1/ρ. Kept tokens are scattered,
  so the transformer still runs over the whole sequence; the saving is the LM head,
  the log-softmax and the loss on dropped positions.

* RPC — random prefix cutting. Draw one random cut C_i ∈ {1, …, L_i} per response and
  keep the prefix o_{i,1..C_i}. Then π_t = P(C_i ≥ t). Under causal attention the
  prefix's log-probs do not depend on the suffix, so the model only ever needs
  prompt + prefix: forward and backward really get shorter (`minnat.logprobs`).

The RPC cut distribution is a choice with a variance cost. We parametrise it through a
random *cut fraction* U ∈ [0, 1] with survival function S(u) = P(U > u) and set
C = ⌈U · L⌉. Then, exactly,

    π_t = P(C ≥ t) = P(U > (t − 1)/L) = S((t − 1)/L),

and because S is non-increasing the expected number of kept tokens Σ_t S((t−1)/L) lies
in [ρL, ρL + 1] when E[U] = ρ: the budget is met within one token. Two families:

* "uniform-floor" (default) — with probability α keep the whole response, otherwise cut
  uniformly in the first fraction w of it:  S(u) = α + (1 − α)·max(0, 1 − u/w).
  We set α = 0.2ρ (0.2 = `RPC_FLOOR_FRACTION`) and solve E[U] = α + (1 − α)·w/2 = ρ for w;
  when that would need w > 1 we take w = 1 and α = 2ρ − 1. Every ρ ∈ (0, 1] is reachable,
  π_t ≥ α > 0 on every token, and no HT weight exceeds 1/α = 1/(0.2ρ). The price of the
  floor: a late token is kept only in the rare "keep all" draws, so late positions are
  trained with weight up to 1/α instead of every time — more variance for the end
  of long answers, bounded by design. We chose it because plain uniform cutting
  (below) makes the last token's weight grow like L^k.

* "power" — U ~ Beta(1, k) with k = (1 − ρ)/ρ, i.e. S(u) = (1 − u)^k. At ρ = 1/2 this is
  the textbook uniform cut C ~ Uniform{1..L}. It reaches every ρ ∈ (0, 1] with π_t > 0,
  but π_L = L^{−k}: at ρ = 1/2 the last token weighs L, at ρ = 1/4 it weighs L³.
  Unbiased, but a high-variance choice for long responses at small budgets; kept for
  teaching and comparison.
  **Its tail, made realisable.** A float64 uniform takes the values j·2⁻⁵³, so no sampler
  driven by one can keep a token with probability below 2⁻⁵³; at ρ = 0.1 and L = 200,
  (1/200)⁹ ≈ 2·10⁻²¹, and a weight 1/π_t that assumes it would be E[w_t] = 5.7·10⁴, not 1.
  So the family used here is S(u) = max((1 − u)^k, π_min) on u < 1, π_min = 2⁻²⁴
  (`POWER_MIN_INCLUSION`: weights ≤ 1.7·10⁷; the kept budget grows by at most π_min·L), with
  S rounded up to the 2⁻⁵³ grid, and the cut drawn as C_b = #{t : q_b < π_{b,t}} from a survival
  level q_b ~ Uniform[0, 1). Then C_b ≥ t ⟺ q_b < π_t, so with independent cuts
  P(C_b ≥ t) = π_t holds exactly, not only in real arithmetic (tests/test_nat.py enumerates the
  uniform's 2⁵³ values); with stratified cuts q_b = 1 − p_b is off by at most 2⁻⁵³, a relative
  error ≤ 2⁻⁵³/π_min = 2⁻²⁹ on any π_t.

**Stratified cuts across the batch** (`cut_sampling="stratified"`). RPC's cost is random:
with independent cuts, a batch at ρ = 0.5 keeps anywhere from about 0.45 to 0.55 of its
tokens, so the update's memory is unpredictable. Each cut is C_b = ⌈F⁻¹(p_b)·L_b⌉ with a
probability level p_b; independent sampling draws p_b ~ Uniform[0, 1) row by row. The
stratified design lays the rows, in a random order, end to end on [0, 1) with widths
L_b / Σ_a L_a, takes row b's centre x_b, and uses ONE uniform offset S for the batch:

    p_b = τ(frac(S + x_b)),    τ(y) = 1 − |2y − 1|,    S ~ Uniform[0, 1)

(systematic sampling with length-proportional strata, folded by the "tent" τ). For every row,
frac(S + x_b) is exactly Uniform[0, 1) whatever x_b is, and τ maps Uniform[0, 1) onto itself,
so each row's cut keeps exactly RPC's marginal law: π_t and the HT weights are the real ones,
and unbiasedness — which only needs each row's marginal, because the loss is linear in the
weights — holds as before. What changes is the joint draw: Σ_b L_b·F⁻¹(p_b) is a Riemann sum
of ∫₀¹ F⁻¹(τ(y)) dy = E[U] = ρ with mesh L_b/ΣL, so the batch's kept total sits near ρ·ΣL
instead of wandering by √(Σ L_b²)·sd(U). (τ makes the integrand continuous around the circle:
without it the row that straddles the wrap from 1 to 0 would jump between keeping nothing
and everything.)

**Biased contrasts** (`select_tokens_biased`, `BIASED_METHODS`). Two token subsets that
people try first, kept here to show what goes wrong without Horvitz–Thompson. They are NOT
NAT and their gradient is not g_full in expectation:

* "rpc-unweighted" — RPC's cut, each kept token weight 1, the loss normalised over the kept
  tokens (|o_i| → C_i): "train on the truncated answer". Late tokens are under-counted
  (weights 1 instead of 1/π_t) and the normaliser depends on the draw.
* "top-entropy" — keep the fraction ρ of response tokens with the highest entropy under the
  current policy, weight 1, full-response normaliser: TRL's `top_entropy_quantile` (arXiv
  2506.01939). Low-entropy tokens have π_t = 0, and the selection depends on θ.

The three conditions for unbiasedness, which both contrasts break:
  1. π_t > 0 on every response token (top-entropy: π_t = 0 on low-entropy tokens);
  2. each kept token weighs 1/π_t (rpc-unweighted and top-entropy: weight 1);
  3. the normaliser and the selection law do not depend on the draw or on θ
     (rpc-unweighted divides by the kept count; top-entropy selects from θ's entropies).

Shapes: masks and weights are [B, T] over the response columns only (B responses,
T = longest response); row b's response tokens are its first L_b columns.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch

METHODS = ("full", "urs", "rpc")                       # NAT: unbiased for g_full
BIASED_METHODS = ("rpc-unweighted", "top-entropy")     # contrasts: biased by construction
ALL_METHODS = METHODS + BIASED_METHODS
CUT_SAMPLINGS = ("independent", "stratified")
TOP_ENTROPY_FRACTION = 0.2  # the fraction arXiv 2506.01939 and TRL recommend for top-entropy
RPC_CUT_DISTRIBUTIONS = ("uniform-floor", "power")
RPC_FLOOR_FRACTION = 0.2  # α = 0.2ρ: the "keep everything" probability, so weights ≤ 1/α
POWER_MIN_INCLUSION = 2.0 ** -24  # the "power" family's floor on π_t: far above a float64 uniform's 2⁻⁵³ grid
UNIFORM_GRID = 2.0 ** 53  # torch.rand(dtype=float64) returns j / 2⁵³, j = 0 … 2⁵³ − 1


@dataclass
class Selection:
    """Which response tokens one NAT draw keeps, and with which probability.

    keep            bool  [B, T]  kept tokens (a subset of the response mask)
    inclusion_prob  float [B, T]  π_t, exact, > 0 on every response token, 0 on padding
    weights         float [B, T]  keep / π_t: the Horvitz–Thompson weight, 0 where dropped
    cut_lengths     long  [B]     RPC: the kept prefix length C_b (other methods: kept span,
                                  i.e. the index of the last kept token + 1), 0 for empty rows
    normaliser_mask bool  [B, T]  None for NAT: the loss normalises over the FULL response mask.
                                  rpc-unweighted: its kept tokens (the biased "truncated answer")
    response_mask   bool  [B, T]  the response mask the selection was drawn from

    For the biased contrasts, weights are keep (1 on kept tokens) and inclusion_prob is the
    scheme's own keep probability: RPC's π_t for rpc-unweighted (which its weights ignore),
    1 or 0 for top-entropy (deterministic given θ and the batch).
    """

    keep: torch.Tensor
    inclusion_prob: torch.Tensor
    weights: torch.Tensor
    cut_lengths: torch.Tensor
    method: str
    budget: float
    cut_distribution: str | None = None
    normaliser_mask: torch.Tensor | None = None
    response_mask: torch.Tensor | None = None
    cut_sampling: str | None = None

    def _map(self, function) -> "Selection":
        tensors = {name: None if getattr(self, name) is None else function(getattr(self, name))
                   for name in ("keep", "inclusion_prob", "weights", "cut_lengths", "normaliser_mask",
                                "response_mask")}
        return dataclasses.replace(self, **tensors)

    def rows(self, index: torch.Tensor) -> "Selection":
        """The selection restricted to some rows (bool mask or long indices over B)."""
        return self._map(lambda tensor: tensor[index])

    def to(self, device) -> "Selection":
        return self._map(lambda tensor: tensor.to(device))

    @property
    def biased(self) -> bool:
        """True for the contrasts (rpc-unweighted, top-entropy): E[g] ≠ g_full."""
        return self.method in BIASED_METHODS

    def loss_mask(self, response_mask: torch.Tensor) -> torch.Tensor:
        """The mask `minnat.grpo.policy_loss` takes its normalisers from: the full response mask
        for NAT (so E[loss] = loss_full), the kept tokens for rpc-unweighted (biased)."""
        return response_mask if self.normaliser_mask is None else self.normaliser_mask.to(response_mask.device)

    @property
    def kept_fraction(self) -> float:
        """Kept tokens / response tokens of this draw (ρ in expectation)."""
        response = self.response_mask if self.response_mask is not None else self.inclusion_prob > 0
        total = int(response.sum())
        return int(self.keep.sum()) / total if total else 0.0


def response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """L_b for each row of a right-padded response mask [B, T] -> long [B]."""
    return response_mask.long().sum(dim=1)


def check_response_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """Validate a right-padded response mask and return its lengths L_b (long [B])."""
    if not isinstance(response_mask, torch.Tensor) or response_mask.dim() != 2:
        shape = tuple(response_mask.shape) if isinstance(response_mask, torch.Tensor) else type(response_mask).__name__
        raise ValueError(
            f"response_mask must be a 2-D tensor [batch, response_length]; got {shape}."
        )
    mask = response_mask.bool()
    lengths = response_lengths(mask)
    columns = torch.arange(mask.shape[1], device=mask.device)
    right_padded = columns.unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(right_padded, mask):
        bad_rows = (right_padded != mask).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            "response_mask must be right-padded: each row's response tokens must be its first "
            f"L_b columns with only padding after them; rows {bad_rows[:5]} have gaps. "
            "Build it as `columns < lengths[:, None]`."
        )
    return lengths


def check_budget(budget: float) -> float:
    """ρ must be a real number in (0, 1]."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget ρ must be a number in (0, 1]; got {budget!r}.") from None
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"budget ρ must be in (0, 1] (the expected fraction of response tokens kept); got {budget!r}. "
            "Use 1.0 for every token, 0.5 for half."
        )
    return value


def rpc_cut_fraction_parameters(budget: float) -> tuple[float, float]:
    """(α, w) of the "uniform-floor" family for budget ρ: E[U] = α + (1 − α)·w/2 = ρ."""
    if budget >= 1.0:
        return 1.0, 1.0
    keep_all = RPC_FLOOR_FRACTION * budget
    width = 2.0 * (budget - keep_all) / (1.0 - keep_all)
    if width > 1.0:
        width, keep_all = 1.0, 2.0 * budget - 1.0
    return keep_all, width


def rpc_survival(cut_fraction: torch.Tensor, budget: float, cut_distribution: str) -> torch.Tensor:
    """S(u) = P(U > u) for cut fractions u ∈ [0, 1] (any shape, float)."""
    u = cut_fraction.clamp(0.0, 1.0)
    if cut_distribution == "uniform-floor":
        keep_all, width = rpc_cut_fraction_parameters(budget)
        return keep_all + (1.0 - keep_all) * (1.0 - u / width).clamp(min=0.0)
    if cut_distribution == "power":
        exponent = (1.0 - budget) / budget
        survival = (1.0 - u).clamp(min=0.0) ** exponent
        # The floor and the 2⁻⁵³ grid make every π_t one that the sampler realises exactly (module docs).
        realisable = torch.ceil(survival.clamp(min=POWER_MIN_INCLUSION) * UNIFORM_GRID) / UNIFORM_GRID
        return torch.where(u < 1.0, realisable.clamp(max=1.0), survival)
    raise ValueError(
        f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
    )


def rpc_inclusion_probabilities(lengths: torch.Tensor, num_columns: int, budget: float,
                                cut_distribution: str = "uniform-floor",
                                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact π_t = P(C ≥ t) = S((t − 1)/L) for every row, float [B, T] (0 on padding).

    Column j holds token t = j + 1. Computed in float64 (the tiny probabilities of the
    "power" family stay exact), then cast to `dtype`.
    """
    columns = torch.arange(num_columns, device=lengths.device, dtype=torch.float64)
    safe_lengths = lengths.clamp(min=1).to(torch.float64).unsqueeze(1)
    survival = rpc_survival(columns.unsqueeze(0) / safe_lengths, budget, cut_distribution)
    inside = columns.unsqueeze(0) < lengths.unsqueeze(1)
    # The "power" family's tail (e.g. (1/3)^127 at ρ ≈ 0.008) underflows float32 to 0, which would
    # make a token undrawable on paper; keep π_t at the smallest normal number of `dtype` instead
    # (the HT weight 1/π_t is clamped at the same value in `selection_from_keep`).
    survival = survival.clamp(min=torch.finfo(dtype).tiny) if dtype != torch.float64 else survival
    return torch.where(inside, survival, torch.zeros_like(survival)).to(dtype)


def sample_rpc_cut_fraction(num_rows: int, budget: float, cut_distribution: str,
                            generator: torch.Generator | None, device) -> torch.Tensor:
    """Draw U for each row (float64 [B]) from the chosen family."""
    uniform = torch.rand(num_rows, generator=generator, dtype=torch.float64, device=device)
    if cut_distribution == "uniform-floor":
        keep_all, width = rpc_cut_fraction_parameters(budget)
        second = torch.rand(num_rows, generator=generator, dtype=torch.float64, device=device)
        return torch.where(uniform < keep_all, torch.ones_like(second), second * width)
    if cut_distribution == "power":
        # Inverse CDF of Beta(1, k) with the floor: S(u) = max((1 − u)^k, π_min)  =>  U = 1 − V^{1/k}, or
        # U = 1 (keep everything) when V < π_min. `draw_rpc_cuts` draws power cuts from V directly.
        exponent = (1.0 - budget) / budget
        if exponent == 0.0:
            return torch.ones_like(uniform)
        return torch.where(uniform < POWER_MIN_INCLUSION, torch.ones_like(uniform), 1.0 - uniform ** (1.0 / exponent))
    raise ValueError(
        f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
    )


def rpc_cut_fraction_quantile(level: torch.Tensor, budget: float, cut_distribution: str) -> torch.Tensor:
    """F⁻¹(p): the cut fraction U at probability level p ∈ [0, 1) (float64), for both RPC families.

    "uniform-floor": U = w·p/(1 − α) for p < 1 − α, else U = 1 (keep everything; mass α).
    "power":         S(u) = max((1 − u)^k, π_min)  ⇒  U = 1 − (1 − p)^{1/k}, or U = 1 when 1 − p < π_min
                     (and when k = 0, i.e. ρ = 1).
    With p ~ Uniform[0, 1) this has exactly the law of `sample_rpc_cut_fraction`.
    """
    if cut_distribution == "uniform-floor":
        keep_all, width = rpc_cut_fraction_parameters(budget)
        if keep_all >= 1.0:
            return torch.ones_like(level)
        return torch.where(level < 1.0 - keep_all, width * level / (1.0 - keep_all), torch.ones_like(level))
    if cut_distribution == "power":
        exponent = (1.0 - budget) / budget
        if exponent == 0.0:
            return torch.ones_like(level)
        survival_level = 1.0 - level
        return torch.where(survival_level < POWER_MIN_INCLUSION, torch.ones_like(level),
                           1.0 - survival_level ** (1.0 / exponent))
    raise ValueError(
        f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
    )


def systematic_cut_levels(lengths: torch.Tensor, order: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """p_b = τ(frac(S + x_b)) for a given row order and offset S -> float64 [B] (see the module docs).

    lengths  long [B] L_b;  order  long [B] a permutation of the rows;  offset  float64 [1] S ∈ [0, 1).
    x_b is the centre of row b's interval when the rows, in `order`, are laid end to end on
    [0, 1) with widths L_b/ΣL; τ(y) = 1 − |2y − 1|. For S ~ Uniform[0, 1) every p_b is Uniform[0, 1).
    """
    widths = lengths.to(torch.float64)[order]
    total = float(widths.sum())
    centres_in_order = (widths.cumsum(0) - widths / 2) / total if total > 0 else torch.zeros_like(widths)
    centres = torch.empty_like(centres_in_order)
    centres[order] = centres_in_order
    position = torch.remainder(offset.to(torch.float64) + centres, 1.0)
    return 1.0 - (2.0 * position - 1.0).abs()


def stratified_cut_levels(lengths: torch.Tensor, generator: torch.Generator | None, device) -> torch.Tensor:
    """The stratified design's levels p_b: a random row order and one uniform offset S -> float64 [B]."""
    order = torch.randperm(lengths.shape[0], generator=generator, device=device)
    offset = torch.rand(1, generator=generator, dtype=torch.float64, device=device)
    return systematic_cut_levels(lengths, order, offset)


def rpc_cuts(cut_fraction: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """C_b = ⌈U_b·L_b⌉, at least 1 on non-empty rows (U = 0 has probability zero; the clamp guards rounding)."""
    cuts = torch.ceil(cut_fraction * lengths.to(torch.float64)).long()
    return torch.minimum(cuts.clamp(min=1), lengths)


def check_method_options(method: str, cut_distribution: str, cut_sampling: str, methods=METHODS) -> None:
    if method not in methods:
        hint = (f" {method!r} is a biased contrast, not a NAT method: draw it with "
                "minnat.nat.select_tokens_biased." if method in BIASED_METHODS else "")
        raise ValueError(f"unknown NAT method {method!r}; choose one of {methods}.{hint}")
    if cut_distribution not in RPC_CUT_DISTRIBUTIONS:
        raise ValueError(
            f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
        )
    if cut_sampling not in CUT_SAMPLINGS:
        raise ValueError(f"unknown cut_sampling {cut_sampling!r}; choose one of {CUT_SAMPLINGS}.")


def draw_rpc_cuts(lengths: torch.Tensor, budget: float, generator: torch.Generator | None, device, *,
                  cut_distribution: str, cut_sampling: str) -> torch.Tensor:
    """One RPC draw: the kept prefix length C_b of every row -> long [B]."""
    if cut_distribution == "power":
        # C_b = #{t : q_b < π_{b,t}} from a survival level q_b ~ Uniform[0, 1): since π is non-increasing,
        # C_b ≥ t ⟺ q_b < π_t, so the cut realises exactly the π_t its weights assume (module docs).
        if cut_sampling == "stratified":
            levels = 1.0 - stratified_cut_levels(lengths, generator, device)
        else:
            levels = torch.rand(lengths.shape[0], generator=generator, dtype=torch.float64, device=device)
        columns = int(lengths.max()) if lengths.numel() else 0
        pi = rpc_inclusion_probabilities(lengths, columns, budget, "power", dtype=torch.float64)
        return torch.minimum((levels.unsqueeze(1) < pi).sum(dim=1).clamp(min=1), lengths)  # q_b = 1: p_b = 0
    if cut_sampling == "stratified":
        levels = stratified_cut_levels(lengths, generator, device)
        cut_fraction = rpc_cut_fraction_quantile(levels, budget, cut_distribution)
    else:
        cut_fraction = sample_rpc_cut_fraction(lengths.shape[0], budget, cut_distribution, generator, device)
    return rpc_cuts(cut_fraction, lengths)


def select_tokens(response_mask: torch.Tensor, method: str, budget: float = 1.0,
                  generator: torch.Generator | None = None, *,
                  cut_distribution: str = "uniform-floor", cut_sampling: str = "independent") -> Selection:
    """Draw one NAT selection over a batch of right-padded responses.

    response_mask  bool [B, T]  row b's response tokens are its first L_b columns (L_b may be 0)
    method         "full" (π_t = 1), "urs" (π_t = ρ) or "rpc" (π_t = P(C ≥ t))
    budget         ρ ∈ (0, 1]: expected fraction of each row's response tokens that is kept
    generator      torch.Generator for reproducible draws (on the mask's device)
    cut_distribution  RPC only: "uniform-floor" (default) or "power", see the module docs
    cut_sampling   RPC only: "independent" cuts per row, or "stratified" across the batch (each
                   row's cut has exactly the same law, the batch's kept total varies far less)

    Returns a `Selection` whose weights are keep/π_t (the Horvitz–Thompson weights). The
    biased contrasts are `select_tokens_biased`.
    """
    check_method_options(method, cut_distribution, cut_sampling)
    budget = check_budget(budget)
    lengths = check_response_mask(response_mask)
    mask = response_mask.bool()
    num_rows, num_columns = mask.shape
    device = mask.device

    if method == "full":
        inclusion_prob = mask.float()
        keep = mask.clone()
    elif method == "urs":
        inclusion_prob = mask.float() * budget
        coins = torch.rand(num_rows, num_columns, generator=generator, device=device)
        keep = mask & (coins < budget)
    else:  # rpc
        inclusion_prob = rpc_inclusion_probabilities(lengths, num_columns, budget, cut_distribution)
        cuts = draw_rpc_cuts(lengths, budget, generator, device, cut_distribution=cut_distribution,
                             cut_sampling=cut_sampling)
        columns = torch.arange(num_columns, device=device)
        keep = columns.unsqueeze(0) < cuts.unsqueeze(1)

    rpc = method == "rpc"
    selection = selection_from_keep(keep, inclusion_prob, method, budget, cut_distribution if rpc else None)
    return dataclasses.replace(selection, response_mask=mask, cut_sampling=cut_sampling if rpc else None)


def top_entropy_keep(entropies: torch.Tensor, response_mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """TRL's `get_high_entropy_mask` for one batch: keep tokens whose entropy is ≥ the (1 − ρ)-quantile
    of the batch's response-token entropies (linear interpolation, `torch.quantile`) -> bool [B, T]."""
    mask = response_mask.bool()
    values = entropies[mask].float()
    if values.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(values, 1.0 - fraction)
    return (entropies.float() >= threshold) & mask


def select_tokens_biased(response_mask: torch.Tensor, method: str, budget: float = TOP_ENTROPY_FRACTION,
                         generator: torch.Generator | None = None, *, entropies: torch.Tensor | None = None,
                         cut_distribution: str = "uniform-floor",
                         cut_sampling: str = "independent") -> Selection:
    """A BIASED token subset, for contrast with NAT: E[g] ≠ g_full (see the module docs).

    response_mask  bool [B, T]  right-padded responses
    method         "rpc-unweighted": RPC's random cut (same law as `select_tokens(..., "rpc")`),
                   weight 1 on kept tokens, the loss normalised over the kept tokens
                   (`Selection.loss_mask`) — training on the truncated answer;
                   "top-entropy": the fraction ρ of response tokens with the highest entropy,
                   weight 1, the full-response normaliser — TRL's `top_entropy_quantile = ρ`
    budget         ρ ∈ (0, 1] (top-entropy: the kept fraction; 0.2 is the paper's value)
    entropies      top-entropy only: float [B, T] per-token entropies H_t of the current policy
                   (`minnat.entropy.response_entropies`); the threshold is their (1 − ρ)-quantile
                   over the batch's response tokens, ties kept, as TRL does

    Returns a `Selection` with weights = keep (no 1/π_t) and `biased` True.
    """
    check_method_options(method, cut_distribution, cut_sampling, methods=BIASED_METHODS)
    budget = check_budget(budget)
    check_response_mask(response_mask)
    mask = response_mask.bool()
    if method == "rpc-unweighted":
        selection = select_tokens(mask, "rpc", budget, generator, cut_distribution=cut_distribution,
                                  cut_sampling=cut_sampling)
        return dataclasses.replace(selection, method=method, weights=selection.keep.to(selection.weights.dtype),
                                   normaliser_mask=selection.keep.clone())
    if entropies is None or not isinstance(entropies, torch.Tensor) or entropies.shape != mask.shape:
        shape = tuple(entropies.shape) if isinstance(entropies, torch.Tensor) else None
        raise ValueError(f"top-entropy needs entropies, a float tensor of the response mask's shape "
                         f"{tuple(mask.shape)} (got {shape}); compute them with "
                         "minnat.entropy.response_entropies(model, input_ids, attention_mask, response_mask).")
    keep = top_entropy_keep(entropies.to(mask.device), mask, budget)
    selection = selection_from_keep(keep, keep.float(), method, budget)
    return dataclasses.replace(selection, response_mask=mask)


def rpc_cut_probabilities(length: int, budget: float, cut_distribution: str = "uniform-floor") -> torch.Tensor:
    """P(C = c) for c = 1..L (float64 [L]): π_c − π_{c+1} with π_{L+1} = 0. Used to enumerate cuts exactly."""
    budget = check_budget(budget)
    columns = torch.arange(length, dtype=torch.float64)
    pi = rpc_survival(columns / max(length, 1), budget, cut_distribution)
    next_pi = torch.cat([pi[1:], torch.zeros(1, dtype=torch.float64)])
    return pi - next_pi


def stratified_cut_law(lengths: torch.Tensor, budget: float, cut_distribution: str = "uniform-floor",
                       max_rows: int = 7) -> list[tuple[torch.Tensor, float]]:
    """The exact joint law of the stratified design's cuts: [(cuts long [B], probability), ...].

    For each of the B! row orders (probability 1/B! each), the cuts are piecewise constant in
    the offset S: row b's cut changes where its level p_b = τ(frac(S + x_b)) crosses
    q_c = F(c/L_b) = 1 − S_U(c/L_b), c = 1..L_b − 1, i.e. where frac(S + x_b) = q_c/2 or 1 − q_c/2.
    Between consecutive break points every cut is fixed, so the law is a finite list. Small batches only
    (B ≤ max_rows): it is for exact tests, not for training.
    """
    budget = check_budget(budget)
    lengths = lengths.long().cpu()
    rows = lengths.shape[0]
    if rows > max_rows:
        raise ValueError(f"the exact stratified law enumerates all {rows}! row orders; use at most {max_rows} rows.")
    law: dict[tuple, float] = {}
    orders = list(itertools.permutations(range(rows)))
    for order in orders:
        order = torch.tensor(order, dtype=torch.long)
        widths = lengths.to(torch.float64)[order]
        centres_in_order = (widths.cumsum(0) - widths / 2) / max(float(widths.sum()), 1.0)
        centres = torch.empty_like(centres_in_order)
        centres[order] = centres_in_order
        breaks = [0.0, 1.0]
        for row in range(rows):
            length = int(lengths[row])
            steps = [1.0 - float(rpc_survival(torch.tensor(c / length, dtype=torch.float64), budget,
                                              cut_distribution)) for c in range(1, length)] if length else []
            for level in steps + [0.0]:
                breaks += [(level / 2 - float(centres[row])) % 1.0, (1 - level / 2 - float(centres[row])) % 1.0]
        breaks = sorted(set(breaks))
        for low, high in zip(breaks[:-1], breaks[1:]):
            if high - low <= 1e-15:
                continue
            levels = systematic_cut_levels(lengths, order, torch.tensor([(low + high) / 2], dtype=torch.float64))
            cuts = rpc_cuts(rpc_cut_fraction_quantile(levels, budget, cut_distribution), lengths)
            key = tuple(cuts.tolist())
            law[key] = law.get(key, 0.0) + (high - low) / len(orders)
    return [(torch.tensor(cuts, dtype=torch.long), probability) for cuts, probability in law.items()]


def select_for_method(response_mask: torch.Tensor, method: str, budget: float = 1.0,
                      generator: torch.Generator | None = None, *, entropies: torch.Tensor | None = None,
                      cut_distribution: str = "uniform-floor", cut_sampling: str = "independent") -> Selection:
    """`select_tokens` for the NAT methods, `select_tokens_biased` for the contrasts (any of ALL_METHODS)."""
    options = dict(cut_distribution=cut_distribution, cut_sampling=cut_sampling)
    if method in BIASED_METHODS:
        return select_tokens_biased(response_mask, method, budget, generator, entropies=entropies, **options)
    return select_tokens(response_mask, method, budget, generator, **options)


def selection_from_keep(keep: torch.Tensor, inclusion_prob: torch.Tensor, method: str,
                        budget: float, cut_distribution: str | None = None) -> Selection:
    """Build a `Selection` from a given keep mask and its π_t (e.g. to enumerate every cut)."""
    keep = keep.bool()
    # The Horvitz–Thompson weight: each kept token counts 1/π_t times.
    weights = torch.where(keep, 1.0 / inclusion_prob.clamp(min=torch.finfo(torch.float32).tiny),
                          torch.zeros_like(inclusion_prob))
    columns = torch.arange(keep.shape[1], device=keep.device)
    span = torch.where(keep, columns + 1, torch.zeros_like(columns)).amax(dim=1) if keep.shape[1] \
        else torch.zeros(keep.shape[0], dtype=torch.long, device=keep.device)
    return Selection(keep=keep, inclusion_prob=inclusion_prob, weights=weights, cut_lengths=span.long(),
                     method=method, budget=budget, cut_distribution=cut_distribution)
