"""The GRPO + NAT trainer: `python -m minnat.train`.

One training step, in the paper's notation:

  1. Rollout.   Take B/G questions, sample G responses o_i each from π_old = π_θ (the current
                policy) at temperature τ, and score them: rewards R_i.        (minnat.rollout)
  2. Advantage. Â_i = (R_i − mean_group R) / (std_group R + ε).             (minnat.grpo.group_advantages)
  3. Select.    Draw which response tokens this step trains on: keep_{i,t} with inclusion
                probability π_{i,t}, HT weight keep/π.                         (minnat.nat.select_tokens)
  4. Old / reference log-probs, only at kept tokens (for RPC: on prompt + prefix only).
  5. Update.    μ times: log π_θ at kept tokens (minnat.logprobs.response_logprobs), the
                clipped GRPO loss with the HT weights (minnat.grpo.policy_loss), backward,
                gradient-norm clipping, AdamW step.

Full GRPO is the special case method="full" (π = 1, w = 1). Everything else — data,
rollouts, optimiser — is identical across methods, so runs are directly comparable.

With no arguments it trains the embedded tiny Qwen3 on the embedded long-answer task
("long-addition", ~250-token answers) with RPC at ρ = 0.5 on CPU and prints what changed,
including the tokens it gave the model against what full-token GRPO would have on the same
batches. `--task arithmetic` is the short embedded task; `--model Qwen/Qwen3-0.6B --task gsm8k`
runs a real model on one GPU through the same code, and `--lora-rank R` trains LoRA adapters
(peft) instead of every weight, for Qwen3-4B/8B on one GPU (`minnat.lora`; with a KL, the
reference is the base model with the adapters switched off: no second copy of the weights).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minnat import checkpoint as ckpt
from minnat import lora
from minnat.grpo import ADVANTAGE_SCALES, LOSS_AGGREGATIONS, aggregation_share, group_advantages, policy_loss
from minnat.logprobs import LogprobStats, planned_tokens_to_model, response_logprobs
from minnat.measure import ActivationMeter, stopwatch
from minnat.models import EMBEDDED_MODEL, architecture, choose_cpu_threads, load_model, resolve_device
from minnat.entropy import response_entropies
from minnat.nat import ALL_METHODS, CUT_SAMPLINGS, RPC_CUT_DISTRIBUTIONS, check_budget, select_for_method
from minnat.rollout import RolloutBatch, generate
from minnat.tasks import get_task


def option(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults train the embedded default in a few CPU minutes."""

    # what to train
    model: str = option(EMBEDDED_MODEL, "'embedded' (the shipped tiny Qwen3 made for --task), a checkpoint "
                                        "folder, or a hub id such as Qwen/Qwen3-0.6B")
    task: str = option("long-addition", "'long-addition' (embedded, offline, ~250-token answers), 'late-credit' "
                                        "(embedded: ~260-token answers whose reward is decided in their last "
                                        "quarter, after random scratch work), 'arithmetic' (embedded, ~67-token "
                                        "answers) or 'gsm8k'")
    data_path: str | None = option(None, "GSM8K-format JSONL file or folder (train.jsonl/test.jsonl); "
                                         "default: the hub dataset")
    # NAT
    method: str = option("rpc", "which tokens the update trains on: full, urs or rpc (NAT, unbiased), or the "
                                "biased contrasts rpc-unweighted (the truncated answer, weight 1) and top-entropy "
                                "(TRL's top_entropy_quantile, weight 1; 0.2 is the paper's --budget)",
                         choices=ALL_METHODS)
    budget: float = option(0.5, "ρ ∈ (0, 1]: expected fraction of each response's tokens that is kept")
    cut_distribution: str = option("uniform-floor", "RPC cut distribution", choices=RPC_CUT_DISTRIBUTIONS)
    cut_sampling: str = option("stratified", "RPC cuts stratified across the batch (each response's cut has "
                                             "RPC's law, the batch's kept total barely moves) or independent",
                               choices=CUT_SAMPLINGS)
    token_budget: int = option(0, "response tokens kept per update: ρ of each step = min(1, N / Σ|o_i|) from "
                                  "the rollout's lengths, replacing --budget (0 = off)")
    # GRPO
    steps: int = option(30, "number of rollout + update steps")
    batch_size: int = option(128, "responses per step (= questions per step × group size)")
    group_size: int = option(8, "G: responses sampled per question")
    max_new_tokens: int = option(420, "longest response; longer ones are truncated (the longest long-addition "
                                             "answer is 413 tokens with EOS)")
    temperature: float = option(1.0, "sampling temperature τ, also used in the log-probs")
    top_p: float = option(1.0, "nucleus sampling (1.0 = off; anything else makes log-probs approximate)")
    learning_rate: float = option(1.5e-4, "AdamW peak learning rate (the embedded long-addition run collapsed "
                                                "at 3e-4)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(3, "linear learning-rate warmup steps, then the --lr-schedule")
    lr_schedule: str = option("linear", "after warmup: 'linear' decay to 0 at the last step (TRL's default; "
                                        "keeps a converged policy from drifting) or 'constant'",
                              choices=("linear", "constant"))
    updates_per_batch: int = option(1, "μ: optimiser steps on each rollout batch (old log-probs computed once)")
    clip_eps: float = option(0.2, "ε: lower clip of the ratio r (1 − ε)")
    clip_eps_high: float | None = option(None, "ε_high: upper clip (1 + ε_high); default ε (DAPO uses 0.28)")
    kl_coef: float = option(0.0, "β: weight of the k3 KL to a frozen reference model (loaded only when > 0)")
    loss_agg: str = option("seq-mean-token-mean", "loss aggregation", choices=LOSS_AGGREGATIONS)
    advantage_scale: str = option("group", "divide advantages by the group's std, the batch's, or none",
                                  choices=ADVANTAGE_SCALES)
    max_grad_norm: float = option(1.0, "gradient-norm clipping threshold")
    mask_truncated: bool = option(False, "leave responses that hit max_new_tokens out of the loss")
    drop_uniform_groups: bool = option(False, "skip groups whose rewards are all equal (their Â is 0)")
    update_micro_batch_rows: int = option(0, "rows per backward pass (gradient accumulation); 0 = whole batch")
    micro_batch_overhead_tokens: int = option(128, "what one extra forward pass costs, in tokens: the "
                                                   "length-grouping planner trades padding against passes "
                                                   "(0 = no padding, one pass per distinct length)")
    # evaluation and logging
    eval_every: int = option(10, "greedy held-out evaluation every this many steps (0 = only before/after)")
    num_eval: int = option(200, "held-out questions per evaluation")
    eval_batch_size: int = option(200, "questions per generate() call during evaluation")
    log_samples: int = option(2, "sampled completions written to samples.jsonl per step")
    measure_activation_memory: bool = option(True, "count bytes saved for backward in each update")
    tensorboard: bool = option(False, "also write TensorBoard logs (needs the tensorboard package)")
    # run folder
    out: str | None = option(None, "output folder (default: a new folder under runs/)")
    save_every: int = option(30, "checkpoint every this many steps (and at the end)")
    resume: str | None = option(None, "continue the run in this output folder from its last checkpoint")
    overwrite: bool = option(False, "replace an existing run in --out")
    seed: int = option(0, "seed for data order, sampling and NAT's selections")
    task_seed: int = option(0, "seed of the task's fixed train / held-out split (keep it to compare runs)")
    # hardware
    device: str = option("auto", "cpu, cuda, or auto")
    dtype: str = option("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (saves memory)")
    # LoRA (peft, pip install "minnat[lora]")
    lora_rank: int = option(0, "LoRA rank r: train rank-r adapters (W + (α/r)·BA) instead of every weight; the "
                               "KL's reference is then the base with the adapters off (0 = full fine-tuning, "
                               "default)")
    lora_alpha: float | None = option(None, "LoRA scale α (the update is (α/r)·BA); default 2 × --lora-rank")
    lora_targets: str = option(lora.ALL_LINEAR, "modules that get adapters: 'all-linear' (every decoder linear "
                                                "layer, never the LM head) or names such as q_proj,k_proj,v_proj,"
                                                "o_proj (default: all-linear)")
    lora_dropout: float = option(0.0, "dropout on the adapters' input (0 keeps the update exactly NAT's "
                                      "estimator of the full-token gradient)")
    num_threads: int = option(0, "CPU threads for torch; 0 = auto: the cores the load average leaves free "
                                 "(default)")

    def validate(self) -> None:
        if self.method not in ALL_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {ALL_METHODS}.")
        if self.cut_sampling not in CUT_SAMPLINGS:
            raise ValueError(f"unknown cut_sampling {self.cut_sampling!r}; choose one of {CUT_SAMPLINGS}.")
        if isinstance(self.token_budget, bool) or not isinstance(self.token_budget, int) or self.token_budget < 0:
            raise ValueError(f"token_budget must be a whole number of tokens, or 0 for off; got {self.token_budget!r}.")
        if self.token_budget and self.method == "full":
            raise ValueError("--token-budget needs a method that keeps a subset of the tokens (rpc, urs, ...); "
                             "full trains on every token. Drop --token-budget or choose --method rpc.")
        self.budget = check_budget(self.budget)
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"unknown loss_agg {self.loss_agg!r}; choose one of {LOSS_AGGREGATIONS}.")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(f"unknown advantage_scale {self.advantage_scale!r}; choose one of {ADVANTAGE_SCALES}.")
        if self.cut_distribution not in RPC_CUT_DISTRIBUTIONS:
            raise ValueError(f"unknown cut_distribution {self.cut_distribution!r}; choose one of "
                             f"{RPC_CUT_DISTRIBUTIONS}.")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (GRPO compares responses to the same question); "
                             f"got {self.group_size}. Try --group-size 8.")
        if self.batch_size < self.group_size or self.batch_size % self.group_size:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of group_size "
                             f"{self.group_size} (each question gets exactly G responses); e.g. --batch-size "
                             f"{max(1, self.batch_size // self.group_size) * self.group_size}.")
        for name in ("steps", "max_new_tokens", "updates_per_batch", "num_eval", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}.")
        self.validate_lora()

    def validate_lora(self) -> None:
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"lora_rank must be a whole number ≥ 0 (0 = full fine-tuning); got {self.lora_rank!r}.")
        if not self.lora_rank:
            given = [flag for flag, value, default in (("--lora-alpha", self.lora_alpha, None),
                                                       ("--lora-targets", self.lora_targets, lora.ALL_LINEAR),
                                                       ("--lora-dropout", self.lora_dropout, 0.0)) if value != default]
            if given:
                raise ValueError(f"{', '.join(given)} set without --lora-rank: give the adapters a rank, e.g. "
                                 "--lora-rank 16, or drop those flags to train every weight.")
            return
        lora.require_peft()
        lora.parse_targets(self.lora_targets)
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0; got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1); got {self.lora_dropout}.")


