"""Shared cases for the verl tests (tests/test_verl_integration.py and the torchrun worker tests/verl_two_ranks.py).

A tiny random Qwen3 saved to disk, loaded by verl's own FSDP2 engine on CPU (minnat.bench_verl's shim,
batches and token counter: the benchmark and the tests run the same path), verl actor configs, and
the engine's flat gradient.
"""
from __future__ import annotations

import torch

from conftest import build_tiny_qwen3
from minnat.bench_verl import TokenCounter, actor_config, driver_batch, engine_data  # noqa: F401 -- the benchmark's own helpers


def save_tiny_model(folder) -> str:
    model = build_tiny_qwen3(dtype=torch.float32, layers=1)
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


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
