"""`python -m minnat.bench --mode lora` (being written): LoRA's and RPC's memory, measured and predicted."""
from __future__ import annotations


def run_lora_benchmark(options, log=print) -> list[dict]:
    raise ValueError("--mode lora is not written yet.")