def parse_args(argv=None) -> TrainConfig:
    """Every TrainConfig field is a --flag with its help line. Only the flags given are set."""
    parser = argparse.ArgumentParser(prog="python -m minnat.train", description=__doc__.split("\n\n")[0],
                                     argument_default=argparse.SUPPRESS,
                                     )
    for config_field in dataclasses.fields(TrainConfig):
        flag = "--" + config_field.name.replace("_", "-")
        help_text = config_field.metadata["help"]
        if "default" not in help_text:  # some help lines already say what their default means
            help_text += f" (default: {config_field.default})"
        type_name = str(config_field.type)  # e.g. "int", "float | None", "bool"
        if type_name == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = float if "float" in type_name else int if "int" in type_name else str
            parser.add_argument(flag, type=kind, help=help_text, choices=config_field.metadata.get("choices"))
    given = vars(parser.parse_args(argv))
    if "resume" in given:
        # A resumed run continues with its saved configuration; only --steps may extend it.
        saved = Path(given["resume"]) / "config.json"
        if not saved.exists():
            raise ValueError(f"cannot resume: {saved} does not exist. --resume takes the output folder of an "
                             "earlier minnat run.")
        config = TrainConfig(**json.loads(saved.read_text()))
        config.resume, config.out = given["resume"], given["resume"]
        if "steps" in given:
            config.steps = given["steps"]
        return config
    return TrainConfig(**given)


