"""LoRA adapters (peft) for the trainer: bigger Qwen3 on one GPU, and the frozen base as the KL's reference.

With LoRA every targeted linear layer y = W x (W: d_out × d_in, frozen) becomes

    y = W x + (α / r) · B A x,        A: r × d_in,  B: d_out × r,  B = 0 at the start,

and only A and B train. NAT composes with it untouched: the estimator is about *which tokens*
enter the loss, LoRA about *which parameters* the gradient reaches. For any fixed batch,
E[∇_{A,B} L_NAT] = ∇_{A,B} L_full, since the HT weights do not depend on θ (tests/test_lora.py
checks it by enumerating every cut on a tiny model). What each saves is different: LoRA removes
the weights' gradients and AdamW moments (8 bytes per parameter in minnat's bf16 trainer, 16
in mixed precision) but not the activations; RPC cuts the activations (prompt + prefix only),
which become the largest share of the update once LoRA has removed the rest
(`python -m minnat.bench --mode lora` measures both and predicts the GPU budget).

The reference policy π_ref of the k3 KL is the model at the start of training: with LoRA that
is the base model with the adapters switched off (`peft`'s `disable_adapter`), so no second
copy of the weights is loaded.

A LoRA checkpoint holds the adapter only (`adapter_model.safetensors`, `adapter_config.json`)
plus `minnat_base_model.json`, which names the base model the way the run did ("embedded" and
its task, a hub id, or an absolute folder), so `minnat.models.load_model(checkpoint)` can
rebuild it anywhere minnat is installed: merged into a plain model for evaluation and the
explorer, or with the adapter kept trainable to resume.

This module imports nothing from minnat; `minnat.models` and `minnat.train` import it.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

INSTALL_HINT = ('LoRA needs peft: install it with `pip install "minnat[lora]"` (or `pip install "peft>=0.17,<1"`), '
                'or train every weight by leaving out --lora-rank.')
ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_FILE = "minnat_base_model.json"
# "all-linear" is peft's own shorthand: every nn.Linear of the decoder, never the LM head. For Qwen3 that is
# q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
ALL_LINEAR = "all-linear"
QWEN3_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# minnat's tiled LM head reads the head's weight directly (minnat.logprobs.score_positions), and the embedding is
# tied to it in the small Qwen3 models: an adapter there would be invisible to the log-probs, so it is refused.
REFUSED_TARGETS = ("lm_head", "embed_tokens")


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 asks transformers 5 `is_gradient_checkpointing`, which warns that the name is deprecated; the
    warning is about peft's code, not the user's, and would break into every run's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def require_peft():
    """The peft module, or a ValueError whose sentence says how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ValueError(f"{INSTALL_HINT} ({error})") from error
    return peft


def parse_targets(text: str) -> str | list[str]:
    """"all-linear" or a comma-separated list of module names ("q_proj,v_proj") -> what LoraConfig takes."""
    text = (text or "").strip()
    if text == ALL_LINEAR:
        return ALL_LINEAR
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--lora-targets must be '{ALL_LINEAR}' or a comma-separated list of module names such as "
                         f"{','.join(QWEN3_LINEAR[:4])}; got {text!r}.")
    refused = [name for name in names if name in REFUSED_TARGETS]
    if refused:
        raise ValueError(f"--lora-targets {refused} is not supported: minnat's tiled LM head reads the head's weight "
                         "directly, so an adapter on the head or the (tied) embedding would not be trained correctly. "
                         f"Target the decoder's linear layers, e.g. --lora-targets {ALL_LINEAR}.")
    return names


def lora_config(rank: int, alpha: float | None, targets: str | list[str], dropout: float = 0.0):
    """peft's LoraConfig for a causal LM: rank r, scale α/r (α defaults to 2r), no bias adapters."""
    peft = require_peft()
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"the LoRA rank must be a whole number ≥ 1; got {rank!r}.")
    return peft.LoraConfig(r=rank, lora_alpha=float(alpha) if alpha else 2.0 * rank, lora_dropout=dropout,
                           target_modules=parse_targets(targets) if isinstance(targets, str) else list(targets),
                           bias="none", task_type="CAUSAL_LM")


def add_lora(model, rank: int, alpha: float | None = None, targets: str | list[str] = ALL_LINEAR,
             dropout: float = 0.0):
    """Wrap a causal LM in fresh LoRA adapters -> peft.PeftModel (base frozen; A random, B = 0, so the
    wrapped model computes exactly what `model` did). Adapters are float32 even on a bf16 base (peft's
    default): their AdamW updates are too small for bf16."""
    peft = require_peft()
    config = lora_config(rank, alpha, targets, dropout)
    try:
        with quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as error:  # e.g. a target name that matches no module
        linear = sorted({name.split(".")[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)} - set(REFUSED_TARGETS))
        raise ValueError(f"could not add LoRA adapters: {error}. This model's linear layers are {linear}; pass some "
                         f"of them to --lora-targets, or '{ALL_LINEAR}'.") from error
    return wrapped


def is_lora_model(model) -> bool:
    """True for a peft.PeftModel (checked without importing peft when it is not installed)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: the adapters' A and B under LoRA, every weight otherwise."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def adapters_disabled(model):
    """Context manager: inside it a LoRA model computes with its base weights alone, π_ref = π_base."""
    if not is_lora_model(model):
        raise ValueError("adapters_disabled needs a LoRA (peft) model; a model without adapters is its own base.")
    return model.disable_adapter()


# ----------------------------------------------------------------------------- checkpoints
def is_lora_checkpoint(folder) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def base_model_record(model_name: str, task: str | None) -> str:
    """The text of minnat_base_model.json: how to find the base model again (a folder is made absolute)."""
    name = str(Path(model_name).resolve()) if Path(model_name).is_dir() else model_name
    return json.dumps({"model": name, "task": task}, indent=2)


def read_base_model(folder) -> tuple[str, str | None]:
    """(base model name, task) of a LoRA checkpoint: from minnat_base_model.json, else peft's own record."""
    folder = Path(folder)
    record = folder / BASE_MODEL_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        return saved["model"], saved.get("task")
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"the LoRA checkpoint {folder} does not say which base model it adapts (no {BASE_MODEL_FILE} "
                         f"and no base_model_name_or_path in {ADAPTER_CONFIG}); write {BASE_MODEL_FILE} with "
                         '{"model": "<hub id or folder>"}.')
    return base, None


def attach_saved_adapter(base_model, folder, *, trainable: bool):
    """base_model + the adapter saved in `folder` -> peft.PeftModel (adapter trainable or frozen)."""
    peft = require_peft()
    with quiet_peft():
        return peft.PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)
