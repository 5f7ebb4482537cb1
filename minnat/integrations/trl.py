"""NAT inside TRL's `GRPOTrainer`: the same estimator, on TRL's engine (accelerate, DeepSpeed, vLLM).

    from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer

    args = NATGRPOConfig(output_dir="runs/trl", nat_method="rpc", nat_budget=0.5, ...)   # any GRPOConfig field too
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.train()

`NATGRPOTrainer` is TRL's `GRPOTrainer` with three methods replaced; generation, rewards,
advantages, batching, the optimizer and every distributed back-end stay TRL's. What changes,
in the paper's notation (response o_i, |o_i| tokens, per-token term ℓ_{i,t}):

1. Select (once per generation batch, `_generate_and_score_completions`). After TRL has sampled
   and scored a generation batch, draw one NAT selection over its completion mask with
   `minnat.nat.select_tokens`: keep_{i,t} with inclusion probability π_{i,t}. It is stored in the
   inputs dict as two extra [B, T] tensors, `nat_keep` and `nat_inclusion_prob`, so it survives
   TRL's shuffle and split into per-step batches, and all μ = `num_iterations` updates of the
   batch reuse it. `completion_mask` itself is never touched: TRL also uses it as the attention
   mask, and zeroing dropped tokens there would change what the model sees (a biased gradient).

2. Log-probs (`_get_per_token_logps_and_entropies` at generation time, `_compute_loss` at update
   time) come from `minnat.logprobs.response_logprobs`: rows are grouped by the columns they
   need into micro-batches, URS scores the LM head only at kept positions, and RPC gives the
   model prompt + kept prefix only — so RPC's forward and backward really get shorter even
   though TRL pads every completion to the longest of the generation batch. The old (μ > 1,
   or vLLM's importance-sampling correction) and reference (β > 0) log-probs are computed the
   same way, at the kept tokens only. Positions they skip hold NaN, so TRL's vLLM
   importance-sampling ratio is 1 there and its logged statistics ignore them.

3. Loss (`_compute_loss`). TRL's per-token loss for the chosen `loss_type` (clipped ratio, KL
   with or without `use_bias_correction_kl`, vLLM's token ratio), multiplied by the
   Horvitz–Thompson weight w_{i,t} = keep_{i,t}/π_{i,t}; every normaliser stays TRL's, computed
   from the FULL completion mask:

       grpo, sapo   (1/B) Σ_i (1/|o_i|) Σ_t w_{i,t} ℓ_{i,t}
       bnpo         Σ_{i,t} w_{i,t} ℓ_{i,t} / Σ_i |o_i|             (this batch)
       dr_grpo      Σ_{i,t} w_{i,t} ℓ_{i,t} / (B · max_completion_length)
       dapo, cispo  Σ_{i,t} w_{i,t} ℓ_{i,t} / num_items_in_batch    (the generation batch's token count)
       luspo        (1/B) Σ_i Σ_t w_{i,t} ℓ_{i,t}

   Since E[w_{i,t}] = 1 and no normaliser depends on the selection, E[loss_NAT] = loss_full and
   E[∇loss_NAT] = ∇loss_full exactly. With `nat_method="full"` (w = 1) the loss and gradient
   equal stock `GRPOTrainer`'s to float rounding (the tests check every supported loss type).

Refused at construction, each with the reason and what to use instead (see `unsupported_settings`):
settings whose per-token term or normaliser needs every token of a response, or that pick
tokens themselves — sequence-level importance sampling (GSPO), `loss_type="vespo"`,
`top_entropy_quantile < 1`, the entropy bonus, the off-policy sequence mask — and models this
path cannot score exactly (vision-language models, MoE router auxiliary loss, logit soft-capping
or scaling). Not computed: TRL's `entropy` metric (it would need the full logits); NAT logs
`nat/kept_fraction`, `nat/max_ht_weight` and `nat/tokens_to_model` instead.

Distributed: the update's forward runs through the model as TRL's accelerator wrapped it (DDP,
DeepSpeed ZeRO-1/2/3): the wrapped module's `forward` is swapped, for that one call, for
`response_logprobs`, so the wrapper's own forward (DDP's gradient-sync bookkeeping, ZeRO-3's
parameter gathering) runs as usual — calling the inner module directly would skip DDP's
all-reduce and let ranks drift apart. Each rank draws its own selection from its own generator.
Under ZeRO-3 every submodule's weights are gathered as it is called, and the LM head, whose
weight is an empty placeholder outside its own forward, is called as a module in checkpointed
chunks (`minnat.logprobs.score_positions_through_module`) instead of being read by the tiled
head. Tested on CPU with two gloo processes: one RPC step under ZeRO-3 equals the single-process
step, and this trainer trains under ZeRO-3 with the head partitioned (tests/test_zero3.py).
FSDP2 (`fully_shard`, examples/trl/accelerate/fsdp2.yaml) works the same way: the swapped forward runs
inside the root module's call, after its pre-forward hook has gathered the embeddings, final norm and head,
and each decoder layer gathers its own weights (tests/test_fsdp2.py: one RPC update over two gloo ranks
equals the single-process step; the trainer trains under accelerate's FSDP2). FSDP1 is refused.

The loss entry is guarded: `compute_loss` itself is NAT's, and `training_step` raises if a step ran
without NAT's loss; every GRPOConfig setting that changes the loss path is in `LOSS_PATH_SETTINGS`.

LoRA: TRL's own `peft_config` argument works unchanged (TRL wraps the model in peft adapters; the
decoder's adapters run inside `response_logprobs`, and with β > 0 TRL scores the reference with the
adapters disabled, through the same NAT path). An adapter on the LM head is refused: minnat's
tiled head reads the head's weight directly. Tested on CPU in tests/test_lora.py.

`task_dataset` and `task_reward` turn a minnat task into TRL's dataset and reward function. Two
helpers build what `minnat.bench` needs to time TRL's update step without a dataset:
`build_trainer_for_loss` and `trl_inputs_from_generate_batch`.
"""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass, field

