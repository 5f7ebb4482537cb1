"""The GRPO loss against a plainly written reference, advantages, and bad input."""
import math

import pytest
import torch

from minnat.grpo import LOSS_AGGREGATIONS, group_advantages, policy_loss


def reference_grpo_loss(logprobs, old, ref, advantages, lengths, weights, clip_low, clip_high, beta, loss_agg,
                        num_columns):
    """GRPO written with Python loops and math.*, one token at a time."""
    per_sequence, total, token_count, rows_with_tokens = [], 0.0, 0, 0
    for i, length in enumerate(lengths):
        sequence_sum = 0.0
        for t in range(length):
            ratio = math.exp(logprobs[i][t] - old[i][t])
            clipped_ratio = min(max(ratio, 1 - clip_low), 1 + clip_high)
            surrogate = -min(ratio * advantages[i], clipped_ratio * advantages[i])
            d = ref[i][t] - logprobs[i][t]
            kl = math.exp(d) - d - 1
            sequence_sum += weights[i][t] * (surrogate + beta * kl)
        total += sequence_sum
        token_count += length
        if length:
            rows_with_tokens += 1
            per_sequence.append(sequence_sum / length)
    if loss_agg == "seq-mean-token-mean":
        return sum(per_sequence) / rows_with_tokens
    if loss_agg == "token-mean":
        return total / token_count
    return total / (len(lengths) * num_columns)


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("with_weights", [False, True])
def test_policy_loss_matches_reference_formula(loss_agg, with_weights):
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 0, 3, 7]
    T = 7
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    logprobs = -torch.rand(4, T, generator=generator, dtype=torch.float64) * 3
    old = logprobs + 0.4 * torch.randn(4, T, generator=generator, dtype=torch.float64)
    ref = logprobs + 0.4 * torch.randn(4, T, generator=generator, dtype=torch.float64)
    # Padding holds garbage on purpose: it must not leak into the loss.
    logprobs[~mask], old[~mask] = float("-inf"), 50.0
    advantages = torch.tensor([1.5, -0.3, -1.0, 0.7], dtype=torch.float64)
    weights = (torch.rand(4, T, generator=generator, dtype=torch.float64) * 3 * mask) if with_weights else None
    loss = policy_loss(logprobs, old, advantages, mask, weights=weights, ref_logprobs=ref, clip_eps=0.2,
                       clip_eps_high=0.28, kl_coef=0.05, loss_agg=loss_agg)
    plain_weights = (weights if with_weights else mask.double()).tolist()
    expected = reference_grpo_loss(logprobs.tolist(), old.tolist(), ref.tolist(), advantages.tolist(), lengths,
                                   plain_weights, 0.2, 0.28, 0.05, loss_agg, T)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # clipping is really exercised by these inputs
    ratio = torch.exp(logprobs - old)[mask]
    assert ((ratio < 0.8) | (ratio > 1.28)).any()


def test_empty_rows_give_zero_loss_and_no_nan_gradient():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    logprobs = torch.zeros(2, 4, requires_grad=True)
    for loss_agg in LOSS_AGGREGATIONS:
        loss = policy_loss(logprobs, torch.zeros(2, 4), torch.tensor([1.0, -1.0]), mask, loss_agg=loss_agg)
        loss.backward()
        assert float(loss.detach()) == 0.0 and torch.isfinite(logprobs.grad).all()


def test_group_advantages_scales():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    group = group_advantages(rewards, 4, "group")
    assert torch.allclose(group[:4], (rewards[:4] - 0.25) / (rewards[:4].std() + 1e-6))
    assert torch.allclose(group[4:], torch.zeros(4))  # all-equal group: no signal
    none = group_advantages(rewards, 4, "none")
    assert torch.allclose(none, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))
    batch = group_advantages(rewards, 4, "batch")
    assert torch.allclose(batch, none / (rewards.std() + 1e-6))


def test_bad_inputs_are_clear_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown loss_agg 'mean'; choose one of"):
        policy_loss(zeros, zeros, torch.zeros(2), mask, loss_agg="mean")
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(2, 4\)"):
        policy_loss(zeros, torch.zeros(2, 4), torch.zeros(2), mask)
    with pytest.raises(ValueError, match="advantages has 3 entries"):
        policy_loss(zeros, zeros, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        policy_loss(zeros, zeros, torch.zeros(2), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="outside response_mask"):
        policy_loss(zeros, zeros, torch.zeros(2), torch.zeros(2, 3, dtype=torch.bool), weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="integer ≥ 2"):
        group_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")
