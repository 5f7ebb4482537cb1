"""Crash-safe run folders: atomic checkpoints, an append-only metrics log, exact resume.

A run folder looks like

    run/
      config.json              the TrainConfig of the run
      metrics.jsonl            one JSON object per step, each written with a single write()
      samples.jsonl            sampled completions with their rewards
      checkpoints/step-000040/ model + tokenizer (save_pretrained, safetensors) and trainer_state.pt;
                               with LoRA the adapter only (adapter_model.safetensors, adapter_config.json)
                               and minnat_base_model.json naming the base model (minnat.lora)
      checkpoints/latest       the name of the newest complete checkpoint
      summary.json             written at the end

Atomicity: a checkpoint is written into a temporary folder and renamed into place (a
rename is atomic on POSIX file systems), and only then does `latest` — itself replaced
atomically — point to it. A SIGKILL at any moment therefore leaves `latest` naming a
complete checkpoint. Metrics lines are appended with one `os.write` each and fsync'ed;
on resume, lines past the checkpoint's step (and any torn last line) are dropped, so the
resumed log continues exactly where the checkpoint left off.

Safety: the trainer state holds tensors and plain numbers only and is read with
`torch.load(weights_only=True)`; model weights are safetensors.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

KEEP_CHECKPOINTS = 2


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def append_json_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single write() call, then fsync."""
    data = (json.dumps(record, allow_nan=True) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_json_lines(path: Path) -> list[dict]:
    """Every complete line of a JSON-lines file (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_json_lines(path: Path, keep) -> None:
    """Rewrite a JSON-lines file atomically with only the complete records for which keep(record) is True."""
    path = Path(path)
    if path.exists():
        kept = [record for record in read_json_lines(path) if keep(record)]
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def rng_state(selection_generator: torch.Generator) -> dict:
    """Every random state a step uses: torch (CPU, CUDA), numpy, python, and NAT's selection draws."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "selection": selection_generator.get_state(),
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "position": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": json.dumps(random.getstate()),
    }


def restore_rng_state(state: dict, selection_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    selection_generator.set_state(state["selection"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = json.loads(state["python"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write checkpoints/step-NNNNNN atomically, point `latest` at it, and prune old ones.

    `model.save_pretrained` writes what the model is: the full weights, or a peft model's adapter
    alone. `extra_files` ({name: text}) are written beside them (LoRA: minnat_base_model.json)."""
    checkpoints = Path(run_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{step:06d}"
    temporary = Path(tempfile.mkdtemp(dir=checkpoints, prefix=f".step-{step:06d}.", suffix=".tmp"))
    try:
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        torch.save(trainer_state, temporary / "trainer_state.pt")
        for name, text in (extra_files or {}).items():
            (temporary / name).write_text(text)
        for file in temporary.iterdir():  # make the bytes durable before the rename publishes them
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    atomic_write_text(checkpoints / "latest", final.name + "\n")
    for old in sorted(checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints.glob(".step-*.tmp"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / "trainer_state.pt").exists() else None


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / "trainer_state.pt", weights_only=True, map_location="cpu")
