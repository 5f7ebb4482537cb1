"""Shared cases for the verl tests (tests/test_verl_integration.py and the torchrun worker tests/verl_two_ranks.py).

A tiny random Qwen3 saved to disk, loaded by verl's own FSDP2 engine on CPU (minnat.bench_verl's shim),
and batches in the layout verl's driver holds after generation: prompts left-padded, responses
right-padded, `attention_mask`, `position_ids` (cumsum − 1), `response_mask`, old/ref log-probs and
per-token advantages.
"""
from __future__ import annotations

import torch

from conftest import build_tiny_qwen3


def save_tiny_model(folder) -> str:
    model = build_tiny_qwen3(dtype=torch.float32, layers=1)
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def driver_batch(prompt_lengths, response_lengths, *, seed: int = 0, vocab_size: int = 64,
                 prompt_columns: int | None = None, response_columns: int | None = None):
    """A DataProto as verl's driver holds it after rollout, log-prob and advantage passes."""
    from verl import DataProto

    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, response_lengths = torch.tensor(prompt_lengths), torch.tensor(response_lengths)
    B = len(prompt_lengths)
    P = prompt_columns or int(prompt_lengths.max())
    T = response_columns or int(response_lengths.max())
    columns = torch.arange(P + T)
    prompt_part = (columns >= P - prompt_lengths.unsqueeze(1)) & (columns < P)
    response_part = (columns >= P) & (columns < P + response_lengths.unsqueeze(1))
    attention_mask = (prompt_part | response_part).long()
    input_ids = torch.randint(1, vocab_size, (B, P + T), generator=generator) * attention_mask
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    response_mask = (torch.arange(T).unsqueeze(0) < response_lengths.unsqueeze(1)).long()
    advantages = torch.randn(B, 1, generator=generator).expand(B, T) * response_mask
    old = -4.2 + 0.05 * torch.randn(B, T, generator=generator)
    ref = -4.1 + 0.05 * torch.randn(B, T, generator=generator)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
               "prompts": input_ids[:, :P], "responses": input_ids[:, P:], "response_mask": response_mask,
               "old_log_probs": old * response_mask, "ref_log_prob": ref * response_mask,
               "advantages": advantages.contiguous()}
    return DataProto.from_dict(tensors=tensors, meta_info={"temperature": 1.0})


def actor_config(loss_agg_mode: str = "token-mean", *, use_kl_loss: bool = False, entropy_coeff: float = 0.0,
                 batch_size: int = 4, loss_scale_factor=None):
    from verl.workers.config import FSDPActorConfig

    return FSDPActorConfig(strategy="fsdp2", ppo_mini_batch_size=batch_size, ppo_micro_batch_size_per_gpu=2,
                           use_dynamic_bsz=False, loss_agg_mode=loss_agg_mode, rollout_n=1, use_kl_loss=use_kl_loss,
                           kl_loss_coef=0.5, kl_loss_type="low_var_kl", entropy_coeff=entropy_coeff,
                           loss_scale_factor=loss_scale_factor)


def engine_data(batch, *, global_batch_size: int, use_remove_padding: bool = True, micro_batch_size=None,
                max_token_len: int = 4096, calculate_entropy: bool = False):
    """What `RayPPOTrainer._update_actor` and the worker's `train_batch` hand the engine: the batch
    converted by `left_right_2_no_padding`, plus the engine's run-time keys."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    data = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(data, calculate_entropy=calculate_entropy, global_batch_size=global_batch_size,
                         compute_loss=True, use_remove_padding=use_remove_padding,
                         use_dynamic_bsz=micro_batch_size is None, max_token_len_per_gpu=max_token_len,
                         micro_batch_size_per_gpu=micro_batch_size, use_fused_kernels=False)
    return data


def engine_gradient(engine, data, loss_function) -> torch.Tensor:
    """One forward + backward through the engine (no optimizer step): the flat full gradient, float64."""
    with engine.train_mode():
        engine.optimizer_zero_grad()
        engine.forward_backward_batch(data, loss_function, forward_only=False)
        grads = []
        for parameter in engine.module.parameters():
            grad = parameter.grad
            grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
            grads.append(grad.reshape(-1).double())
        engine.optimizer_zero_grad()
    return torch.cat(grads)


class TokenCounter:
    """Counts the real tokens reaching the engine's model (a forward pre-hook on the decoder)."""

    def __init__(self, engine):
        self.tokens = 0
        decoder = engine.module.model if hasattr(engine.module, "model") else engine.module
        self.handle = decoder.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", None)
        self.tokens += int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else ids.numel()

    def close(self):
        self.handle.remove()
