"""The GRPO objective, with NAT's Horvitz–Thompson weights as an optional input.

For a group of G responses o_1..o_G to one question q with rewards R_i, GRPO's advantage
is the reward standardised within the group (`group_advantages`):

    Â_i = (R_i − mean_j R_j) / (std_j R_j + ε)

Each response token gets the clipped surrogate of PPO plus a KL penalty (`token_terms`):

    r_{i,t} = exp(log π_θ(o_{i,t}) − log π_old(o_{i,t}))
    ℓ_{i,t} = −min(r_{i,t}·Â_i, clip(r_{i,t}, 1 − ε, 1 + ε_high)·Â_i) + β·KL_{i,t}
    KL_{i,t} = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1          (the "k3" estimator)

and the loss averages them (`policy_loss`, with w_{i,t} = 1 for full GRPO):

    "seq-mean-token-mean"      (GRPO)     (1/N) Σ_i (1/|o_i|) Σ_t w_{i,t} ℓ_{i,t}     N = rows with |o_i| > 0
    "token-mean"               (DAPO)     Σ_i Σ_t w_{i,t} ℓ_{i,t} / Σ_i |o_i|
    "seq-mean-token-sum-norm"  (Dr. GRPO) Σ_i Σ_t w_{i,t} ℓ_{i,t} / (B · L_max)     L_max = max_new_tokens

L_max is the run's generation limit (`max_new_tokens`), a constant of the run as in Dr. GRPO
and TRL's "dr_grpo" — not this batch's longest response, which would change the loss's scale
from batch to batch (and make it depend on the rollout). `policy_loss` therefore needs
`max_new_tokens` for this aggregation and refuses to guess it.

NAT passes w_{i,t} = keep_{i,t}/π_{i,t}. Every normaliser above (|o_i|, Σ|o_i|, B·L_max) is
computed from the FULL response mask — never from the number of kept tokens — so it is a
constant with respect to the random selection and E[loss_NAT] = loss_full holds exactly.
Dividing by the kept count instead would make the estimator a ratio, which is biased.

Shapes: logprobs, old_logprobs, ref_logprobs, weights, response_mask are [B, T] over the
response columns; advantages is [B] (one per response) or [B, T].
"""
from __future__ import annotations

import torch

LOSS_AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-6) -> torch.Tensor:
    """Â_i from rewards R [B] laid out as B/G consecutive groups of G responses -> float [B].

    scale "group": divide by each group's standard deviation (GRPO);
          "batch": divide by the whole batch's standard deviation (as REINFORCE++ / some verl setups);
          "none":  only subtract the group mean (Dr. GRPO).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {ADVANTAGE_SCALES}.")
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [batch]; got shape {tuple(rewards.shape)}.")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards must be finite numbers; entries {bad[:5]} are NaN or infinite. "
                         "Check the reward function.")
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size G must be an integer ≥ 2 (GRPO compares responses within a group); "
                         f"got {group_size!r}.")
    if rewards.numel() % group_size:
        raise ValueError(f"the batch of {rewards.numel()} rewards does not split into groups of "
                         f"{group_size}; use a batch size that is a multiple of the group size.")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.flatten()


def _check_same_shape(reference: torch.Tensor, **tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tuple(tensor.shape) != tuple(reference.shape):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but response_mask has shape "
                             f"{tuple(reference.shape)}; they must match [batch, response_length].")


def token_terms(logprobs, old_logprobs, advantages, response_mask, *, ref_logprobs=None,
                clip_eps=0.2, clip_eps_high=None, kl_coef=0.0):
    """Per-token ℓ_{i,t} and diagnostics, all [B, T] and 0 outside the response.

    Returns (loss_per_token, ratio, is_clipped, kl_per_token).
    """
    mask = response_mask.bool()
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(f"advantages has {advantages.shape[0]} entries but the batch has "
                             f"{mask.shape[0]} responses.")
        advantages = advantages.unsqueeze(1)
    else:
        _check_same_shape(mask, advantages=advantages)
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    # Zero the log-ratio off the response first, so padding (which may hold anything) can't make inf/NaN.
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    is_clipped = (clipped < unclipped) & mask
    kl = torch.zeros_like(loss)
    if kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (log-probs of the frozen reference model).")
        ref_minus_policy = torch.where(mask, ref_logprobs - logprobs, torch.zeros_like(logprobs))
        kl = torch.expm1(ref_minus_policy) - ref_minus_policy  # = e^d − d − 1, accurate for small d
        loss = loss + kl_coef * kl
    zero = torch.zeros_like(loss)
    return torch.where(mask, loss, zero), ratio, is_clipped, torch.where(mask, kl, zero)


def check_max_new_tokens(max_new_tokens: int | None, response_mask: torch.Tensor, loss_agg: str) -> None:
    """seq-mean-token-sum-norm needs the run's generation limit, and no response may be longer than it."""
    if max_new_tokens is None:
        if loss_agg == "seq-mean-token-sum-norm":
            raise ValueError("loss_agg 'seq-mean-token-sum-norm' (Dr. GRPO) divides by B × max_new_tokens, the "
                             "run's generation limit; pass max_new_tokens=... (the value given to generate), not "
                             "this batch's longest response.")
        return
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive whole number (the generation limit); "
                         f"got {max_new_tokens!r}.")
    longest = int(response_mask.bool().sum(dim=1).max()) if response_mask.numel() else 0
    if longest > max_new_tokens:
        raise ValueError(f"a response has {longest} tokens but max_new_tokens is {max_new_tokens}; pass the "
                         "generation limit the responses were sampled with.")