import torch

INSTALL_HINT = ('minnat.integrations.trl needs TRL 1.16 or newer (below 2): install it with '
                '`pip install "minnat[trl]"` (or `pip install "trl>=1.16,<2"`).')
try:
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
except ImportError as error:  # the optional dependency is missing: say how to get it
    raise ImportError(f"{INSTALL_HINT} ({error})") from error

from packaging.version import Version

from minnat.logprobs import LogprobStats, response_logprobs
from minnat.nat import (CUT_SAMPLINGS, METHODS, RPC_CUT_DISTRIBUTIONS, Selection, check_budget, select_tokens,
                        selection_from_keep)
from minnat.tasks import Example, Task

if Version(trl.__version__) < Version("1.16"):
    raise ImportError(f"found trl {trl.__version__}, whose GRPOTrainer has other hook points. {INSTALL_HINT}")
if Version(trl.__version__) >= Version("2"):
    warnings.warn(f"minnat.integrations.trl was written against TRL 1.16 and found trl {trl.__version__}; "
                  'run its tests (`pytest tests/test_trl_integration.py`) or pin `trl>=1.16,<2`.', stacklevel=2)

# Loss types whose per-token term ℓ_{i,t} depends on token t alone and whose normaliser does not
# depend on which tokens are kept: for these the HT-weighted loss is unbiased.
SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
KEEP_KEY, INCLUSION_KEY = "nat_keep", "nat_inclusion_prob"

# Every GRPOConfig setting (TRL 1.16) that changes which loss TRL computes or how the log-probs inside it are
# computed, in one place: "nat" — NAT's loss runs with it, and tests/test_trl_integration.py drives TRL's own
# training step (→ `compute_loss`) under it and checks that NAT's loss ran; "refused" — `unsupported_settings`
# or `unsupported_model` stops the trainer at construction with the reason; "nat (GPU)" — NAT's loss runs
# (the entry is pinned), but its numerics need hardware the CPU tests lack.
LOSS_PATH_SETTINGS = {
    "loss_type": f"nat for {SUPPORTED_LOSS_TYPES}; refused otherwise (the per-token weight is a whole-response ratio)",
    "importance_sampling_level": "nat for 'token'; refused for 'sequence' (GSPO averages over every token)",
    "top_entropy_quantile": "nat at 1.0; refused below (a deterministic, unweighted token subset)",
    "entropy_coef": "nat at 0.0; refused otherwise (needs every token's entropy)",
    "use_adaptive_entropy": "nat when False; refused when True (an entropy bonus)",
    "off_policy_mask_threshold": "nat when None; refused otherwise (a mean KL over every token)",
    "beta": "nat: the k3 KL at the kept tokens, HT-weighted like the policy term",
    "use_bias_correction_kl": "nat: the KL times the token ratio, at the kept tokens",
    "delta": "nat: two-sided clipping of the token ratio",
    "num_iterations": "nat: one selection per generation batch, reused by its μ updates",
    "use_liger_kernel": "nat: TRL 1.16 only patches the model's layers (RMSNorm, RoPE, SwiGLU) with Liger kernels; "
                        "minnat's log-prob path calls those layers, and compute_loss is NATGRPOTrainer's own",
    "liger_kernel_config": "nat for layer kernels; fused_linear_cross_entropy=True is refused by TRL itself",
    "model_init_kwargs": "nat with {'use_kernels': True}: Hub kernels replace layers inside the decoder that "
                         "minnat's log-prob path calls",
    "cast_lm_head_to_fp32": "nat: minnat's head computes in the head weight's dtype, float32 here, as TRL's",
    "use_vllm": "nat (GPU): token-level importance correction at the kept tokens; the sequence-level modes "
                "score every token's old log-prob",
}


