"""Loading models: the embedded tiny Qwen3, local checkpoints, hub ids, and size presets.

Everything minnat trains is a Hugging Face causal LM (`Qwen3ForCausalLM` for the embedded
default and the Qwen3 family). Three ways in:

* "embedded" — a tiny character-level Qwen3 shipped in `minnat/assets/`, the one warm-started
  on the run's task: `tiny-qwen3-long/` for "long-addition", `tiny-qwen3-late-credit/` for
  "late-credit", `tiny-qwen3/` for "arithmetic"
  (and for any other task). Made by `scripts/make_tiny_model.py`. No network, runs on CPU.
* a folder — a checkpoint written by the trainer (`save_pretrained`) or any local HF model; a LoRA
  checkpoint (an adapter and the name of its base model, `minnat.lora`) loads its base and merges
  the adapter into it, or keeps it trainable (`keep_adapter=True`, how the trainer resumes).
* a hub id such as "Qwen/Qwen3-0.6B" — loaded from the local Hugging Face cache or the hub.

For safety, weights are read from safetensors only (no pickle) and `trust_remote_code`
stays False. For cost measurements at the paper's scale, `build_preset_model` makes the
Qwen3-0.6B…8B *architectures* with random weights — no download needed.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as transformers_logging

from minnat.assets import EMBEDDED_MODEL_DIRS, TINY_QWEN3_DIR
from minnat.lora import attach_saved_adapter, is_lora_checkpoint, read_base_model

# transformers draws a tqdm bar for every model load and save ("Loading weights", "Writing model
# shards"); for a 2-layer model they are noise that breaks into the trainer's own progress bar and
# into rendered notebooks, so minnat turns them off once, here.
transformers_logging.disable_progress_bar()
# DeepSpeed (minnat[deepspeed]) is imported by accelerate whenever a model is saved; on a machine without CUDA its
# accelerator auto-detection warns "Setting accelerator to CPU. If you have GPU ..." into every run's output. Say
# "cpu" up front instead (an explicit DS_ACCELERATOR is kept).
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

EMBEDDED_MODEL = "embedded"

# Public architecture facts of the Qwen3 dense models (config.json of each release).
QWEN3_ARCHITECTURES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
QWEN3_VOCAB_SIZE = 151936
PRESETS = ("tiny",) + tuple(QWEN3_ARCHITECTURES)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """"auto" means bfloat16 on CUDA and float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {('auto',) + tuple(DTYPES)}.")
    return DTYPES[dtype]


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    return device


def choose_cpu_threads(requested: int = 0) -> tuple[int, str]:
    """How many CPU threads torch should use, and a sentence saying why -> (threads, reason).

    requested > 0 is used as given. 0 means "auto": torch's default is one thread per core, which
    on a shared machine oversubscribes the cores other processes are using, and torch's
    thread pool then waits on preempted threads (measured on the 2-core machine: 164 s vs 36 s
    for the same training run with one thread while another job ran). So auto takes the cores
    the last minute's load average leaves free, at least one.
    """
    cores = os.cpu_count() or 1
    if requested > 0:
        return requested, f"{requested} (as asked; {cores} cores)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, min(cores, torch.get_num_threads(), round(cores - load)))
    if free < min(cores, torch.get_num_threads()):
        return free, (f"{free} of {cores} cores (load average {load:.1f}: other processes are busy; "
                      "--num-threads N to choose)")
    return free, f"{free} ({cores} cores, idle)"


def model_location(name_or_path: str, task: str | None = None) -> str:
    """The folder or hub id behind a model name. "embedded" is the shipped tiny Qwen3 made for
    `task` ("long-addition", "late-credit" or "arithmetic"); without a task, or for another one, the
    arithmetic one."""
    if name_or_path == EMBEDDED_MODEL:
        return str(EMBEDDED_MODEL_DIRS.get(task, TINY_QWEN3_DIR))
    return str(name_or_path)


def check_checkpoint_folder(folder: Path) -> None:
    """A local model folder must hold a config, safetensors weights and a tokenizer."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        missing.append("model weights in safetensors format" +
                       (f" (found only pickle files {pickled}; convert them with save_pretrained("
                        "safe_serialization=True) — minnat does not load pickles)" if pickled else ""))
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise ValueError(f"the model folder {folder} is incomplete: missing {', '.join(missing)}. "
                         "Point --model at a folder written by save_pretrained (a minnat checkpoint, or a "
                         "downloaded Hugging Face model), or use --model embedded.")


def in_local_cache(hub_id: str) -> bool:
    """True when the hub id's config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # noqa: BLE001 — a malformed id is simply "not cached"
        return False


