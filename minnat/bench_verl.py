"""One actor update through verl's own FSDP2 engine on CPU, stock vs NAT: `python -m minnat.bench --mode verl`.

What runs is verl 0.9's real update path below the driver: `left_right_2_no_padding` (the
driver's conversion), `FSDPEngineWithLMHead.train_batch` (token-budget micro-batches, the packed
padding-free forward, backward, the optimizer step) with verl's `ppo_loss` for stock and
`minnat.integrations.verl.nat_ppo_loss` for NAT. NAT's batch is the stock batch plus the selection
and, for RPC, the attention mask cut after prompt + C_b — exactly what `NATRayPPOTrainer` sends.

Reported per method, on the same batch and the same draws (repeats interleaved, median):
    tokens_to_model   real tokens the engine's model was given (a forward pre-hook counts them)
    time_seconds      wall time of `engine.train_batch` (forward + backward + step)
and each as a ratio to stock's. Time ratios are findings only when their repeats agree
(`minnat.measure.ratio_spread`); otherwise they are printed as unreliable.

verl 0.9.1 has no CPU platform: `install_cpu_platform` registers a small one (gloo, device "cpu")
with verl's own `set_platform`, and `VERL_ENGINE_DEVICE=cuda` lets the engine registry hand out the
FSDP engine it registers for cuda/npu only. The tests build their engines with the same helpers.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from contextlib import contextmanager
from types import ModuleType

import torch

from minnat.measure import cpu_load, ratio_spread


def install_cpu_platform() -> None:
    """Make verl 0.9.1 run its engine on CPU: a CPU platform, gloo, and the cuda engine registration."""
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"  # the registry's key for FSDPEngineWithLMHead
    from verl.plugin.platform import platform_manager
    from verl.plugin.platform.platform_base import PlatformBase

    if isinstance(platform_manager._current_platform, PlatformBase) and \
            platform_manager._current_platform.device_name == "cpu":
        return

    class PlatformCPU(PlatformBase):
        device_name = "cpu"
        vendor_name = "cpu"
        device_module: ModuleType = torch.cpu

        def is_available(self): return True
        def current_device(self): return "cpu"  # noqa: E704 -- used as tensor.to(get_device_id())
        def device_count(self): return 1
        def set_device(self, device_index): pass
        def synchronize(self, device_index=None): pass
        def manual_seed(self, seed): torch.manual_seed(seed)
        def manual_seed_all(self, seed): torch.manual_seed(seed)
        def set_allocator_settings(self, settings): pass
        def empty_cache(self): pass
        def get_device_capability(self, device_index=0): return None, None
        def communication_backend_name(self): return "gloo"
        def visible_devices_envvar(self): return "CUDA_VISIBLE_DEVICES"
        def ray_resource_name(self): return "CPU"
        def ray_noset_envvars(self): return []
        def is_ipc_supported(self): return False
        def profiler_start(self): pass
        def profiler_stop(self): pass
        def cudart(self): return None

        @contextmanager
        def nvtx_range(self, msg):
            yield

    platform_manager.set_platform(PlatformCPU())


def init_process_group() -> None:
    """A gloo process group: one process unless torchrun set RANK/WORLD_SIZE."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    torch.distributed.init_process_group("gloo")


def build_engine(model_path: str, *, use_remove_padding: bool = True, max_token_len: int = 4096,
                 micro_batch_size: int | None = None, learning_rate: float = 1e-3):
    """verl's FSDP2 `FSDPEngineWithLMHead` around a saved HF model, initialised on CPU (float32).

    micro_batch_size None: dynamic batch sizes with `max_token_len` tokens per micro-batch (verl's
    token-budget micro-batches); a number: that many rows per micro-batch.
    """
    install_cpu_platform()
    init_process_group()
    from minnat.integrations.verl import patch_verl_for_trl1  # after the platform: verl resolves it on import

    patch_verl_for_trl1()
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry

    model_config = HFModelConfig(path=model_path, load_tokenizer=False, use_remove_padding=use_remove_padding,
                                 enable_gradient_checkpointing=False,
                                 override_config={"attn_implementation": "sdpa"})
    engine_config = FSDPEngineConfig(strategy="fsdp2", model_dtype="fp32", dtype="float32",
                                     mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32",
                                                      "buffer_dtype": "fp32"},
                                     use_torch_compile=False, use_dynamic_bsz=micro_batch_size is None,
                                     max_token_len_per_gpu=max_token_len, micro_batch_size_per_gpu=micro_batch_size,
                                     infer_max_token_len_per_gpu=max_token_len,
                                     infer_micro_batch_size_per_gpu=micro_batch_size,
                                     use_remove_padding=use_remove_padding)
    optimizer_config = FSDPOptimizerConfig(lr=learning_rate, weight_decay=0.0, clip_grad=1e9, lr_warmup_steps=0,
                                           total_training_steps=100)
    engine = EngineRegistry.new(model_type="language_model", backend="fsdp2", model_config=model_config,
                                engine_config=engine_config, optimizer_config=optimizer_config,
                                checkpoint_config=CheckpointConfig())
    engine.initialize()
    return engine
