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
  We set α = φ·ρ (φ = `RPC_FLOOR_FRACTION`) and solve E[U] = α + (1 − α)·w/2 = ρ for w;
  when that would need w > 1 we take w = 1 and α = 2ρ − 1. Every ρ ∈ (0, 1] is reachable,
  π_t ≥ α > 0 on every token, and no HT weight exceeds 1/α = 1/(φρ). The price of the
  floor: a late token is kept only in the rare "keep all" draws, so late positions are
  trained with weight up to 1/(φρ) instead of every time — more variance for the end
  of long answers, bounded by design. We chose it because plain uniform cutting
  (below) makes the last token's weight grow like L^k.

* "power" — U ~ Beta(1, k) with k = (1 − ρ)/ρ, i.e. S(u) = (1 − u)^k. At ρ = 1/2 this is
  the textbook uniform cut C ~ Uniform{1..L}. It reaches every ρ ∈ (0, 1] with π_t > 0,
  but π_L = L^{−k}: at ρ = 1/2 the last token weighs L, at ρ = 1/4 it weighs L³.
  Unbiased, but a high-variance choice for long responses at small budgets; kept for
  teaching and comparison.

Shapes: masks and weights are [B, T] over the response columns only (B responses,
T = longest response); row b's response tokens are its first L_b columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("full", "urs", "rpc")
RPC_CUT_DISTRIBUTIONS = ("uniform-floor", "power")
RPC_FLOOR_FRACTION = 0.2  # φ: the "keep everything" probability is φ·ρ, so weights ≤ 1/(φρ)


@dataclass
class Selection:
    """Which response tokens one NAT draw keeps, and with which probability.

    keep            bool  [B, T]  kept tokens (a subset of the response mask)
    inclusion_prob  float [B, T]  π_t, exact, > 0 on every response token, 0 on padding
    weights         float [B, T]  keep / π_t: the Horvitz–Thompson weight, 0 where dropped
    cut_lengths     long  [B]     RPC: the kept prefix length C_b (other methods: kept span,
                                  i.e. the index of the last kept token + 1), 0 for empty rows
    """

    keep: torch.Tensor
    inclusion_prob: torch.Tensor
    weights: torch.Tensor
    cut_lengths: torch.Tensor
    method: str
    budget: float
    cut_distribution: str | None = None

    def rows(self, index: torch.Tensor) -> "Selection":
        """The selection restricted to some rows (bool mask or long indices over B)."""
        return Selection(self.keep[index], self.inclusion_prob[index], self.weights[index],
                         self.cut_lengths[index], self.method, self.budget, self.cut_distribution)

    def to(self, device) -> "Selection":
        return Selection(self.keep.to(device), self.inclusion_prob.to(device), self.weights.to(device),
                         self.cut_lengths.to(device), self.method, self.budget, self.cut_distribution)

    @property
    def kept_fraction(self) -> float:
        """Kept tokens / response tokens of this draw (ρ in expectation)."""
        total = int((self.inclusion_prob > 0).sum())
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
        return (1.0 - u).clamp(min=0.0) ** exponent
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
        # Inverse CDF of Beta(1, k): S(u) = (1 − u)^k  =>  U = 1 − V^{1/k}, V uniform.
        exponent = (1.0 - budget) / budget
        if exponent == 0.0:
            return torch.ones_like(uniform)
        return 1.0 - uniform ** (1.0 / exponent)
    raise ValueError(
        f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
    )


def select_tokens(response_mask: torch.Tensor, method: str, budget: float = 1.0,
                  generator: torch.Generator | None = None, *,
                  cut_distribution: str = "uniform-floor") -> Selection:
    """Draw one NAT selection over a batch of right-padded responses.

    response_mask  bool [B, T]  row b's response tokens are its first L_b columns (L_b may be 0)
    method         "full" (π_t = 1), "urs" (π_t = ρ) or "rpc" (π_t = P(C ≥ t))
    budget         ρ ∈ (0, 1]: expected fraction of each row's response tokens that is kept
    generator      torch.Generator for reproducible draws (on the mask's device)
    cut_distribution  RPC only: "uniform-floor" (default) or "power", see the module docs

    Returns a `Selection` whose weights are keep/π_t (the Horvitz–Thompson weights).
    """
    if method not in METHODS:
        raise ValueError(f"unknown NAT method {method!r}; choose one of {METHODS}.")
    if cut_distribution not in RPC_CUT_DISTRIBUTIONS:
        raise ValueError(
            f"unknown RPC cut distribution {cut_distribution!r}; choose one of {RPC_CUT_DISTRIBUTIONS}."
        )
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
        cut_fraction = sample_rpc_cut_fraction(num_rows, budget, cut_distribution, generator, device)
        # C = ⌈U·L⌉, at least 1 (U = 0 has probability zero; the clamp guards rounding).
        cuts = torch.ceil(cut_fraction * lengths.to(torch.float64)).long()
        cuts = torch.minimum(cuts.clamp(min=1), lengths)
        columns = torch.arange(num_columns, device=device)
        keep = columns.unsqueeze(0) < cuts.unsqueeze(1)

    return selection_from_keep(keep, inclusion_prob, method, budget,
                               cut_distribution if method == "rpc" else None)


def rpc_cut_probabilities(length: int, budget: float, cut_distribution: str = "uniform-floor") -> torch.Tensor:
    """P(C = c) for c = 1..L (float64 [L]): π_c − π_{c+1} with π_{L+1} = 0. Used to enumerate cuts exactly."""
    budget = check_budget(budget)
    columns = torch.arange(length, dtype=torch.float64)
    pi = rpc_survival(columns / max(length, 1), budget, cut_distribution)
    next_pi = torch.cat([pi[1:], torch.zeros(1, dtype=torch.float64)])
    return pi - next_pi


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