@dataclass
class NATGRPOConfig(GRPOConfig):
    """TRL's `GRPOConfig` plus the NAT selection. Every GRPOConfig field works as in TRL.

    nat_method      "full" (every token: TRL's GRPO), "urs" (keep each token w.p. ρ) or "rpc"
                    (keep a random prefix of each response; forward and backward get shorter)
    nat_budget      ρ ∈ (0, 1]: the expected fraction of response tokens kept
    nat_cut_distribution  RPC's cut family: "uniform-floor" (weights ≤ 1/(0.2ρ)) or "power"
    nat_cut_sampling  RPC's joint draw: "stratified" (default, as `python -m minnat.train`: one offset
                    for each rank's generation batch, every row's cut keeps exactly RPC's law, the
                    batch's kept total barely moves) or "independent" (one cut per row)
    nat_micro_batch_overhead_tokens  what one extra forward pass is worth in tokens when rows are
                    grouped by length (`minnat.logprobs.plan_micro_batches`); 0 = no padding at all
    nat_seed        seed of the selection's generator (None: `seed`); rank r adds r
    """

    nat_method: str = field(default="rpc", metadata={"help": f"NAT token selection, one of {METHODS}."})
    nat_budget: float = field(default=0.5, metadata={"help": "ρ: expected fraction of response tokens kept."})
    nat_cut_distribution: str = field(default="uniform-floor",
                                      metadata={"help": f"RPC cut family, one of {RPC_CUT_DISTRIBUTIONS}."})
    nat_cut_sampling: str = field(default="stratified",
                                  metadata={"help": f"RPC cuts across the generation batch, one of {CUT_SAMPLINGS}."})
    nat_micro_batch_overhead_tokens: int = field(
        default=128, metadata={"help": "Cost of one extra forward pass, in tokens, when grouping rows by length."})
    nat_seed: int | None = field(default=None, metadata={"help": "Seed of the NAT selection (None: seed)."})

    def __post_init__(self):
        super().__post_init__()
        if self.nat_method not in METHODS:
            raise ValueError(f"nat_method must be one of {METHODS}; got {self.nat_method!r}.")
        if self.nat_cut_distribution not in RPC_CUT_DISTRIBUTIONS:
            raise ValueError(f"nat_cut_distribution must be one of {RPC_CUT_DISTRIBUTIONS}; "
                             f"got {self.nat_cut_distribution!r}.")
        if self.nat_cut_sampling not in CUT_SAMPLINGS:
            raise ValueError(f"nat_cut_sampling must be one of {CUT_SAMPLINGS}; got {self.nat_cut_sampling!r}.")
        self.nat_budget = check_budget(self.nat_budget)
        if self.nat_micro_batch_overhead_tokens < 0:
            raise ValueError("nat_micro_batch_overhead_tokens must be ≥ 0 (0 means one pass per distinct length).")


def unsupported_settings(args: GRPOConfig) -> list[str]:
    """Why each TRL setting in `args` that NAT cannot run unbiasedly is refused, and what to use instead."""
    problems = []
    if args.loss_type not in SUPPORTED_LOSS_TYPES:
        problems.append(
            f"loss_type={args.loss_type!r} is not supported: its per-token weight is a function of the whole "
            "response's importance ratio, which needs every token's log-prob, while NAT computes only the kept "
            f"tokens'. Use one of {SUPPORTED_LOSS_TYPES} (TRL's default is 'dapo'), or trl.GRPOTrainer.")
    if args.importance_sampling_level != "token":
        problems.append(
            "importance_sampling_level='sequence' (GSPO) averages the log-ratio over every token of a response; "
            "over the kept tokens only it becomes a ratio estimator, which is biased. Use "
            "importance_sampling_level='token' (the default), or trl.GRPOTrainer for GSPO.")
    if args.top_entropy_quantile < 1.0:
        problems.append(
            f"top_entropy_quantile={args.top_entropy_quantile} trains only the highest-entropy tokens: a "
            "deterministic, unweighted subset chosen from every token's entropy, which NAT does not compute and "
            "which biases the gradient. NAT's random, reweighted selection replaces it: set top_entropy_quantile=1.0.")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy:
        problems.append(
            "the entropy bonus (entropy_coef ≠ 0 or use_adaptive_entropy=True) needs the entropy of the full "
            "distribution at every response token, which NAT's log-prob path does not compute. Set "
            "entropy_coef=0.0 and use_adaptive_entropy=False.")
    if args.off_policy_mask_threshold is not None:
        problems.append(
            "off_policy_mask_threshold drops sequences by their mean KL over every token, which NAT does not "
            "compute. Set off_policy_mask_threshold=None.")
    return problems


