"""Measuring what an update costs: activation memory held for backward, peak memory, and wall time.

Activation memory is measured exactly and repeatably, on CPU too, with PyTorch's
saved-tensor hooks: every tensor autograd stores for the backward pass goes through
`pack`, and we add up the bytes of the distinct storages that are not parameters. That is
the memory a forward pass *holds* until backward — the quantity RPC shrinks and URS barely
touches — and, unlike peak RSS, it does not depend on the allocator or on other processes.

Peak memory is what decides whether a step fits. On CUDA it is `max_memory_allocated`. On
CPU, `PeakRSS` reads the process's peak resident set size (VmHWM), reset at the start of the
measured block by writing 5 to /proc/self/clear_refs (Linux ≥ 4.0), so that "peak above
start" is the block's own high-water mark: activations, gradients and every temporary,
whatever made them (our code, TRL's, the allocator's rounding). Run it in a fresh process
per configuration, so nothing an earlier configuration allocated is in the way.

Wall times of a loaded machine are noisy; `ratio_spread` says whether paired repeats of a time
ratio agree well enough for the ratio to be reported as a finding.
"""
from __future__ import annotations

import ctypes
import os
import re
import resource
import statistics
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


# ----------------------------------------------------------------------------- peak memory on CPU
def _status_kib(field: str) -> int | None:
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def rss_bytes() -> int | None:
    """The resident set size now (None where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def release_free_heap() -> None:
    """Return the C heap's free pages to the system where the C library can (glibc); else nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on: no search
    except (OSError, AttributeError):
        return
    trim(0)


class PeakRSS:
    """`with PeakRSS() as peak: ...`, then peak.start, peak.peak, peak.above_start (bytes), peak.method.

    method "VmHWM reset": the exact high-water mark of this block (Linux); "ru_maxrss": the
    process's lifetime peak (other systems), an upper bound that is exact only when this block
    is the process's largest — hence a fresh process per configuration.

    On entry the C heap's free pages go back to the system (glibc's malloc_trim): otherwise a small
    block can run entirely in memory that loading the model freed but the process still holds, and
    its high-water mark would not rise above the start at all.
    """

    def __enter__(self):
        release_free_heap()
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.method = "VmHWM reset"
        except OSError:
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM reset":
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.above_start = self.peak - (self.start or 0)
        return False


# ----------------------------------------------------------------------------- is a time ratio a finding?
TIME_SPREAD_LIMIT = 0.10   # paired repeats of a time ratio may spread by at most 10% of their median
MIN_TIMING_REPEATS = 3


def ratio_spread(paired_ratios: list[float], limit: float = TIME_SPREAD_LIMIT) -> dict:
    """Whether the per-repeat ratios t_method,r / t_reference,r agree within the noise bound.

    A ratio is reliable when there are ≥ 3 repeats and (max − min) / median ≤ `limit`. A time
    ratio whose repeats disagree more than that measures the machine's other work, not the
    method: it is reported with its spread and marked unreliable, never as met or missed.
    Returns {median, min, max, relative_spread, reliable, note}.
    """
    if not paired_ratios:
        return {"median": None, "min": None, "max": None, "relative_spread": None, "reliable": False,
                "note": "not timed"}
    median = statistics.median(paired_ratios)
    low, high = min(paired_ratios), max(paired_ratios)
    spread = (high - low) / median if median > 0 else float("inf")
    if len(paired_ratios) < MIN_TIMING_REPEATS:
        note = (f"unreliable: {len(paired_ratios)} repeat(s) cannot show the noise; use --repeats "
                f"{MIN_TIMING_REPEATS} or more")
    elif spread > limit:
        note = (f"unreliable: repeats spread {low:.2f}–{high:.2f} ({spread:.0%} of the median, bound "
                f"{limit:.0%}); the machine's other work is in this figure — re-run on an idle machine with "
                "--threads 1 and more --repeats")
    else:
        note = f"repeats agree: {low:.2f}–{high:.2f} ({spread:.0%} of the median, bound {limit:.0%})"
    return {"median": median, "min": low, "max": high, "relative_spread": spread,
            "reliable": len(paired_ratios) >= MIN_TIMING_REPEATS and spread <= limit, "note": note}


def cpu_load() -> tuple[float | None, int]:
    """(1-minute load average or None, CPU cores)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return load, os.cpu_count() or 1