class Trainer:
    """Holds the model, optimiser and run folder; `train()` runs the loop and returns the summary."""

    def __init__(self, config: TrainConfig, progress: bool = True):
        config.validate()
        self.config = config
        self.progress = progress
        self.device = resolve_device(config.device)
        if self.device == "cpu":
            threads, self.threads_reason = choose_cpu_threads(config.num_threads)
            torch.set_num_threads(threads)
        else:
            self.threads_reason = None
        self.run_dir = self.prepare_run_dir()
        try:
            self.load(config)
        except BaseException:
            self.discard_failed_start()
            raise
        # The configuration is written only once everything loaded, so a failed start leaves no
        # config.json behind that would make the corrected command look like a second run.
        if not config.resume:
            if self.replaces_run:  # --overwrite: the old run goes only now that the new one can start
                shutil.rmtree(self.run_dir)
                self.run_dir.mkdir(parents=True)
            ckpt.atomic_write_text(self.run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
        self.tensorboard = self.open_tensorboard() if config.tensorboard else None

    def load(self, config: TrainConfig) -> None:
        """Task, model(s), optimiser and any resumed state: everything that can fail on bad input."""
        self.task = get_task(config.task, data_path=config.data_path, seed=config.task_seed)
        if not self.task.train_examples or not self.task.eval_examples:
            raise ValueError(f"task {config.task!r} has no training or no evaluation examples; check --data-path.")

        resume_from = ckpt.latest_checkpoint(self.run_dir) if config.resume else None
        if config.resume and resume_from is None:
            raise ValueError(f"cannot resume {self.run_dir}: it has no complete checkpoint yet (checkpoints/latest "
                             "is missing). Start it again with --overwrite.")
        if resume_from is not None:
            self.check_same_architecture(resume_from)
        self.model, self.tokenizer = load_model(str(resume_from) if resume_from else config.model, dtype=config.dtype,
                                                device=self.device, task=config.task,
                                                gradient_checkpointing=config.gradient_checkpointing,
                                                keep_adapter=bool(config.lora_rank) and resume_from is not None)
        if config.lora_rank and resume_from is not None and not lora.is_lora_model(self.model):
            raise ValueError(f"cannot resume {self.run_dir} with LoRA: its checkpoint {resume_from} holds full "
                             "weights, not an adapter. Resume it without LoRA, or start a new run with --out.")
        if config.lora_rank and resume_from is None:
            torch.manual_seed(config.seed)  # A's random init is part of the run: the same seed, the same adapters
            self.model = lora.add_lora(self.model, config.lora_rank, config.lora_alpha, config.lora_targets,
                                       config.lora_dropout)
        self.reference_model = None
        if config.kl_coef > 0 and not config.lora_rank:  # the frozen reference is only needed for the KL term;
            # with LoRA it is the base model itself, adapters off (`reference_logprobs`)
            self.reference_model, _ = load_model(config.model, dtype=config.dtype, device=self.device,
                                                 task=config.task)
            self.reference_model.eval().requires_grad_(False)

        # Under LoRA only the adapters require gradients; without it this is every parameter, as before.
        self.optimizer = torch.optim.AdamW(lora.trainable_parameters(self.model), lr=config.learning_rate,
                                           weight_decay=config.weight_decay, betas=(0.9, 0.99))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.learning_rate_factor(step))
        self.selection_generator = torch.Generator().manual_seed(config.seed + 1)
        self.seed_everything(config.seed)

        self.step = 0
        self.totals = {"response_tokens_generated": 0, "response_tokens_used": 0, "tokens_to_model": 0,
                       "full_tokens_to_model": 0, "skipped_steps": 0, "steps_without_signal": 0}
        self.times = {"rollout": 0.0, "update": 0.0, "eval": 0.0}
        self.accuracy_before = None
        self.last_accuracy = None
        if resume_from is not None:
            self.load_state(resume_from)

    # ----------------------------------------------------------------- run folder
    def prepare_run_dir(self) -> Path:
        config = self.config
        if config.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config.out = str(Path("runs") / f"{stamp}-{method_label(config.method, config.budget, ascii=True)}"
                                            f"-seed{config.seed}")
        run_dir = Path(config.out)
        self.created_run_dir = not run_dir.exists()
        has_run = (run_dir / "config.json").exists() or (run_dir / "metrics.jsonl").exists()
        if has_run and not config.resume and not config.overwrite:
            raise ValueError(f"the output folder {run_dir} already holds a run. Pass --resume {run_dir} to "
                             "continue it, --overwrite to replace it, or choose another --out.")
        self.replaces_run = has_run and not config.resume
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise ValueError(f"cannot write to the output folder {run_dir}: {error.strerror or error}. Choose a "
                             "writable folder with free space via --out.") from error
        return run_dir

    def discard_failed_start(self) -> None:
        """Undo what a start that failed before training wrote: the run folder if this start made it."""
        if getattr(self, "created_run_dir", False) and not self.config.resume:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def check_same_architecture(self, checkpoint: Path) -> None:
        """A checkpoint must have the architecture of the run's --model (checked before loading it)."""
        expected, found = architecture(self.config.model, self.config.task), architecture(str(checkpoint))
        if expected is None or found is None or found == expected:
            return  # the run's model is a hub id not in the local cache: nothing to compare without network
        differences = ", ".join(f"{field} {found[field]} (expected {expected[field]})"
                                for field in expected if found[field] != expected[field])
        raise ValueError(f"the checkpoint {checkpoint} is a {found['model_type']} model of another architecture "
                         f"than the {expected['model_type']} {self.config.model} this run trains: {differences}. "
                         "Resume the output folder this checkpoint belongs to, or start a new run with --out.")

    def open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard.") from error
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def learning_rate_factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at optimizer step `step` (0-based): linear warmup
        over warmup_steps, then constant or a linear decay that reaches 0 after the last step."""
        config = self.config
        warmup = max(config.warmup_steps, 0)
        factor = min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
        if config.lr_schedule == "linear" and step >= warmup:
            factor *= max(0.0, (config.steps - step) / max(config.steps - warmup, 1))
        return factor

    @staticmethod
    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ----------------------------------------------------------------- data
    def questions_for_step(self, step: int) -> list:
        """A deterministic stream: epoch e visits the training set in a permutation seeded by (seed, e).
        Stateless in `step`, so a resumed run picks up exactly the questions it would have seen."""
        per_step = self.config.batch_size // self.config.group_size
        examples = self.task.train_examples
        chosen = []
        for position in range(step * per_step, (step + 1) * per_step):
            epoch, index = divmod(position, len(examples))
            chosen.append(examples[self.epoch_order(epoch)[index]])
        return chosen

    @functools.lru_cache(maxsize=2)
    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of the training set that epoch `epoch` visits."""
        order = list(range(len(self.task.train_examples)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return order

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Greedy held-out accuracy: the fraction of evaluation questions answered right."""
        config = self.config
        examples = self.task.eval_examples[:config.num_eval]
        correct = 0.0
        with stopwatch(self.times, "eval", self.device):
            for start in range(0, len(examples), config.eval_batch_size):
                batch = generate(self.model, self.tokenizer, self.task, examples[start:start + config.eval_batch_size],
                                 group_size=1, max_new_tokens=config.max_new_tokens, greedy=True)
                correct += float(batch.rewards.sum())
        return correct / len(examples)

    # ----------------------------------------------------------------- the update
    def draw_selection(self, input_ids, attention_mask, response_mask):
        """Step 3: which tokens this update trains on -> (Selection on the device, ρ of this step).

        With --token-budget N, ρ = min(1, N / Σ|o_i|) is decided from the rollout's lengths alone
        (not from θ, not from the draw), so given the batch the NAT estimator stays unbiased and
        the update keeps about N response tokens whatever the responses' lengths.
        """
        config = self.config
        budget = config.budget
        if config.token_budget:
            budget = min(1.0, config.token_budget / max(int(response_mask.sum()), 1))
        entropies = None
        if config.method == "top-entropy":  # the contrast needs H_t of the current policy at every response token
            entropies = response_entropies(self.model, input_ids, attention_mask, response_mask,
                                           temperature=config.temperature).cpu()
        selection = select_for_method(response_mask.cpu(), config.method, budget, self.selection_generator,
                                      entropies=entropies, cut_distribution=config.cut_distribution,
                                      cut_sampling=config.cut_sampling)
        return selection.to(self.device), budget

    def update(self, batch: RolloutBatch) -> dict:
        """Steps 2–5 of the module docstring on one rollout batch. Returns the step's metrics."""
        config, model = self.config, self.model
        advantages = group_advantages(batch.rewards, config.group_size, config.advantage_scale)
        response_mask = batch.response_mask.clone()
        if config.mask_truncated:
            response_mask[batch.truncated.to(response_mask.device)] = False
        rows = response_mask.any(dim=1).cpu()
        if config.drop_uniform_groups:
            grouped = batch.rewards.view(-1, config.group_size)
            rows &= (grouped.max(dim=1).values > grouped.min(dim=1).values).repeat_interleave(config.group_size)
        metrics = {"rows_in_update": int(rows.sum())}
        if not rows.any():
            self.totals["steps_without_signal"] += 1
            return metrics | {"loss": None, "update_skipped": "no response left to train on"}

        device = self.device
        input_ids, attention_mask = batch.input_ids[rows].to(device), batch.attention_mask[rows].to(device)
        response_mask, advantages = response_mask[rows].to(device), advantages[rows].to(device)
        # Step 3: the NAT draw. Drawn once per rollout batch and reused by all μ updates.
        selection, step_budget = self.draw_selection(input_ids, attention_mask, response_mask)
        loss_mask = selection.loss_mask(response_mask)  # the full response mask, except for rpc-unweighted
        logprob_options = dict(temperature=config.temperature,
                               micro_batch_overhead_tokens=config.micro_batch_overhead_tokens)
        # Step 4: with μ = 1 the only update is on-policy, log π_old = log π_θ (detached): no extra pass.
        old_logprobs = None
        if config.updates_per_batch > 1:
            with torch.no_grad():
                old_logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection,
                                                 **logprob_options)
        reference_logprobs = None
        if config.kl_coef > 0:
            reference_logprobs = self.reference_logprobs(input_ids, attention_mask, response_mask, selection,
                                                         logprob_options)

        chunk_rows = config.update_micro_batch_rows or input_ids.shape[0]
        chunks = [torch.arange(start, min(start + chunk_rows, input_ids.shape[0]), device=device)
                  for start in range(0, input_ids.shape[0], chunk_rows)]
        losses, grad_norms, activation_bytes, stats = [], [], 0, LogprobStats()
        # The yardstick: what full-token GRPO would give the model on these rows, from the same planner.
        full_tokens = sum(planned_tokens_to_model(attention_mask[chunk], response_mask[chunk],
                                                  micro_batch_overhead_tokens=config.micro_batch_overhead_tokens)
                          for chunk in chunks)
        model.train()
        for _ in range(config.updates_per_batch):  # Step 5
            self.optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for chunk in chunks:
                meter = ActivationMeter(model) if config.measure_activation_memory else None
                with meter if meter is not None else contextlib.nullcontext():
                    logprobs = response_logprobs(model, input_ids[chunk], attention_mask[chunk],
                                                 response_mask[chunk], selection.rows(chunk), stats=stats,
                                                 **logprob_options)
                    old = logprobs.detach() if old_logprobs is None else old_logprobs[chunk]
                    loss = policy_loss(logprobs, old, advantages[chunk], loss_mask[chunk],
                                       weights=selection.weights[chunk],
                                       ref_logprobs=None if reference_logprobs is None else reference_logprobs[chunk],
                                       clip_eps=config.clip_eps, clip_eps_high=config.clip_eps_high,
                                       kl_coef=config.kl_coef, loss_agg=config.loss_agg,
                                       max_new_tokens=config.max_new_tokens)  # Dr. GRPO's constant B·L_max
                    loss = loss * aggregation_share(loss_mask[chunk], loss_mask, config.loss_agg)
                if meter is not None:
                    activation_bytes = max(activation_bytes, meter.bytes)
                if loss.requires_grad:
                    loss.backward()
                total_loss += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm))
            if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
                # Numerical guard: a non-finite step would corrupt the weights; skip it and count it.
                self.optimizer.zero_grad(set_to_none=True)
                self.totals["skipped_steps"] += 1
            else:
                self.optimizer.step()
            losses.append(total_loss)
            grad_norms.append(grad_norm)

        learning_rate = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a step skipped by the numerical guard still advances the schedule
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        used = int(selection.keep.sum())
        self.totals["response_tokens_used"] += used
        self.totals["tokens_to_model"] += stats.tokens_to_model // config.updates_per_batch
        self.totals["full_tokens_to_model"] += full_tokens
        return metrics | {
            "loss": float(np.mean(losses)), "grad_norm": float(np.mean(grad_norms)),
            "response_tokens_used": used, "kept_fraction": used / max(int(response_mask.sum()), 1),
            "budget": step_budget,
            "max_ht_weight": float(selection.weights.max()) if used else 0.0,
            "tokens_to_model": stats.tokens_to_model // config.updates_per_batch,
            "full_tokens_to_model": full_tokens,
            "activation_bytes": activation_bytes if config.measure_activation_memory else None,
            "learning_rate": learning_rate,
        }

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, response_mask, selection, logprob_options):
        """log π_ref at the kept tokens: the frozen copy loaded for the KL, or under LoRA the base model
        itself with the adapters switched off (the policy at step 0, since B = 0 there)."""
        if self.reference_model is not None:
            return response_logprobs(self.reference_model, input_ids, attention_mask, response_mask, selection,
                                     **logprob_options)
        with lora.adapters_disabled(self.model):
            return response_logprobs(self.model, input_ids, attention_mask, response_mask, selection,
                                     **logprob_options)

    # ----------------------------------------------------------------- checkpoints
    def trainer_state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(self.selection_generator),
                "totals": dict(self.totals), "times": dict(self.times),
                "accuracy_before": self.accuracy_before, "last_accuracy": self.last_accuracy}

    def save(self) -> None:
        try:
            extra = {lora.BASE_MODEL_FILE: lora.base_model_record(self.config.model, self.config.task)} \
                if self.config.lora_rank else None
            ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, self.trainer_state(),
                                 extra_files=extra)
        except OSError as error:
            last = ckpt.latest_checkpoint(self.run_dir)
            raise ValueError(f"could not write a checkpoint to {self.run_dir}: {error.strerror or error}. Free disk "
                             "space or make the folder writable, then continue with --resume "
                             f"{self.run_dir} (last complete checkpoint: {last})." if last else
                             f"could not write a checkpoint to {self.run_dir}: {error.strerror or error}. Free "
                             "disk space or choose another --out.") from error

    def load_state(self, checkpoint: Path) -> None:
        state = ckpt.load_trainer_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"], self.selection_generator)
        self.step = int(state["step"])
        self.totals.update(state["totals"])
        self.times.update(state["times"])
        self.accuracy_before, self.last_accuracy = state["accuracy_before"], state["last_accuracy"]
        # Drop log lines written after this checkpoint (and a torn last line): they will be redone.
        for name in ("metrics.jsonl", "samples.jsonl"):
            ckpt.truncate_json_lines(self.run_dir / name, lambda record: record.get("step", 0) <= self.step)

    def log(self, record: dict) -> None:
        ckpt.append_json_line(self.run_dir / "metrics.jsonl", record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(key, value, record["step"])

    # ----------------------------------------------------------------- the loop
    def train(self, on_step=None, should_stop=None) -> dict:
        """Run until config.steps (or until should_stop() returns True); on_step(record) after each step."""
        config = self.config
        start_time = time.perf_counter()
        if self.accuracy_before is None:
            self.accuracy_before = self.last_accuracy = self.evaluate()
            self.log({"step": 0, "eval_accuracy": self.accuracy_before})
        bar = tqdm(range(self.step, config.steps), initial=self.step, total=config.steps, disable=not self.progress,
                   desc=f"GRPO {method_label(config.method, config.budget)}", dynamic_ncols=True)
        for _ in bar:
            step_times = {}
            with stopwatch(step_times, "rollout", self.device):
                batch = generate(self.model, self.tokenizer, self.task, self.questions_for_step(self.step),
                                 group_size=config.group_size, max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, top_p=config.top_p)
            if bool(batch.truncated.all()):
                tqdm.write(f"warning: every response of step {self.step + 1} hit --max-new-tokens "
                           f"{config.max_new_tokens} without EOS; raise --max-new-tokens or check the prompt "
                           "format" + (" (with --mask-truncated this step trains on nothing)."
                                       if config.mask_truncated else "."))
            with stopwatch(step_times, "update", self.device):
                metrics = self.update(batch)
            self.step += 1
            generated = int(batch.response_mask.sum())
            self.totals["response_tokens_generated"] += generated
            for key in ("rollout", "update"):
                self.times[key] += step_times[key]
            record = {"step": self.step, "reward_mean": float(batch.rewards.mean()),
                      "response_length_mean": generated / batch.response_mask.shape[0],
                      "truncated_fraction": float(batch.truncated.float().mean()),
                      "response_tokens_generated": generated, **metrics,
                      "rollout_seconds": step_times["rollout"], "update_seconds": step_times["update"],
                      "skipped_steps_total": self.totals["skipped_steps"]}
            if (config.eval_every and self.step % config.eval_every == 0) or self.step == config.steps:
                self.last_accuracy = record["eval_accuracy"] = self.evaluate()
                if self.progress:  # one sampled completion, so a learner sees what the reward judges
                    tqdm.write(f"step {self.step}: held-out accuracy {self.last_accuracy:.1%}; sample "
                               f"{batch.examples[0].question!r} -> {batch.completions[0]!r} "
                               f"(reward {float(batch.rewards[0]):g})")
            self.log(record)
            for completion, reward in list(zip(batch.completions, batch.rewards.tolist()))[:config.log_samples]:
                ckpt.append_json_line(self.run_dir / "samples.jsonl",
                                      {"step": self.step, "question": batch.examples[0].question,
                                       "completion": completion, "reward": reward})
            bar.set_postfix_str(f"reward {record['reward_mean']:.2f} · held-out acc {self.last_accuracy:.1%} · "
                                f"tokens trained on {self.totals['response_tokens_used']:,} of "
                                f"{self.totals['response_tokens_generated']:,} generated", refresh=False)
            stopping = should_stop is not None and should_stop()
            if self.step % config.save_every == 0 or self.step == config.steps or stopping:
                self.save()
            if on_step is not None:
                on_step(record)
            if stopping:
                break
        bar.close()
        summary = self.summary(time.perf_counter() - start_time)
        ckpt.atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.tensorboard is not None:
            self.tensorboard.close()
        return summary

    def summary(self, wall_seconds: float) -> dict:
        config = self.config
        return {
            "method": config.method, "budget": config.budget, "model": config.model, "task": config.task,
            "seed": config.seed, "steps": self.step,
            "accuracy_before": self.accuracy_before, "accuracy_after": self.last_accuracy,
            "wall_seconds": {"total_this_session": wall_seconds, **{k: round(v, 3) for k, v in self.times.items()}},
            "response_tokens_generated": self.totals["response_tokens_generated"],
            "response_tokens_used": self.totals["response_tokens_used"],
            "used_fraction": self.totals["response_tokens_used"] / max(self.totals["response_tokens_generated"], 1),
            "tokens_to_model_in_updates": self.totals["tokens_to_model"],
            "full_tokens_to_model_in_updates": self.totals["full_tokens_to_model"],
            "skipped_steps": self.totals["skipped_steps"],
            "steps_without_signal": self.totals["steps_without_signal"],
            "output_dir": str(self.run_dir),
        } | ({"lora_rank": config.lora_rank,
              "trainable_parameters": sum(p.numel() for p in lora.trainable_parameters(self.model)),
              "parameters": sum(p.numel() for p in self.model.parameters())} if config.lora_rank else {})


def method_label(method: str, budget: float, ascii: bool = False) -> str:
    """"full" (it keeps every token, so no ρ), or e.g. "rpc ρ=0.5" ("rpc-0.5" for folder names)."""
    if method == "full":
        return "full"
    return f"{method}-{budget:g}" if ascii else f"{method} ρ={budget:g}"


def print_summary(summary: dict) -> None:
    times = summary["wall_seconds"]
    print(f"\n{method_label(summary['method'], summary['budget'])} on {summary['task']} ({summary['model']}), "
          f"{summary['steps']} steps")
    print(f"  held-out greedy accuracy: {summary['accuracy_before']:.1%} -> {summary['accuracy_after']:.1%} "
          f"({(summary['accuracy_after'] - summary['accuracy_before']) * 100:+.1f} points)")
    print(f"  response tokens used in updates: {summary['response_tokens_used']} of "
          f"{summary['response_tokens_generated']} generated ({summary['used_fraction']:.0%})")
    full_tokens = summary.get("full_tokens_to_model_in_updates") or 0
    print(f"  tokens given to the model in updates: {summary['tokens_to_model_in_updates']} "
          + (f"({summary['tokens_to_model_in_updates'] / full_tokens:.2f}× the {full_tokens} full-token GRPO "
             "would have given it on the same batches)" if full_tokens else ""))
    print(f"  time: rollout {times['rollout']:.1f} s, update {times['update']:.1f} s, eval {times['eval']:.1f} s")
    if summary["skipped_steps"]:
        print(f"  skipped non-finite steps: {summary['skipped_steps']}")
    print(f"  outputs: {summary['output_dir']} (summary.json, metrics.jsonl, checkpoints/)")


def main(argv=None) -> int:
    try:
        config = parse_args(argv)
        trainer = Trainer(config)
        if trainer.threads_reason:
            print(f"CPU threads: {trainer.threads_reason}", file=sys.stderr)
        if config.resume and trainer.step >= config.steps:
            print(f"nothing to do: {trainer.run_dir} has already trained {trainer.step} of its {config.steps} "
                  f"steps. To train further, give a larger total, e.g. --resume {trainer.run_dir} --steps "
                  f"{trainer.step + 20}.")
            return 0
        summary = trainer.train()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