def unsupported_model(trainer: GRPOTrainer) -> list[str]:
    """Why the trainer's model (or the way accelerate shards it) cannot be scored by `response_logprobs`."""
    problems = []
    if getattr(trainer, "is_fsdp_enabled", False) and not trainer.accelerator.is_fsdp2:
        problems.append("FSDP1 is not supported: NAT is tested under FSDP2 (fully_shard), which accelerate and TRL "
                        "recommend. Set `fsdp_version: 2` in your accelerate config (examples/trl/accelerate/"
                        "fsdp2.yaml), or use DeepSpeed ZeRO-3 (zero3.yaml).")
    text_config = trainer.model.config.get_text_config()
    if trainer._is_vlm:
        problems.append("vision-language models are not supported: minnat's log-prob path feeds the language "
                        "model token ids only. Use a text-only causal LM, or trl.GRPOTrainer.")
    if trainer.aux_loss_enabled:
        problems.append("the Mixture-of-Experts router auxiliary loss is not computed by minnat's log-prob path. "
                        "Set router_aux_loss_coef=0.0.")
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                 "output_multiplier"):
        if getattr(text_config, name, None) not in (None, 1.0):
            problems.append(f"the model's config sets {name}={getattr(text_config, name)!r}, which minnat's LM "
                            "head does not apply, so its log-probs would differ from TRL's. Use trl.GRPOTrainer.")
    # LoRA (TRL's peft_config): the decoder's adapters are seen as usual, but minnat's tiled head reads the head's
    # weight directly, so an adapter on the head (target_modules including lm_head) would be skipped.
    head = trainer.accelerator.unwrap_model(trainer.model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        problems.append(f"the LM head is a {type(head).__name__}, not a torch.nn.Linear (a LoRA adapter on lm_head?): "
                        "minnat's tiled head reads its weight directly and would skip the adapter. Leave lm_head out "
                        "of the peft config's target_modules (target_modules='all-linear' already does).")
    return problems


@contextlib.contextmanager
def forward_replaced(module: torch.nn.Module, forward):
    """Within the block, calling `module` (or a wrapper around it: DDP, DeepSpeed, FSDP) runs `forward`."""
    had_own = "forward" in module.__dict__  # accelerate and TRL patch forward per instance; keep theirs
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


class NATGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` training on a NAT selection of response tokens (see the module docs).

    Same constructor as `GRPOTrainer`; `args` must be a `NATGRPOConfig`. Settings NAT cannot run
    unbiasedly raise ValueError here, before any training.
    """

    def __init__(self, model, reward_funcs=None, args: NATGRPOConfig | None = None, *positional, **keyword):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = NATGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-NAT-GRPO")
        if not isinstance(args, NATGRPOConfig):
            raise TypeError("NATGRPOTrainer needs a NATGRPOConfig (TRL's GRPOConfig plus nat_method, nat_budget and "
                            f"nat_cut_distribution); got {type(args).__name__}. Build it with the same arguments: "
                            "NATGRPOConfig(..., nat_method='rpc', nat_budget=0.5).")
        problems = unsupported_settings(args)
        if problems:
            raise ValueError("NATGRPOTrainer cannot run these settings: " + " ".join(problems))
        super().__init__(model, reward_funcs, args, *positional, **keyword)
        problems = unsupported_model(self)
        if problems:
            raise ValueError("NATGRPOTrainer cannot train this model or set-up: " + " ".join(problems))
        seed = args.seed if args.nat_seed is None else args.nat_seed
        self.nat_generator = torch.Generator().manual_seed(seed + self.accelerator.process_index)
        # vLLM's sequence-level correction multiplies each response's loss by a ratio over ALL its tokens:
        # a constant per row (so HT stays unbiased), but its old log-probs must then cover every token.
        self._nat_old_logps_every_token = bool(
            self.use_vllm and self.vllm_importance_sampling_correction
            and self.vllm_importance_sampling_mode.startswith("sequence"))
        self._nat_scoring = False          # True while TRL scores a generation batch
        self._nat_batch_selection = None   # that batch's selection, drawn when its mask is first seen
        self.nat_last_stats = LogprobStats()
        self.nat_loss_calls = 0            # NAT losses computed; training_step checks that each step made one

    # --- the selection ---------------------------------------------------------------------------

    def draw_nat_selection(self, completion_mask: torch.Tensor, method: str | None = None) -> Selection:
        """One NAT draw over a right-padded completion mask [B, T] (on its device).

        Called once per generation batch, over all of this rank's B = per_device_train_batch_size ×
        steps_per_generation rows, so stratified cuts balance the whole batch that TRL then splits."""
        selection = select_tokens(completion_mask.bool().cpu(), method or self.args.nat_method,
                                  self.args.nat_budget, self.nat_generator,
                                  cut_distribution=self.args.nat_cut_distribution,
                                  cut_sampling=self.args.nat_cut_sampling)
        return selection.to(completion_mask.device)

    def with_nat_selection(self, inputs: dict, method: str | None = None) -> dict:
        """`inputs` (TRL's dict) plus a fresh selection over its completion mask, in `nat_keep` / `nat_inclusion_prob`."""
        selection = self.draw_nat_selection(inputs["completion_mask"], method)
        return {**inputs, KEEP_KEY: selection.keep, INCLUSION_KEY: selection.inclusion_prob}

    def selection_of(self, inputs: dict) -> Selection:
        """The Selection stored in `inputs` (weights keep/π_t); every token when there is none."""
        completion_mask = inputs["completion_mask"].bool()
        if KEEP_KEY not in inputs:
            return select_tokens(completion_mask, "full")
        return selection_from_keep(inputs[KEEP_KEY], inputs[INCLUSION_KEY], self.args.nat_method,
                                   self.args.nat_budget, self.args.nat_cut_distribution)

    def _batch_selection(self, completion_mask: torch.Tensor) -> Selection:
        """The generation batch's one selection: old, reference and current log-probs all use it."""
        if self._nat_batch_selection is None:
            method = self.args.nat_method if self.model.training else "full"  # eval losses are exact
            self._nat_batch_selection = self.draw_nat_selection(completion_mask, method)
        elif not torch.equal(self._nat_batch_selection.inclusion_prob > 0, completion_mask.bool()):
            raise RuntimeError("the completion mask changed while TRL scored one generation batch; NATGRPOTrainer "
                               "draws one selection per batch and cannot follow. Please report this with your "
                               "GRPOConfig.")
        return self._nat_batch_selection

    def _generate_and_score_completions(self, inputs):
        self._nat_scoring, self._nat_batch_selection = True, None
        try:
            output = super()._generate_and_score_completions(inputs)
            selection = self._batch_selection(output["completion_mask"])
        finally:
            self._nat_scoring, self._nat_batch_selection = False, None
        output[KEEP_KEY], output[INCLUSION_KEY] = selection.keep, selection.inclusion_prob
        return output

    # --- log-probs ---------------------------------------------------------------------------------

    def nat_logprobs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, selection: Selection, *,
                     max_rows: int | None = None) -> torch.Tensor:
        """log π at the selection's kept completion tokens -> float [B, T], 0 elsewhere.

        input_ids, attention_mask  [B, P + T]: TRL's prompt_ids ‖ completion_ids and prompt_mask ‖ completion_mask
        completion_mask            [B, T]: right-padded; the full mask (never the selection)
        The call goes through `model` as given (possibly DDP/DeepSpeed/FSDP-wrapped); what it gave the
        transformer is left in `self.nat_last_stats`.
        """
        inner = self.accelerator.unwrap_model(model)
        response_mask = completion_mask.bool()
        stats = LogprobStats()

        def forward(input_ids, attention_mask):
            logps = response_logprobs(inner, input_ids, attention_mask, response_mask, selection,
                                      temperature=self.temperature, max_rows_per_micro_batch=max_rows,
                                      micro_batch_overhead_tokens=self.args.nat_micro_batch_overhead_tokens,
                                      stats=stats)
            if torch.is_grad_enabled() and not logps.requires_grad:
                # Nothing kept on this rank: a zero that touches every parameter keeps DDP's all-reduce in step.
                decoder, head = inner.get_decoder(), inner.get_output_embeddings()
                hidden = decoder(input_ids=input_ids[:1, -1:], use_cache=False).last_hidden_state
                logps = logps + 0.0 * head(hidden).sum()
            return logps

        with forward_replaced(inner, forward), self.accelerator.autocast():
            logps = model(input_ids=input_ids, attention_mask=attention_mask)
        self.nat_last_stats = stats
        return logps

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal_inputs):
        if not self._nat_scoring:  # any other caller keeps TRL's own path
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss,
                                                              **multimodal_inputs)
        completion_mask = attention_mask[:, -logits_to_keep:]
        selection = self._batch_selection(completion_mask)
        if self._nat_old_logps_every_token:
            selection = select_tokens(completion_mask.bool(), "full")
        logps = self.nat_logprobs(model, input_ids, attention_mask, completion_mask, selection, max_rows=batch_size)
        # NaN marks "not computed": TRL's vLLM correction then uses ratio 1 there and its statistics skip them.
        return logps.masked_fill(~selection.keep, float("nan")), None, None

    # --- the loss entry: NAT's loss or nothing ----------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss entry (`Trainer.training_step` and `prediction_step` call it), pinned to NAT's loss.

        TRL ≤ 1.15 sent `compute_loss` to Liger's fused GRPO loss (every token, no weights) when
        `use_liger_kernel=True`; overriding the entry itself, not only `_compute_loss`, means no TRL
        routing can put another loss here.
        """
        if return_outputs:
            raise ValueError("NATGRPOTrainer, like GRPOTrainer, does not return outputs from compute_loss.")
        return self._compute_loss(model, inputs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's training step, checked to have run NAT's loss: a TRL release whose step reaches the loss
        some other way raises here instead of training full-token silently."""
        calls = self.nat_loss_calls
        output = super().training_step(model, inputs, num_items_in_batch)
        if self.nat_loss_calls == calls:
            raise RuntimeError(
                f"TRL {trl.__version__}'s training step finished without calling NATGRPOTrainer's loss, so this "
                "step would have trained on every token with TRL's own loss. NATGRPOTrainer refuses to fall back "
                "to full-token training: pin `trl>=1.16,<2` (the versions it is tested with) and report the TRL "
                "version and your GRPOConfig.")
        return output

    # --- the loss ----------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        self.nat_loss_calls += 1  # read by training_step: NAT's loss ran
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # the full mask: attention is unchanged
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        selection = self.selection_of(inputs)
        keep = selection.keep & mask.bool()

        per_token_logps = self.nat_logprobs(model, input_ids, attention_mask, completion_mask, selection)
        per_token_loss, coef_1, per_token_kl = self._per_token_loss(per_token_logps, inputs, keep)
        # The Horvitz–Thompson step: a kept token counts 1/π_t times, a dropped one not at all.
        weights = selection.weights.to(per_token_loss.dtype)
        per_token_loss = torch.where(keep, per_token_loss * weights, torch.zeros_like(per_token_loss))
        loss = self._aggregate(per_token_loss, mask, inputs)
        self._log_nat_metrics(inputs, keep, selection, mask, coef_1, per_token_kl)
        return loss

    def _per_token_loss(self, logps: torch.Tensor, inputs: dict, keep: torch.Tensor):
        """TRL's per-token loss ℓ_{i,t} (token-level ratio), finite everywhere, at the kept tokens."""
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        zero = torch.zeros_like(logps)
        # Stored log-probs hold NaN where they were not computed; zero them before any arithmetic, so that
        # no NaN can reach the gradient through exp() (where() alone does not stop it in backward).
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else torch.where(keep, old.to(logps.dtype), zero)
        log_ratio = torch.where(keep, logps - old, zero)
        coef_1 = torch.exp(log_ratio)
        per_token_kl = None
        if self.beta != 0.0:
            ref = torch.where(keep, inputs["ref_per_token_logps"].to(logps.dtype), zero)
            ref_minus_policy = torch.where(keep, ref - logps, zero)
            per_token_kl = torch.exp(ref_minus_policy) - ref_minus_policy - 1  # k3, as TRL writes it
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * coef_1

        if self.loss_type == "cispo":
            clamped_ratios = torch.clamp(coef_1, max=self.epsilon_high).detach()
            per_token_loss = -clamped_ratios * advantages * logps
        elif self.loss_type == "sapo":
            temperatures = torch.where(advantages > 0, self.args.sapo_temperature_pos, self.args.sapo_temperature_neg)
            per_token_loss = -torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures * advantages
        else:  # grpo, bnpo, dr_grpo, dapo, luspo: the clipped surrogate
            coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
            if self.args.delta is not None:  # two-sided clipping
                coef_1 = torch.clamp(coef_1, max=self.args.delta)
            per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)

        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl
        return per_token_loss, coef_1, per_token_kl

    def _aggregate(self, weighted_loss: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """TRL's normaliser for `loss_type`, always from the FULL mask (never the kept count)."""
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        summed = weighted_loss * mask
        if self.loss_type in ("grpo", "sapo"):
            return (summed.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return summed.sum() / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return summed.sum() / (weighted_loss.size(0) * self.max_completion_length) / accumulation
        if self.loss_type == "luspo":
            return summed.sum(-1).mean() / accumulation
        # dapo, cispo: the generation batch's token count, rescaled to one accumulation window
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if training:
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return summed.sum() / normalizer

    def _log_nat_metrics(self, inputs, keep, selection, mask, coef_1, per_token_kl):
        """TRL's clip/KL metrics over the kept tokens, plus what NAT kept and gave the model."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        keep_float = keep.float()

        def kept_mean(values):
            totals = self.accelerator.reduce(torch.stack([(values.float() * keep_float).sum(), keep_float.sum()]),
                                             reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if per_token_kl is not None:
            metrics["kl"].append(kept_mean(per_token_kl))
        advantages = inputs["advantages"].unsqueeze(1) if inputs["advantages"].dim() == 1 else inputs["advantages"]
        if self.loss_type == "cispo":
            metrics["cispo_clip_ratio"].append(kept_mean((coef_1 > self.epsilon_high) & (advantages > 0)))
        elif self.loss_type != "sapo":
            low = (coef_1 < 1 - self.epsilon_low) & (advantages < 0)
            high = (coef_1 > 1 + self.epsilon_high) & (advantages > 0)
            metrics["clip_ratio/low_mean"].append(kept_mean(low))
            metrics["clip_ratio/high_mean"].append(kept_mean(high))
            metrics["clip_ratio/region_mean"].append(kept_mean(low | high))
        counts = torch.tensor([keep_float.sum().item(), float(mask.bool().sum()),
                               float(self.nat_last_stats.tokens_to_model)], device=keep.device)
        counts = self.accelerator.reduce(counts, reduction="sum")
        metrics["nat/kept_fraction"].append((counts[0] / counts[1].clamp(min=1.0)).item())
        metrics["nat/tokens_to_model"].append(counts[2].item())
        largest = selection.weights.max() if selection.weights.numel() else selection.weights.new_zeros(())
        metrics["nat/max_ht_weight"].append(self.accelerator.gather(largest.reshape(1)).max().item())


# --- minnat's tasks as a TRL dataset and reward -----------------------------------------------------


def task_dataset(task: Task, split: str = "train") -> Dataset:
    """A minnat task's examples as TRL wants them: a "prompt" column plus "question" and "answer".

    Chat tasks (GSM8K) give conversational prompts, so TRL applies the tokenizer's chat template;
    the embedded arithmetic task gives its plain text prompt.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval'; got {split!r}.")
    examples = task.train_examples if split == "train" else task.eval_examples
    if not examples:
        raise ValueError(f"the task {task.name!r} has no {split} examples.")
    rows = []
    for example in examples:
        text = task.prompt_text(example)
        prompt = [{"role": "user", "content": text}] if task.uses_chat_template else text
        rows.append({"prompt": prompt, "question": example.question, "answer": example.answer})
    return Dataset.from_list(rows)


def task_reward(task: Task):
    """A TRL reward function (completions + dataset columns -> list of R_i) from a minnat task."""
    def reward(completions, question, answer, **kwargs):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # conversational: last message
        return [task.reward(text, Example(question=q, answer=a)) for text, q, a in zip(texts, question, answer)]

    reward.__name__ = f"{task.name}_reward"  # TRL names the logged reward after the function
    return reward


# --- helpers for benchmarks and direct calls ---------------------------------------------------------


def _no_reward(completions, **kwargs):
    """A placeholder reward for trainers that never generate (`build_trainer_for_loss`)."""
    return [0.0] * len(completions)


def build_trainer_for_loss(model, tokenizer, *, nat_method: str | None = "rpc", nat_budget: float = 0.5,
                           nat_cut_distribution: str = "uniform-floor", peft_config=None, **config) -> GRPOTrainer:
    """A trainer around `model` with no real dataset, ready for direct `trainer._compute_loss(model, inputs)`.

    nat_method   None: stock `trl.GRPOTrainer`; "full" / "urs" / "rpc": a `NATGRPOTrainer`
    peft_config  a peft.LoraConfig: TRL wraps `model` in adapters (in place) and trains those only
    config       any GRPOConfig field, e.g. loss_type="grpo", beta=0.04, max_completion_length=T
                 (dr_grpo divides by it), epsilon=0.2. Defaults: no gradient checkpointing, no bf16
                 autocast unless the model is bfloat16, CPU when the model is on CPU, no logging.

    `current_gradient_accumulation_steps` is set to 1 (TRL's Trainer loop sets it otherwise). TRL
    patches `model.forward` in place (its fused LM head); one model can serve several trainers, but
    deep-copy a model BEFORE handing it to a trainer: the patch's closure keeps the original, so a
    copy made afterwards would still run (and generate with) the original's weights.
    The output folder is a temporary one, removed when the trainer is garbage-collected.
    Build the inputs with `trl_inputs_from_generate_batch`.
    """
    parameter = next(model.parameters())
    output_dir = tempfile.TemporaryDirectory(prefix="minnat-trl-")
    settings = dict(output_dir=output_dir.name, use_cpu=parameter.device.type == "cpu",
                    bf16=parameter.dtype == torch.bfloat16, per_device_train_batch_size=2, num_generations=2,
                    gradient_checkpointing=False, report_to="none", save_strategy="no", logging_strategy="no",
                    disable_tqdm=True)
    settings.update(config)
    dataset = Dataset.from_dict({"prompt": ["0"] * settings["per_device_train_batch_size"]})
    if nat_method is None:
        trainer = GRPOTrainer(model=model, reward_funcs=_no_reward, args=GRPOConfig(**settings),
                              train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    else:
        args = NATGRPOConfig(nat_method=nat_method, nat_budget=nat_budget,
                             nat_cut_distribution=nat_cut_distribution, **settings)
        trainer = NATGRPOTrainer(model=model, reward_funcs=_no_reward, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config)
    trainer.current_gradient_accumulation_steps = 1
    trainer._minnat_output_dir = output_dir  # lives (and is cleaned up) with the trainer
    return trainer


def trl_inputs_from_generate_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                   response_mask: torch.Tensor, advantages: torch.Tensor, *,
                                   old_per_token_logps: torch.Tensor | None = None,
                                   ref_per_token_logps: torch.Tensor | None = None,
                                   trainer: GRPOTrainer | None = None) -> dict:
    """TRL's inputs dict (what `_generate_and_score_completions` returns) from a generate()-shaped batch.

    input_ids       long [B, P + T]: left-padded prompt, then right-padded response (minnat's layout)
    attention_mask  [B, P + T]; its last T columns must equal response_mask
    response_mask   bool [B, T]
    advantages      float [B]
    old/ref_per_token_logps  optional float [B, T] (μ > 1 / β > 0)
    trainer         a NATGRPOTrainer: a fresh selection is drawn and stored (`nat_keep`,
                    `nat_inclusion_prob`); a stock GRPOTrainer or None: nothing added

    `num_items_in_batch` is this batch's response-token count (one process, one accumulation step).
    """
    prompt_columns = input_ids.shape[1] - response_mask.shape[1]
    if prompt_columns < 1 or response_mask.shape[0] != input_ids.shape[0]:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must have input_ids' batch size and fewer "
                         f"columns than input_ids {tuple(input_ids.shape)} (the prompt comes first).")
    completion_mask = response_mask.long()
    if not torch.equal(attention_mask[:, prompt_columns:].long(), completion_mask):
        raise ValueError("the last T columns of attention_mask must equal response_mask (1 on response tokens, 0 on "
                         "the padding after them), as in what generate() returns.")
    inputs = {"prompt_ids": input_ids[:, :prompt_columns], "prompt_mask": attention_mask[:, :prompt_columns].long(),
              "completion_ids": input_ids[:, prompt_columns:], "completion_mask": completion_mask,
              "advantages": advantages.float(), "num_items_in_batch": completion_mask.sum()}
    if old_per_token_logps is not None:
        inputs["old_per_token_logps"] = old_per_token_logps
    if ref_per_token_logps is not None:
        inputs["ref_per_token_logps"] = ref_per_token_logps
    if isinstance(trainer, NATGRPOTrainer):
        inputs = trainer.with_nat_selection(inputs)
    return inputs