def hub_reachable(timeout_seconds: float = 3.0) -> bool:
    """One quick TCP connection to the hub, so that an offline machine fails in seconds, not after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout_seconds).close()
        return True
    except OSError:
        return False


ARCHITECTURE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def architecture(name_or_path: str, task: str | None = None) -> dict | None:
    """The fields that make two checkpoints interchangeable, read without network; None if unknown here."""
    location = model_location(name_or_path, task)
    if Path(location).is_dir() and is_lora_checkpoint(location):  # an adapter has its base's architecture
        return architecture(*read_base_model(location))
    config_file = Path(location) / "config.json"
    if not config_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(location, "config.json")
        except Exception:  # noqa: BLE001 — a malformed id is simply "unknown"
            return None
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    config = json.loads(config_file.read_text())
    return {field: config.get(field) for field in ARCHITECTURE_FIELDS}


def load_tokenizer(name_or_path: str, task: str | None = None):
    location = model_location(name_or_path, task)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generate() wants prompts flush right
    return tokenizer


def load_model(name_or_path: str = EMBEDDED_MODEL, *, dtype: str | torch.dtype = "auto", device: str = "cpu",
               gradient_checkpointing: bool = False, task: str | None = None, keep_adapter: bool = False):
    """(model, tokenizer) for "embedded" (the one made for `task`), a local folder, or a hub id —
    with clear errors offline.

    The model comes back in train mode on `device`; bf16 on CUDA and float32 on CPU by default.
    A LoRA checkpoint folder comes back merged into a plain model (W + (α/r)·BA), or with
    `keep_adapter=True` as a peft.PeftModel whose adapter trains (the trainer's resume).
    """
    location = model_location(name_or_path, task)
    torch_dtype = resolve_dtype(dtype, device)
    is_folder = Path(location).is_dir()
    if is_folder and is_lora_checkpoint(location):
        return load_lora_checkpoint(Path(location), dtype=dtype, device=device,
                                    gradient_checkpointing=gradient_checkpointing, keep_adapter=keep_adapter)
    if is_folder:
        check_checkpoint_folder(Path(location))
    elif location.startswith((".", "/", "~")) or location.count("/") > 1:  # a path, not an "org/name" id
        raise ValueError(f"the model folder {location!r} does not exist. Pass an existing folder, a hub id "
                         "such as Qwen/Qwen3-0.6B, or --model embedded.")
    if not is_folder and not in_local_cache(location) and not hub_reachable():
        raise ValueError(f"could not load {location!r}: it is not a local folder, it is not in the local Hugging Face "
                         "cache, and the hub is unreachable (this machine is offline). Download it where there is "
                         f"internet (`huggingface-cli download {location}`) and pass the folder, or use the "
                         "embedded default `--model embedded`, which needs no network.")
    try:
        tokenizer = load_tokenizer(name_or_path, task)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, trust_remote_code=False,
                                                     use_safetensors=True)
    except (OSError, ValueError, KeyError) as error:
        if is_folder:
            raise ValueError(f"could not load the model in {location}: {error}. Is it a Hugging Face causal "
                             "LM folder written by save_pretrained (config.json model_type must be one "
                             "transformers knows, e.g. qwen3)?") from error
        raise ValueError(f"could not load {location!r}: it is not a local folder, and the Hugging Face hub is "
                         "unreachable or does not have it in the local cache (this machine may be offline). "
                         "Download it where there is internet (`huggingface-cli download "
                         f"{location}`) and pass the folder, or use the embedded default `--model embedded`, "
                         "which needs no network.") from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(device), tokenizer


def load_lora_checkpoint(folder: Path, *, dtype, device: str, gradient_checkpointing: bool, keep_adapter: bool):
    """A LoRA checkpoint: the base model it names (minnat_base_model.json) plus its saved adapter."""
    base_name, base_task = read_base_model(folder)
    try:
        model, tokenizer = load_model(base_name, dtype=dtype, device=device, task=base_task,
                                      gradient_checkpointing=gradient_checkpointing)
    except ValueError as error:
        raise ValueError(f"the LoRA checkpoint {folder} adapts the base model {base_name!r}, which could not be "
                         f"loaded: {error}") from error
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(str(folder))  # the trainer saves the run's tokenizer with every checkpoint
    model = attach_saved_adapter(model, folder, trainable=keep_adapter)
    if not keep_adapter:
        model = model.merge_and_unload()  # a plain causal LM: the explorer and evaluation need nothing else
    return model.to(device), tokenizer


def preset_config(preset: str) -> Qwen3Config:
    """The architecture of a Qwen3 size ("qwen3-0.6b" … "qwen3-8b") or "tiny" (the embedded model's)."""
    if preset == "tiny":
        return AutoConfig.from_pretrained(str(TINY_QWEN3_DIR))
    if preset not in QWEN3_ARCHITECTURES:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {PRESETS}.")
    return Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, max_position_embeddings=40960, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, **QWEN3_ARCHITECTURES[preset])


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward (newer transformers call it activation checkpointing)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def build_preset_model(preset: str, *, dtype: str | torch.dtype = "auto", device: str = "cpu",
                       gradient_checkpointing: bool = False, seed: int = 0, attention: str = "sdpa",
                       vocab_size: int | None = None) -> Qwen3ForCausalLM:
    """A Qwen3 of the preset's architecture with random weights, built directly on `device`.

    `vocab_size` overrides the preset's vocabulary (e.g. the tiny body with Qwen's 151,936 tokens).
    """
    return build_random_model(preset_config(preset), dtype=dtype, device=device, seed=seed, attention=attention,
                              gradient_checkpointing=gradient_checkpointing, vocab_size=vocab_size)


def build_random_model(config: Qwen3Config, *, dtype: str | torch.dtype = "auto", device: str = "cpu",
                       gradient_checkpointing: bool = False, seed: int = 0, attention: str = "sdpa",
                       vocab_size: int | None = None) -> Qwen3ForCausalLM:
    """A Qwen3ForCausalLM of `config`'s architecture with seeded random weights, built on `device`
    in `dtype` (no float32 copy first, so an 8B model fits where its bf16 weights do)."""
    if vocab_size is not None:
        if vocab_size < 2:
            raise ValueError(f"the vocabulary size must be at least 2; got {vocab_size}.")
        config.vocab_size = vocab_size
    config._attn_implementation = attention
    torch_dtype = resolve_dtype(dtype, device)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
