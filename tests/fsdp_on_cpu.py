"""Run a script under accelerate's FSDP on a CPU-only machine — test support, not for training.

    accelerate launch --config_file examples/trl/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        tests/fsdp_on_cpu.py examples/trl/grpo_nat.py --steps 2 ...

accelerate turns FSDP on only for GPU-like device types: on a CPU it quietly trains without FSDP
(its backend choice says MULTI_CPU, and the FSDP plugin is dropped). FSDP2 itself (`fully_shard`)
runs on CPU over gloo, so `enable()` opens the gloo process group first, tells accelerate's
backend choice that this is a multi-device run, and puts every rank on the CPU. Everything else —
accelerate's FSDP2 preparation of the model, TRL's trainer, NAT — is the real code path.
"""
from __future__ import annotations

import runpy
import sys

import torch
import torch.distributed


def enable() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_* come from the launcher

    def multi_device_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU  # the branch of AcceleratorState that honours the FSDP plugin

    def cpu_device(self):
        self.device = torch.device("cpu")

    accelerate.state.PartialState._prepare_backend = multi_device_backend
    accelerate.state.PartialState.set_device = cpu_device


if __name__ == "__main__":
    enable()
    script, *arguments = sys.argv[1:]
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