def aggregate(loss_per_token: torch.Tensor, response_mask: torch.Tensor, weights: torch.Tensor | None,
              loss_agg: str, max_new_tokens: int | None = None) -> torch.Tensor:
    """Σ_t w_{i,t}·ℓ_{i,t} with the FULL-mask normaliser of `loss_agg` -> scalar."""
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {LOSS_AGGREGATIONS}.")
    check_max_new_tokens(max_new_tokens, response_mask, loss_agg)
    mask = response_mask.bool()
    if weights is None:
        weighted = loss_per_token
    else:
        # where() rather than a product so that a dropped position (w = 0) holding inf can't give NaN.
        weighted = torch.where(weights > 0, loss_per_token * weights, torch.zeros_like(loss_per_token))
    lengths = mask.sum(dim=1)
    if loss_agg == "seq-mean-token-mean":
        has_tokens = lengths > 0
        per_sequence = weighted.sum(dim=1) / lengths.clamp(min=1)
        return per_sequence[has_tokens].sum() / has_tokens.sum().clamp(min=1)
    if loss_agg == "token-mean":
        return weighted.sum() / lengths.sum().clamp(min=1)
    return weighted.sum() / max(mask.shape[0] * max_new_tokens, 1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, *, weights: torch.Tensor | None = None,
                ref_logprobs: torch.Tensor | None = None, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, kl_coef: float = 0.0,
                loss_agg: str = "seq-mean-token-mean", max_new_tokens: int | None = None) -> torch.Tensor:
    """The GRPO loss (scalar), full-token when weights is None, NAT when weights = Selection.weights.

    logprobs      [B, T] log π_θ at response tokens (differentiable); 0 where not computed
    old_logprobs  [B, T] log π_old (the sampling policy), no gradient
    advantages    [B] or [B, T] Â_i
    response_mask [B, T] bool, right-padded; rows with |o_i| = 0 contribute nothing
    weights       [B, T] keep/π_t from `minnat.nat.select_tokens`, or None for every token
    ref_logprobs  [B, T] log π_ref, needed when kl_coef = β > 0
    max_new_tokens  L_max, the run's generation limit: needed by "seq-mean-token-sum-norm"
                  (normaliser B·L_max), ignored by the other aggregations
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {LOSS_AGGREGATIONS}.")
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be 2-D [batch, response_length]; got shape "
                         f"{tuple(response_mask.shape)}.")
    _check_same_shape(response_mask, logprobs=logprobs, old_logprobs=old_logprobs,
                      ref_logprobs=ref_logprobs, weights=weights)
    if weights is not None and bool(((weights != 0) & ~response_mask.bool()).any()):
        raise ValueError("weights are non-zero outside response_mask; pass the Selection.weights made "
                         "from this same response_mask.")
    loss_per_token, _, _, _ = token_terms(logprobs, old_logprobs, torch.as_tensor(advantages, dtype=logprobs.dtype,
                                                                                device=logprobs.device),
                                          response_mask, ref_logprobs=ref_logprobs, clip_eps=clip_eps,
                                          clip_eps_high=clip_eps_high, kl_coef=kl_coef)
    return aggregate(loss_per_token, response_mask, weights, loss_agg, max_new_tokens)


def aggregation_share(chunk_mask: torch.Tensor, batch_mask: torch.Tensor, loss_agg: str) -> float:
    """The factor that turns a chunk's `policy_loss` into its share of the whole batch's loss.

    With gradient accumulation over row chunks, Σ_chunks share·loss(chunk) = loss(batch) exactly,
    because every normaliser is a count over the FULL response mask (rows with tokens, tokens, or rows
    × the constant max_new_tokens).
    """
    if loss_agg == "seq-mean-token-mean":
        return int(chunk_mask.any(dim=1).sum()) / max(int(batch_mask.any(dim=1).sum()), 1)
    if loss_agg == "token-mean":
        return int(chunk_mask.sum()) / max(int(batch_mask.sum()), 1)
    return chunk_mask.shape[0] / max(batch_mask.shape[0], 1)
