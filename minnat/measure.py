"""Measuring what an update costs: activation memory held for backward, and wall time.

Activation memory is measured exactly and repeatably, on CPU too, with PyTorch's
saved-tensor hooks: every tensor autograd stores for the backward pass goes through
`pack`, and we add up the bytes of the distinct storages that are not parameters. That is
the memory a forward pass *holds* until backward — the quantity RPC shrinks and URS barely
touches — and, unlike peak RSS, it does not depend on the allocator or on other processes.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class ActivationMeter:
    """Use as `with ActivationMeter(model) as meter: loss = ...`; then `meter.bytes`."""

    def __init__(self, model: torch.nn.Module | None = None):
        self.parameter_storages = set()
        if model is not None:
            self.parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen = set()
        self.bytes = 0
        self._hooks = None

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.parameter_storages and pointer not in self.seen:
            self.seen.add(pointer)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor):
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


def synchronize(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(times: dict, key: str, device="cpu"):
    """Add the wall time of the block (device work finished) to times[key]."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        times[key] = times.get(key, 0.0) + time.perf_counter() - start
