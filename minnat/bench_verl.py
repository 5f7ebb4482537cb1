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

import copy
import math
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


# ----------------------------------------------------------------------------- mode "verl"


def benchmark_batch(options, seed: int):
    """B rows of prompt length P and response lengths L_b ~ Uniform{⌈s·T⌉..T} (random ids): a DataProto."""
    generator = torch.Generator().manual_seed(seed)
    T = options.response_lengths[0]
    shortest = max(1, math.ceil(options.shortest_response * T))
    lengths = torch.randint(shortest, T + 1, (options.batch_size,), generator=generator).tolist()
    return driver_batch([options.prompt_length] * options.batch_size, lengths, seed=seed,
                        vocab_size=options.vocab_size_used)


def timed_update(engine, data_factory, loss) -> tuple[float, int]:
    """One `engine.train_batch` (forward + backward + optimizer step): (seconds, tokens given to the model)."""
    counter = TokenCounter(engine)
    data = data_factory()
    with engine.train_mode():
        start = time.perf_counter()
        engine.train_batch(data, loss)
        seconds = time.perf_counter() - start
    counter.close()
    return seconds, counter.tokens


def run_verl_benchmark(options, log=print) -> list[dict]:
    """Stock verl vs NAT-RPC at ρ = options.budgets[0]: one actor update of the same batch, interleaved repeats."""
    import functools
    import json
    import tempfile
    from pathlib import Path

    from minnat.bench_common import build_model

    install_cpu_platform()
    init_process_group()
    from minnat.integrations import verl as nat_verl
    from minnat.nat import select_tokens
    from verl.workers.utils.losses import ppo_loss

    budget = options.budgets[0]
    model = build_model(options.preset, vocab_size=options.vocab_size, dtype=torch.float32, device="cpu",
                        gradient_checkpointing=False)
    options.vocab_size_used = model.config.vocab_size
    folder = tempfile.mkdtemp(prefix="minnat-bench-verl-")
    model.save_pretrained(folder, safe_serialization=True)
    engine = build_engine(folder, learning_rate=0.0, max_token_len=options.verl_max_token_len)
    batch = benchmark_batch(options, options.seed)
    selection = select_tokens(batch.batch["response_mask"].bool(), "rpc", budget,
                              torch.Generator().manual_seed(options.seed), cut_sampling="stratified")
    nat_batch = copy.copy(batch)
    nat_batch.batch = batch.batch.clone()
    nat_verl.store_selection(nat_batch, selection)
    config = actor_config("token-mean", batch_size=options.batch_size)
    arms = {"stock": (batch, functools.partial(ppo_loss, config=config)),
            "rpc": (nat_verl.engine_view(nat_batch), functools.partial(nat_verl.nat_ppo_loss, config=config))}
    factories = {name: functools.partial(engine_data, arm_batch, global_batch_size=options.batch_size,
                                         max_token_len=options.verl_max_token_len)
                 for name, (arm_batch, _) in arms.items()}
    times = {name: [] for name in arms}
    tokens = {}
    load_before = cpu_load()[0]
    for name in arms:  # warm-up
        timed_update(engine, factories[name], arms[name][1])
    for repeat in range(options.repeats):
        order = list(arms) if repeat % 2 == 0 else list(arms)[::-1]  # interleaved, alternating order
        for name in order:
            seconds, tokens[name] = timed_update(engine, factories[name], arms[name][1])
            times[name].append(seconds)
    load_after = cpu_load()[0]
    ratios = [rpc / stock for rpc, stock in zip(times["rpc"], times["stock"])]
    spread = ratio_spread(ratios)
    row = {"engine": "verl FSDP2 (CPU, gloo, 1 process)", "preset": options.preset, "budget": budget,
           "batch_size": options.batch_size, "prompt_length": options.prompt_length,
           "response_length_max": options.response_lengths[0], "kept_fraction": selection.kept_fraction,
           "tokens_to_model": tokens, "tokens_to_model_ratio": tokens["rpc"] / tokens["stock"],
           "time_seconds": {name: statistics.median(values) for name, values in times.items()},
           "time_seconds_per_repeat": times, "time_ratio": spread["median"], "time_ratio_spread": spread,
           "load_average": [load_before, load_after], "cores": cpu_load()[1], "threads": torch.get_num_threads(),
           "torch": torch.__version__, "verl": __import__("verl").__version__, "command": options.command}
    out = Path(options.out)
    (out / "verl.json").write_text(json.dumps([row], indent=1))
    verdict = "" if spread["reliable"] else " — UNRELIABLE, not a finding"
    lines = ["| engine | method | ρ | tokens to model | time (s, median) | ratio to stock |", "|---|---|---|---|---|---|",
             f"| verl FSDP2 | stock | 1 | {tokens['stock']} | {row['time_seconds']['stock']:.4f} | 1.00 |",
             f"| verl FSDP2 | NAT-RPC | {budget} | {tokens['rpc']} ({row['tokens_to_model_ratio']:.3f}×) | "
             f"{row['time_seconds']['rpc']:.4f} | {spread['median']:.2f}{verdict} |", "",
             f"Time ratio: {spread['note']}. Load average {load_before} → {load_after} on {row['cores']} cores, "
             f"{row['threads']} torch thread(s); `{options.command}`; torch {torch.__version__}, verl "
             f"{row['verl']}. Tokens are exact for the draw; times depend on the machine's other work."]
    (out / "verl.md").write_text("\n".join(lines) + "\n")
    for line in lines:
        log(line)
    return [row]
