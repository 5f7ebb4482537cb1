"""What every benchmark mode shares: the model presets, the synthetic batch, the selection draws, one update.

`minnat.bench` (modes update and step), `minnat.bench_memory` (mode memory) and
`minnat.bench_lora` (mode lora) import from here, and never the other way round, so the
imports flow one way: bench -> bench_memory, bench_lora -> bench_common.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass

import torch
from transformers import Qwen3Config

from minnat.grpo import policy_loss
from minnat.logprobs import LogprobStats, response_logprobs
from minnat.measure import cpu_load
from minnat.models import PRESETS, QWEN3_VOCAB_SIZE, build_preset_model, build_random_model, preset_config
from minnat.nat import (Selection, check_response_mask, rpc_cut_fraction_quantile, rpc_inclusion_probabilities,
                        select_tokens, selection_from_keep)

# response_logprobs' own default per-pass overhead, so that the benchmark measures what the trainer does.
DEFAULT_OVERHEAD_TOKENS = inspect.signature(response_logprobs).parameters["micro_batch_overhead_tokens"].default

# ----------------------------------------------------------------------------- the model
# Bodies the benchmark adds to minnat.models' presets. "small": issue 14's memory configuration, a
# body small enough for a CPU under Qwen's vocabulary (there the LM head dominates the step).
BENCH_ARCHITECTURES = {
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, tie_word_embeddings=True, vocab_size=QWEN3_VOCAB_SIZE,
                  max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
}
BENCH_PRESETS = PRESETS + tuple(BENCH_ARCHITECTURES)


def bench_config(preset: str, vocab_size: int | None = None):
    """The Qwen3Config of a preset (minnat.models' or the benchmark's own), with the vocabulary override."""
    config = Qwen3Config(**BENCH_ARCHITECTURES[preset]) if preset in BENCH_ARCHITECTURES else preset_config(preset)
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def build_model(preset: str, *, vocab_size: int | None, dtype: torch.dtype, device: str,
                gradient_checkpointing: bool, seed: int = 0):
    """A Qwen3ForCausalLM of the preset's architecture with random weights, built on `device`, in train mode.

    `minnat.models.build_preset_model` with the vocabulary override (the benchmark's own presets
    are built the same way here). Random weights are fine: the cost of a forward/backward pass
    does not depend on the weights' values.
    """
    if preset in BENCH_ARCHITECTURES:
        model = build_random_model(Qwen3Config(**BENCH_ARCHITECTURES[preset]), dtype=dtype, device=device,
                                   gradient_checkpointing=gradient_checkpointing, seed=seed, vocab_size=vocab_size)
    else:
        model = build_preset_model(preset, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing,
                                   seed=seed, vocab_size=vocab_size)
    model.config.use_cache = False
    return model.train()


# ----------------------------------------------------------------------------- the batch
@dataclass
class BenchBatch:
    """One synthetic rollout batch in `generate`'s layout (see minnat.rollout).

    input_ids       long  [B, P + T]  random prompt ids, then the right-padded response (pad id 0)
    attention_mask  long  [B, P + T]  1 on the prompt and on the L_b response tokens
    response_mask   bool  [B, T]      the first L_b columns of row b
    advantages      float [B]         random Â_i (a standard normal: GRPO advantages are standardised)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    prompt_length: int
    response_length: int
    seed: int

    def to(self, device) -> "BenchBatch":
        return BenchBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                          self.advantages.to(device), self.prompt_length, self.response_length, self.seed)

    def rows(self, index: torch.Tensor) -> "BenchBatch":
        return BenchBatch(self.input_ids[index], self.attention_mask[index], self.response_mask[index],
                          self.advantages[index], self.prompt_length, self.response_length, self.seed)

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of every tensor's bytes: equal fingerprints = the same batch."""
        return tensor_fingerprint(self.input_ids, self.attention_mask, self.response_mask, self.advantages)


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def batch_seed(seed: int, response_length: int) -> int:
    """The batch at response length T depends only on (seed, T) — never on method or budget."""
    return seed * 1_000_003 + response_length


def make_batch(batch_size: int, prompt_length: int, response_length: int, vocab_size: int,
               seed: int, shortest_fraction: float = 0.5) -> BenchBatch:
    """A batch of `batch_size` responses with L_b ~ Uniform{⌈shortest_fraction·T⌉, …, T}."""
    if batch_size < 1 or prompt_length < 1 or response_length < 1:
        raise ValueError(f"batch size, prompt length and response length must be at least 1; got "
                         f"{batch_size}, {prompt_length}, {response_length}.")
    generator = torch.Generator().manual_seed(seed)
    shortest = max(1, math.ceil(shortest_fraction * response_length))
    lengths = torch.randint(shortest, response_length + 1, (batch_size,), generator=generator)
    total = prompt_length + response_length
    input_ids = torch.randint(1, max(vocab_size, 2), (batch_size, total), generator=generator)
    response_mask = torch.arange(response_length).unsqueeze(0) < lengths.unsqueeze(1)
    attention_mask = torch.cat([torch.ones(batch_size, prompt_length, dtype=torch.long),
                                response_mask.long()], dim=1)
    input_ids = input_ids * attention_mask  # pad id 0 after each response
    advantages = torch.randn(batch_size, generator=generator)
    return BenchBatch(input_ids, attention_mask, response_mask, advantages, prompt_length, response_length, seed)


