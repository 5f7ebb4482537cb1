"""The GRPO loss against a plainly written reference, advantages, and bad input."""
import math

import pytest
import torch

from minnat.grpo import LOSS_AGGREGATIONS, group_advantages, policy_loss


def reference_grpo_loss(logprobs, old, ref, advantages, lengths, weights, clip_low, clip_high, beta, loss_agg,
                        max_new_tokens):
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
    return total / (len(lengths) * max_new_tokens)  # Dr. GRPO: B × the generation limit, a run constant


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
                       clip_eps_high=0.28, kl_coef=0.05, loss_agg=loss_agg, max_new_tokens=12)
    plain_weights = (weights if with_weights else mask.double()).tolist()
    expected = reference_grpo_loss(logprobs.tolist(), old.tolist(), ref.tolist(), advantages.tolist(), lengths,
                                   plain_weights, 0.2, 0.28, 0.05, loss_agg, 12)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # clipping is really exercised by these inputs
    ratio = torch.exp(logprobs - old)[mask]
    assert ((ratio < 0.8) | (ratio > 1.28)).any()


def test_empty_rows_give_zero_loss_and_no_nan_gradient():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    logprobs = torch.zeros(2, 4, requires_grad=True)
    for loss_agg in LOSS_AGGREGATIONS:
        loss = policy_loss(logprobs, torch.zeros(2, 4), torch.tensor([1.0, -1.0]), mask, loss_agg=loss_agg,
                           max_new_tokens=4)
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
    with pytest.raises(ValueError, match="pass max_new_tokens"):
        policy_loss(zeros, zeros, torch.zeros(2), mask, loss_agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="a response has 3 tokens but max_new_tokens is 2"):
        policy_loss(zeros, zeros, torch.zeros(2), mask, loss_agg="seq-mean-token-sum-norm", max_new_tokens=2)
    with pytest.raises(ValueError, match="positive whole number"):
        policy_loss(zeros, zeros, torch.zeros(2), mask, loss_agg="token-mean", max_new_tokens=0)
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="integer ≥ 2"):
        group_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


def test_dr_grpo_normaliser_is_a_run_constant_not_the_batch_longest():
    """Two batches that differ only by padding columns give the same seq-mean-token-sum-norm loss."""
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([5, 2]).unsqueeze(1)
    logprobs = -torch.rand(2, 5, generator=generator, dtype=torch.float64)
    old = logprobs + 0.1 * torch.randn(2, 5, generator=generator, dtype=torch.float64)
    advantages = torch.tensor([0.5, -1.0], dtype=torch.float64)
    options = dict(loss_agg="seq-mean-token-sum-norm", max_new_tokens=16)
    narrow = policy_loss(logprobs, old, advantages, mask, **options)
    padded = [torch.cat([x, torch.zeros(2, 3, dtype=x.dtype)], dim=1) for x in (logprobs, old, mask)]
    wide = policy_loss(padded[0], padded[1], advantages, padded[2], **options)
    assert float(narrow) == pytest.approx(float(wide), rel=1e-15)


# --------------------------------------------------------------------------- against TRL's GRPOTrainer._compute_loss
TRL_LOSS_TYPES = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
                  "dr_grpo": "seq-mean-token-sum-norm"}


def trl_trainer(tmp_path, loss_type, max_completion_length, beta):
    """A stock TRL GRPOTrainer on a tiny local Qwen3, on CPU (no vLLM, no bf16), ready for `_compute_loss`."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoTokenizer

    from conftest import build_tiny_qwen3
    from minnat.assets import TINY_QWEN3_DIR

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_QWEN3_DIR))
    config = trl.GRPOConfig(output_dir=str(tmp_path / loss_type), use_vllm=False, use_cpu=True, bf16=False,
                            per_device_train_batch_size=4, num_generations=4, max_completion_length=max_completion_length,
                            loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=0.28,
                            use_bias_correction_kl=False, report_to="none", logging_steps=1)
    folder = tmp_path / "model"  # by path, so that TRL can load its frozen reference copy when beta > 0
    build_tiny_qwen3(vocab_size=len(tokenizer), dtype=torch.float32, seed=0).save_pretrained(folder)
    trainer = trl.GRPOTrainer(model=str(folder), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=config, train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 4}),
                              processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; we call _compute_loss directly
    return trainer


@pytest.mark.parametrize("loss_type", list(TRL_LOSS_TYPES))
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_each_aggregation_matches_trl_loss_types_on_the_same_inputs(tmp_path, monkeypatch, loss_type, beta):
    """TRL's real `_compute_loss` against `policy_loss`, fed the same log-probs, so only the conventions differ.

    grpo → seq-mean-token-mean, bnpo and dapo → token-mean, dr_grpo → seq-mean-token-sum-norm with
    max_new_tokens = TRL's max_completion_length. Known convention differences, checked below: TRL's
    grpo averages over ALL rows, a row masked out entirely included (minnat over rows with tokens);
    TRL's KL is multiplied by the ratio unless use_bias_correction_kl=False (minnat: plain k3).
    """
    max_completion_length = 10
    trainer = trl_trainer(tmp_path, loss_type, max_completion_length, beta)
    generator = torch.Generator().manual_seed(11)
    batch, columns = 4, 6
    lengths = torch.tensor([6, 2, 4, 5])
    mask = torch.arange(columns).unsqueeze(0) < lengths.unsqueeze(1)
    logprobs = (-2 * torch.rand(batch, columns, generator=generator)).requires_grad_()
    old = logprobs.detach() + 0.3 * torch.randn(batch, columns, generator=generator)  # clipping switches on
    ref = logprobs.detach() + 0.3 * torch.randn(batch, columns, generator=generator)
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.2])

    def given_logprobs(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        return logprobs, torch.zeros_like(logprobs), None

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", given_logprobs)
    inputs = {"prompt_ids": torch.ones(batch, 3, dtype=torch.long), "prompt_mask": torch.ones(batch, 3, dtype=torch.long),
              "completion_ids": torch.ones(batch, columns, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_gradient = torch.autograd.grad(trl_loss, logprobs)[0]
    ours = policy_loss(logprobs, old, advantages, mask, ref_logprobs=ref, clip_eps=0.2, clip_eps_high=0.28,
                       kl_coef=beta, loss_agg=TRL_LOSS_TYPES[loss_type], max_new_tokens=max_completion_length)
    our_gradient = torch.autograd.grad(ours, logprobs)[0]
    assert float(ours.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-6)
    assert (our_gradient - trl_gradient).abs().max() <= 1e-6 * trl_gradient.abs().max()
    ratio = torch.exp(logprobs - old)[mask]
    assert ((ratio < 0.8) | (ratio > 1.28)).any()  # the clip is exercised

    if loss_type == "grpo":  # masked rows: TRL divides by B, minnat by the N rows that have tokens
        masked = mask.clone()
        masked[1] = False
        inputs |= {"completion_mask": masked.long(), "num_items_in_batch": masked.sum()}
        trl_masked = trainer._compute_loss(trainer.model, inputs)
        ours_masked = policy_loss(logprobs, old, advantages, masked, ref_logprobs=ref, clip_eps=0.2,
                                  clip_eps_high=0.28, kl_coef=beta, loss_agg="seq-mean-token-mean")
        assert float(trl_masked.detach()) == pytest.approx(float(ours_masked.detach()) * 3 / 4, rel=1e-6)
