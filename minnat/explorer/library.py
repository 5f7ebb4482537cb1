"""The model library: one read-only model per name, shared by every browser tab, and what every view shares.

A model is loaded once per name ("embedded", a checkpoint folder the trainer wrote, a Hugging Face
id already in the local cache) and kept while it is among the few most recently used. Every view
reads it; none trains it. Gradients go through `torch.autograd.grad`, so the shared model's
`.grad` fields stay untouched, and every forward or backward holds the model's `lock`, so two
tabs never run the same model at once (generation and backward are not thread-safe).

Live training is the exception that proves the rule: each of its runs loads its own copy
through `minnat.train.Trainer`, so nothing it changes is seen by another tab.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from minnat.models import load_model


@dataclass
class LoadedModel:
    """A model shared read-only by every session. Hold `lock` for any forward or backward on it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_new_tokens: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())


class ModelLibrary:
    """Loads models by name once and keeps the `capacity` most recently used.

    `task` is the page's task: "embedded" means the tiny model shipped for it (`minnat.models`).
    Loading holds the library's lock, so two sessions asking for the same new model load it once."""

    def __init__(self, capacity: int = 3, task: str | None = None):
        self.capacity = capacity
        self.task = task
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        name = (name or "").strip()
        if not name:
            raise ValueError("no model given: type 'embedded', a checkpoint folder written by the trainer, or a "
                             "Hugging Face model id available offline.")
        with self.lock:
            if name in self.models:
                self.models.move_to_end(name)
                return self.models[name]
            # raises ValueError with a readable sentence when the model cannot be loaded
            model, tokenizer = load_model(name, device="cpu", task=self.task)
            model.eval()
            generation_limit = getattr(model.generation_config, "max_new_tokens", None)
            loaded = LoadedModel(name, model, tokenizer, max_new_tokens=int(generation_limit or 128))
            self.models[name] = loaded
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
            return loaded


@dataclass
class Shared:
    """What every view is built with: the library, the default model, the task, and the tab's model choice.

    `model_state` is the gr.State holding the model name this browser tab chose (per session);
    `session_model(name)` turns it into the shared LoadedModel."""

    library: ModelLibrary
    default_model: LoadedModel
    task: object            # a minnat.tasks.Task: prompts, rewards, train and held-out examples
    task_name: str
    data_path: str | None
    model_state: object     # gr.State(model name)

    def session_model(self, name: str | None) -> LoadedModel:
        return self.library.get(name or self.default_model.name)