def selection_seed(seed: int, draw: int) -> int:
    """Draw d uses the same seed at every budget and response length (common random numbers)."""
    return seed * 7919 + 104_729 * (draw + 1)


def draw_selection(batch: BenchBatch, method: str, budget: float, seed: int,
                   cut_distribution: str = "uniform-floor") -> Selection:
    """One NAT draw over the batch's responses with `select_tokens` (on CPU: the same on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return select_tokens(batch.response_mask.cpu(), method, budget if method != "full" else 1.0, generator,
                         cut_distribution=cut_distribution)




def stratified_rpc_selections(batch: BenchBatch, budget: float, draws: int, seed: int,
                              cut_distribution: str = "uniform-floor") -> list[Selection]:
    """`draws` RPC selections whose D·B cut levels are stratified, so that their average is balanced.

    RPC's cost is random: three independent draws of eight cuts can keep 0.45 or 0.55 of the
    tokens at ρ = 0.5 (and 0.20 at ρ = 0.25), which would flatter or wrong RPC by as much. Each
    cut is C = ⌈F⁻¹(p)·L⌉ with a probability level p, and here the D × B levels are laid out in
    two nested strata (a Latin-hypercube-style design):

        p_{d,b} = (σ_b(d) + (τ_{σ_b(d)}(b) + V_{d,b}) / B) / D

    σ_b a random permutation of the D draws (row b gets one level in each 1/D-wide stratum),
    τ_k a random permutation of the B rows (within stratum k the rows take the B sub-strata),
    V uniform. Every p_{d,b} is still exactly Uniform[0, 1), so each row's cut has exactly
    RPC's law and π_t — hence the HT weights — are the real ones; only the joint draw is
    balanced. At ρ = 0.5 the kept total of 3 draws × 8 rows then varies by ~1% instead of ~12%.
    """
    generator = torch.Generator().manual_seed(seed)
    mask = batch.response_mask.cpu()
    lengths = check_response_mask(mask)
    rows, columns = mask.shape
    stratum = torch.stack([torch.randperm(draws, generator=generator) for _ in range(rows)], dim=1)  # σ: [D, B]
    sub_strata = torch.stack([torch.randperm(rows, generator=generator) for _ in range(draws)])    # τ: [D, B]
    sub_stratum = sub_strata.gather(0, stratum)  # τ_{σ_b(d)}(b)
    jitter = torch.rand(draws, rows, generator=generator, dtype=torch.float64)
    levels = (stratum.double() + (sub_stratum.double() + jitter) / rows) / draws
    inclusion_prob = rpc_inclusion_probabilities(lengths, columns, budget, cut_distribution)
    selections = []
    for draw in range(draws):
        fractions = rpc_cut_fraction_quantile(levels[draw], budget, cut_distribution)
        cuts = torch.minimum(torch.ceil(fractions * lengths.to(torch.float64)).long().clamp(min=1), lengths)
        keep = torch.arange(columns).unsqueeze(0) < cuts.unsqueeze(1)
        selections.append(selection_from_keep(keep, inclusion_prob, "rpc", budget, cut_distribution))
    return selections


# ----------------------------------------------------------------------------- one policy update
def policy_update_loss(model, batch: BenchBatch, selection: Selection, *,
                       overhead_tokens: int = DEFAULT_OVERHEAD_TOKENS, stats: LogprobStats | None = None,
                       loss_agg: str = "seq-mean-token-mean") -> torch.Tensor:
    """The forward half of one on-policy GRPO update (μ = 1, old log-probs = detached current ones),
    exactly as `minnat.train.Trainer.update` computes it. Returns the scalar loss; the caller runs backward."""
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask, selection,
                                 micro_batch_overhead_tokens=overhead_tokens, stats=stats)
    return policy_loss(logprobs, logprobs.detach(), batch.advantages, batch.response_mask,
                       weights=selection.weights.to(logprobs.dtype), loss_agg=loss_agg,
                       max_new_tokens=batch.response_length)


def zero_gradients(model) -> None:
    for parameter in model.parameters():
        parameter.grad = None



def describe_threads(options) -> str:
    """The thread count and the machine's load, stated in every report (time ratios depend on both)."""
    load, cores = cpu_load()
    threads = getattr(options, "threads", torch.get_num_threads())
    text = f"{threads} CPU thread{'s' if threads != 1 else ''}"
    if getattr(options, "threads_reason", None):
        text += f" — {options.threads_reason}"
    if load is not None:
        text += f", load average {load:.1f} on {cores} cores at the start"
        if load > cores - 0.5:
            text += " — a busy machine: expect noisy times"
    return text
