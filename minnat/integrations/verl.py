"""NAT inside verl: the same estimator on verl's FSDP2 engine, Ray workers and vLLM/SGLang rollouts.

    python -m minnat.integrations.verl nat.method=rpc nat.rho=0.5 <any verl ppo_trainer override>

or, in your own verl entry point, `NATRayPPOTrainer` wherever verl builds a `RayPPOTrainer`.
`NATRayPPOTrainer` is verl 0.9's `RayPPOTrainer` with four driver-side methods replaced; rollout,
rewards, advantages, the mini-batch shuffle and split, dynamic batch sizes and every FSDP worker stay
verl's. In the paper's notation (response o_i of |o_i| tokens, per-token term ℓ_{i,t}):

1. Select, once per rollout batch (`_balance_batch`, or the first pass that sees the batch). After
   generation, `minnat.nat.select_tokens` draws keep_{i,t} with inclusion probability π_{i,t} over
   the batch's `response_mask`, on the driver, for every data-parallel rank at once (so
   `cut_sampling="stratified"` balances the whole batch). Three [B, T] tensors join the batch —
   `nat_keep`, `nat_weights` = keep/π (Horvitz–Thompson), and for RPC `nat_attention_mask` — and
   travel with it through verl's DP balancing, mini-batch shuffle/split and every PPO epoch.
   `nat.token_budget=N` sets each batch's ρ = min(1, N/Σ|o_i|) from its lengths alone.

2. RPC shortens the model's input for real, without patching the engine. The engine never sees
   `attention_mask` past prompt + C_i: verl's `left_right_2_no_padding` packs each row from its
   attention mask, so the jagged input becomes prompt + kept prefix in the old-log-prob, reference
   and update passes alike (packed `use_remove_padding=True` and padded branches; dynamic batch
   sizes then fit more rows per micro-batch). `response_mask` stays FULL, so every loss_agg_mode's
   denominator (Σ|o_i| all-reduced over ranks, the global batch size, the constant horizon) is the
   full-token one: with E[w] = 1 the expected loss and gradient are stock verl's exactly. Causal
   attention makes the prefix's log-probs independent of the dropped suffix. URS changes no input
   (verl's engine scores every position anyway), only the weights: unbiased, but no saving here.

3. The loss (`nat_ppo_loss`, installed with the worker's `set_loss_fn`) is verl's `ppo_loss` with
   w_{i,t} in the one per-token channel the policy losses take, `rollout_is_weights` (multiplied onto
   verl's own rollout-correction weights when present), and the SAME w on the KL term and on the
   entropy bonus — stock verl leaves both unweighted, which over kept tokens alone is biased:

       L = agg(w·ℓ^pg) − c_H·agg(w·H) + β·agg(w·KL),   agg over the FULL response_mask.

   The policy-loss metrics (`actor/ppo_kl`, `actor/pg_clipfrac`, ...) are recomputed over the kept
   tokens only; `actor/entropy` and `kl_loss` are HT estimates of their full-token values. NAT logs
   `nat/kept_fraction`, `nat/max_ht_weight`, `nat/tokens_to_model` (real tokens the update's model
   sees, prompts included) and `nat/tokens_to_model_full`.

Refused at start-up, each with a sentence saying why and what to do (`unsupported_settings`): policy
losses whose per-token term needs the whole response or the whole batch (gspo, geo_mean, clip_cov,
kl_cov, bypass_mode, unknown custom ones), rollout-correction bypass mode, and for RPC
sequence-level rollout IS / rejection sampling, the KL-in-reward penalty and the optimal token
baseline (they read log-probs past the cut), critics (GAE), distillation, Megatron or any non-FSDP strategy, the prefix grouper,
`trainer.use_v1=true` (its trainer is a different class), multimodal inputs. Never a silent
full-token run.

verl 0.9.1 imports `trl.AutoModelForCausalLMWithValueHead`, which TRL 1.x removed (it moved to
`trl.experimental.ppo` and then went), whenever TRL is installed: `patch_verl_for_trl1` (below)
is the minimal workaround, applied on import here and in every Ray worker process.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

INSTALL_HINT = ('minnat.integrations.verl needs verl 0.9 (with uvicorn and cachetools, which verl imports '
                'without declaring): install it with `pip install "minnat[verl]"` '
                '(or `pip install "verl>=0.9.1,<0.10" uvicorn cachetools`).')


def patch_verl_for_trl1() -> None:
    """Let verl 0.9.1 build its actor when TRL 1.x is installed (minnat[trl] and minnat[verl] together).

    verl's `apply_monkey_patch` runs `from trl import AutoModelForCausalLMWithValueHead` whenever TRL
    is importable, only to patch that class's `state_dict` for PPO critics with a value head. TRL 1.x
    no longer has the class, so every actor build would raise ImportError. NAT trains GRPO-style actors
    without a value head (critics are refused below), so telling that one module "TRL is absent" is
    the smallest change that keeps verl's own code path; it changes nothing when the class exists.
    """
    try:
        import trl  # noqa: F401
        from trl import AutoModelForCausalLMWithValueHead  # noqa: F401
        return  # an older TRL that still has it: verl works as shipped
    except ImportError:
        pass
    import verl.models.transformers.monkey_patch as monkey_patch

    monkey_patch.is_trl_available = lambda: False


try:
    import verl
    from omegaconf import OmegaConf, open_dict
    from packaging.version import Version
    from tensordict import TensorDict
    from verl import DataProto
    from verl.trainer.distillation import is_distillation_enabled
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.trainer.ppo.utils import need_critic
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.config import ActorConfig
    from verl.workers.utils.padding import no_padding_2_padding
except ImportError as error:  # the optional dependency is missing: say how to get it
    raise ImportError(f"{INSTALL_HINT} ({error})") from error

patch_verl_for_trl1()

from minnat.nat import CUT_SAMPLINGS, METHODS, RPC_CUT_DISTRIBUTIONS, Selection, check_budget, select_tokens

if not Version("0.9") <= Version(verl.__version__) < Version("0.10"):
    warnings.warn(f"minnat.integrations.verl was written against verl 0.9.1 and found verl {verl.__version__}; "
                  "run tests/test_verl_integration.py or pin `verl>=0.9.1,<0.10`.", stacklevel=2)

# Policy losses whose per-token term depends on token t alone and that multiply it by
# rollout_is_weights before verl's agg_loss: for these the HT-weighted loss is unbiased.
SUPPORTED_POLICY_LOSSES = ("vanilla", "dppo_tv", "dppo_kl", "sapo", "gpg", "dro", "cispo")
WHY_NOT = {
    "gspo": "GSPO's ratio is a geometric mean over every token of a response",
    "geo_mean": "GMPO's ratio is a geometric mean over every token of a response",
    "clip_cov": "Clip-Cov picks tokens by their covariance over the whole batch",
    "kl_cov": "KL-Cov picks tokens by their covariance over the whole batch",
    "bypass_mode": "bypass mode takes old log-probs from the rollout engine over every token",
}
KEEP, WEIGHTS, ATTENTION = "nat_keep", "nat_weights", "nat_attention_mask"
CONFIG_DIR = str(Path(__file__).resolve().parent / "config")  # nat_ppo_trainer.yaml, absolute for hydra


@dataclass
class NATConfig:
    """The `nat:` block of the launcher's config (minnat/integrations/config/nat_ppo_trainer.yaml).

    method            "full" (every token, weights 1: stock verl's estimator), "urs" (keep each token
                      w.p. ρ; weights only, no saving in verl's engine) or "rpc" (a random prefix per
                      response; every pass gets shorter)
    rho               ρ ∈ (0, 1]: expected fraction of response tokens kept
    token_budget      N > 0: ρ = min(1, N / Σ|o_i|) per rollout batch instead of a fixed rho (None: off)
    cut_distribution  RPC's cut family: "uniform-floor" (weights ≤ 1/(0.2ρ)) or "power"
    cut_sampling      "independent" cuts per row or "stratified" across the batch (same π_t, the kept
                      total varies far less — the update's memory with it)
    seed              seed of the driver's selection generator
    """

    method: str = "rpc"
    rho: float = 0.5
    token_budget: int | None = None
    cut_distribution: str = "uniform-floor"
    cut_sampling: str = "stratified"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"nat.method must be one of {METHODS}; got {self.method!r}.")
        if self.cut_distribution not in RPC_CUT_DISTRIBUTIONS:
            raise ValueError(f"nat.cut_distribution must be one of {RPC_CUT_DISTRIBUTIONS}; "
                             f"got {self.cut_distribution!r}.")
        if self.cut_sampling not in CUT_SAMPLINGS:
            raise ValueError(f"nat.cut_sampling must be one of {CUT_SAMPLINGS}; got {self.cut_sampling!r}.")
        self.rho = check_budget(self.rho)
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError(f"nat.token_budget must be a positive whole number of tokens or null; "
                             f"got {self.token_budget!r}.")

    @classmethod
    def from_config(cls, config) -> "NATConfig":
        """From a verl (omegaconf) config's `nat:` block; fields not given keep their defaults."""
        block = config.get("nat", None) if hasattr(config, "get") else None
        if block is None:
            raise ValueError("the config has no `nat:` block; start from minnat/integrations/config/"
                             "nat_ppo_trainer.yaml (python -m minnat.integrations.verl) or add "
                             "nat: {method: rpc, rho: 0.5}.")
        values = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else dict(block)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown nat.* settings {sorted(unknown)}; the block takes "
                             f"{[field.name for field in dataclasses.fields(cls)]}.")
        return cls(**values)


def unsupported_settings(config) -> list[str]:
    """Why each verl setting that NAT cannot run unbiasedly is refused, and what to do instead."""
    select = functools.partial(OmegaConf.select, config, default=None)
    method = NATConfig.from_config(config).method
    problems = []
    loss_mode = select("actor_rollout_ref.actor.policy_loss.loss_mode") or "vanilla"
    if loss_mode not in SUPPORTED_POLICY_LOSSES:
        reason = WHY_NOT.get(loss_mode, "its per-token term is not known to depend on token t alone")
        problems.append(f"policy_loss.loss_mode={loss_mode!r} is refused: {reason}, which a random subset of "
                        f"tokens cannot estimate without bias. Use one of {SUPPORTED_POLICY_LOSSES}.")
    correction = select("algorithm.rollout_correction") or {}
    if correction and correction.get("bypass_mode", False):
        problems.append("algorithm.rollout_correction.bypass_mode=true is refused: it replaces the old "
                        "log-probs by the rollout engine's over every token and computes its weights inside "
                        "the actor. Use the decoupled mode (bypass_mode=false).")
    if method == "rpc":
        level = correction.get("rollout_is", None) if correction else None
        if level not in (None, "token"):
            problems.append(f"rollout_correction.rollout_is={level!r} is refused with nat.method=rpc: its weight "
                            "is a product over every token of a response, and RPC's old log-probs stop at the "
                            "cut. Use rollout_is=token (or null), or nat.method=urs.")
        if correction and correction.get("rollout_rs", None) is not None:
            problems.append("rollout_correction.rollout_rs (rejection sampling) is refused with nat.method=rpc: "
                            "it masks tokens from statistics over the whole response, past the cut. Set "
                            "rollout_rs=null, or use nat.method=urs.")
        estimator = select("algorithm.adv_estimator")
        if estimator in ("optimal_token_baseline", "tir_optimal_token_baseline") or \
                select("actor_rollout_ref.actor.calculate_sum_pi_squared"):
            problems.append(f"adv_estimator={estimator!r} / calculate_sum_pi_squared is refused with nat.method=rpc: "
                            "the optimal token baseline reads π_old and Σπ² at every response token, and RPC "
                            "computes them up to the cut only. Use adv_estimator=grpo (or rloo, reinforce_plus_plus), "
                            "or nat.method=urs.")
        if select("algorithm.use_kl_in_reward"):
            problems.append("algorithm.use_kl_in_reward=true is refused with nat.method=rpc: the reward's KL "
                            "penalty reads log-probs at every token, and RPC computes them up to the cut only. "
                            "Use the KL loss instead (actor.use_kl_loss=true), which NAT weights by 1/π_t.")
    if need_critic(config):
        problems.append("a critic (adv_estimator=gae or critic.enable) is refused: its value loss would train "
                        "on every token. Use a critic-free estimator such as adv_estimator=grpo.")
    if is_distillation_enabled(config.get("distillation", None)):
        problems.append("distillation is refused: its loss (distillation_ppo_loss) replaces the PPO loss that "
                        "NAT weights. Disable distillation.")
    strategy = select("actor_rollout_ref.actor.strategy")
    if strategy not in ("fsdp", "fsdp2"):
        problems.append(f"actor.strategy={strategy!r} is refused: NAT is built and tested on verl's FSDP "
                        "engine (fsdp2 tested). Use actor.strategy=fsdp2.")
    if select("actor_rollout_ref.actor.use_prefix_grouper") or select("actor_rollout_ref.model.use_prefix_grouper"):
        problems.append("the prefix grouper is refused: it shares prompt computation across a group, which "
                        "NAT's per-row attention masks do not cover. Disable use_prefix_grouper.")
    if select("trainer.use_v1"):
        problems.append("trainer.use_v1=true is refused: NAT hooks verl's RayPPOTrainer (the v0 trainer) and "
                        "the v1 trainer is a different class. Set trainer.use_v1=false.")
    return problems


# ----------------------------------------------------------------------------- the loss, on the workers


def nat_ppo_loss(config: ActorConfig, model_output, data: TensorDict, dp_group=None):
    """verl's `ppo_loss` with NAT's HT weights w = keep/π on the policy, entropy and KL terms.

    model_output["log_probs"]  nested/packed [B, prompt + kept prefix] (what the engine computed)
    data  the micro-batch: response_mask (FULL), old_log_probs, advantages, nat_weights, nat_keep
          [B, T], optional rollout_is_weights, ref_log_prob; dp_size, batch_num_tokens,
          global_batch_size (computed by verl from the full masks)
    Returns (loss, metrics) as verl's engine expects.
    """
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)
    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    summed = (data["dp_size"] > 1 or data["batch_num_tokens"] is not None or data["global_batch_size"] is not None
              or config.loss_scale_factor is not None)
    metric_aggregation = AggregationType.SUM if summed else AggregationType.MEAN

    fields = ["response_mask", "old_log_probs", "advantages", WEIGHTS, KEEP]
    fields += [name for name in ("rollout_is_weights", "ref_log_prob") if name in data]
    data = data.select(*fields).to_padded_tensor()
    response_mask = data["response_mask"].to(bool)
    keep = data[KEEP].to(bool) & response_mask
    # where() rather than a product: past an RPC cut the engine returns 0 log-probs, and a dropped
    # position must contribute exactly nothing whatever sits there.
    weights = torch.where(keep, data[WEIGHTS].to(log_prob.dtype), torch.zeros_like(log_prob))
    old_log_prob = torch.where(keep, data["old_log_probs"].to(log_prob.dtype), log_prob.detach())
    is_weights = data.get("rollout_is_weights", None)
    combined = weights if is_weights is None else weights * is_weights.to(weights.dtype)

    policy_loss_fn = get_policy_loss_fn(config.policy_loss.get("loss_mode", "vanilla"))
    arguments = dict(old_log_prob=old_log_prob, log_prob=log_prob, advantages=data["advantages"],
                     loss_agg_mode=config.loss_agg_mode, config=config)
    pg_loss, _ = policy_loss_fn(response_mask=response_mask, rollout_is_weights=combined, **arguments)
    with torch.no_grad():  # the same metrics as stock verl, over the kept tokens only
        _, pg_metrics = policy_loss_fn(response_mask=keep, rollout_is_weights=None,
                                       **{**arguments, "log_prob": log_prob.detach()})
    metrics = dict(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=metric_aggregation)
    loss = pg_loss
    if entropy is not None:
        entropy_loss = agg_loss(loss_mat=entropy * weights, loss_mask=response_mask,
                                loss_agg_mode=config.loss_agg_mode, **config.global_batch_info)
        loss = loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=metric_aggregation)
    if config.use_kl_loss:
        ref_log_prob = torch.where(keep, data["ref_log_prob"].to(log_prob.dtype), log_prob.detach())
        kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=config.kl_loss_type)
        kl_loss = agg_loss(loss_mat=kld * weights, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode,
                           **config.global_batch_info)
        loss = loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_aggregation)
        metrics["kl_coef"] = config.kl_loss_coef
    return loss, metrics


# ----------------------------------------------------------------------------- the driver side


def draw_selection(response_mask: torch.Tensor, nat: NATConfig, generator: torch.Generator) -> Selection:
    """One NAT draw over a rollout batch's response mask [B, T] (ρ from nat.token_budget when set)."""
    budget = nat.rho
    if nat.token_budget is not None:
        total = int(response_mask.sum())
        budget = min(1.0, nat.token_budget / total) if total else 1.0
    return select_tokens(response_mask.bool().cpu(), nat.method, budget, generator,
                         cut_distribution=nat.cut_distribution, cut_sampling=nat.cut_sampling)


def truncated_attention_mask(attention_mask: torch.Tensor, response_mask: torch.Tensor,
                             cut_lengths: torch.Tensor) -> torch.Tensor:
    """verl's [B, P + T] attention mask with every response column at or past C_b zeroed (prompt kept).

    attention_mask [B, P + T] (left-padded prompt, right-padded response), response_mask [B, T],
    cut_lengths long [B]. Rows whose cut is 0 (empty responses) keep their prompt only.
    """
    prompt_columns = attention_mask.shape[1] - response_mask.shape[1]
    columns = torch.arange(response_mask.shape[1], device=attention_mask.device)
    inside = (columns.unsqueeze(0) < cut_lengths.to(attention_mask.device).unsqueeze(1)).to(attention_mask.dtype)
    truncated = attention_mask.clone()
    truncated[:, prompt_columns:] = attention_mask[:, prompt_columns:] * inside
    return truncated


def add_selection(batch: DataProto, nat: NATConfig, generator: torch.Generator) -> Selection:
    """Draw the batch's selection and store it in the batch (`nat_keep`, `nat_weights`, `nat_attention_mask`)."""
    if "multi_modal_inputs" in batch.non_tensor_batch and any(
            len(inputs) for inputs in batch.non_tensor_batch["multi_modal_inputs"]):
        raise ValueError("multimodal inputs are refused by NATRayPPOTrainer: their image tokens sit inside the "
                         "prompt with their own position ids, which NAT's row truncation does not cover. Use a "
                         "text-only model and dataset.")
    selection = draw_selection(batch.batch["response_mask"], nat, generator)
    store_selection(batch, selection)
    return selection


def store_selection(batch: DataProto, selection: Selection) -> None:
    """Put a selection into the batch's tensors, where verl's shuffles and splits carry it row by row."""
    response_mask = batch.batch["response_mask"]
    device = response_mask.device
    batch.batch[KEEP] = selection.keep.to(device)
    batch.batch[WEIGHTS] = selection.weights.to(device=device, dtype=torch.float32)
    if selection.method == "rpc":
        batch.batch[ATTENTION] = truncated_attention_mask(batch.batch["attention_mask"], response_mask,
                                                          selection.cut_lengths)


def engine_view(batch: DataProto) -> DataProto:
    """The batch as the engine must see it: for RPC, the attention mask cut after prompt + C_b.

    A shallow copy (no tensor is copied); the driver's own batch keeps its full attention mask.
    """
    if ATTENTION not in batch.batch.keys():
        return batch
    tensors = batch.batch.clone(recurse=False)
    tensors["attention_mask"] = tensors[ATTENTION]
    meta_info = dict(batch.meta_info)
    if "global_token_num" in meta_info:  # verl's MFU metric counts the tokens the model is really given
        meta_info["global_token_num"] = tensors[ATTENTION].sum(dim=-1).tolist()
    return DataProto(batch=tensors, non_tensor_batch=batch.non_tensor_batch, meta_info=meta_info)


class NATRayPPOTrainer(RayPPOTrainer):
    """verl's `RayPPOTrainer` training the actor on a NAT selection of response tokens (module docs).

    Same constructor as `RayPPOTrainer`; the config must carry a `nat:` block. Settings NAT cannot run
    unbiasedly raise ValueError here, before any worker starts.
    """

    def __init__(self, config, *positional, **keyword):
        self.nat = NATConfig.from_config(config)
        problems = unsupported_settings(config)
        if problems:
            raise ValueError("NATRayPPOTrainer cannot run these settings: " + " ".join(problems))
        super().__init__(config, *positional, **keyword)
        self.nat_generator = torch.Generator().manual_seed(self.nat.seed)

    def init_workers(self):
        super().init_workers()
        self.actor_rollout_wg.set_loss_fn(nat_loss_function(self.config))

    # --- the selection: drawn once per rollout batch, carried with it -----------------------------

    def _nat_ensure_selection(self, batch: DataProto) -> None:
        if KEEP not in batch.batch.keys():
            add_selection(batch, self.nat, self.nat_generator)

    def _balance_batch(self, batch: DataProto, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        """Draw the selection first, then balance the DP ranks by the tokens each row really costs
        (prompt + kept prefix for RPC), not by the full sequences."""
        self._nat_ensure_selection(batch)
        if ATTENTION not in batch.batch.keys():
            return super()._balance_batch(batch, metrics, logging_prefix, keep_minibatch)
        full = batch.batch["attention_mask"]
        batch.batch["attention_mask"], batch.batch[ATTENTION] = batch.batch[ATTENTION], full
        try:
            super()._balance_batch(batch, metrics, logging_prefix, keep_minibatch)
        finally:  # the reorder moved both masks together; swap them back
            batch.batch["attention_mask"], batch.batch[ATTENTION] = batch.batch[ATTENTION], batch.batch[
                "attention_mask"]

    def _compute_old_log_prob(self, batch: DataProto):
        """π_old at the kept tokens (RPC: over prompt + prefix only). The entropies are returned times
        w, so the `actor/entropy` verl aggregates over the full mask is an HT estimate of the full one."""
        self._nat_ensure_selection(batch)
        old_log_prob, mfu = super()._compute_old_log_prob(engine_view(batch))
        weights = batch.batch[WEIGHTS].to(old_log_prob.batch["entropys"].dtype)
        old_log_prob.batch["entropys"] = old_log_prob.batch["entropys"] * weights
        return old_log_prob, mfu

    def _compute_ref_log_prob(self, batch: DataProto) -> DataProto:
        self._nat_ensure_selection(batch)
        return super()._compute_ref_log_prob(engine_view(batch))

    def _update_actor(self, batch: DataProto) -> DataProto:
        self._nat_ensure_selection(batch)
        output = super()._update_actor(engine_view(batch))
        output.meta_info["metrics"].update(selection_metrics(batch))
        return output


def selection_metrics(batch: DataProto) -> dict:
    """What NAT kept and gave the model in this batch (driver-side, all ranks together)."""
    response_mask = batch.batch["response_mask"].bool()
    keep = batch.batch[KEEP].bool() & response_mask
    model_mask = batch.batch[ATTENTION] if ATTENTION in batch.batch.keys() else batch.batch["attention_mask"]
    return {"nat/kept_fraction": float(keep.sum()) / max(int(response_mask.sum()), 1),
            "nat/max_ht_weight": float(batch.batch[WEIGHTS].max()) if keep.any() else 0.0,
            "nat/tokens_to_model": float(model_mask.sum()),
            "nat/tokens_to_model_full": float(batch.batch["attention_mask"].sum())}


def nat_loss_function(config):
    """`nat_ppo_loss` bound to the actor's config, as the worker's `set_loss_fn` wants it."""
    actor_config = actor_config_from(config.actor_rollout_ref.actor)
    return functools.partial(nat_ppo_loss, config=actor_config)


def actor_config_from(actor) -> ActorConfig:
    """verl's ActorConfig dataclass from the omegaconf `actor_rollout_ref.actor` block."""
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(actor)


# ----------------------------------------------------------------------------- the launcher


def nat_task_runner():
    """verl's v0 `TaskRunner` (a Ray actor) that builds a `NATRayPPOTrainer` instead of a `RayPPOTrainer`."""
    import ray
    from verl.trainer import main_ppo_v0

    class NATTaskRunner(main_ppo_v0.TaskRunner.__ray_actor_class__):
        def run(self, config):
            # verl's TaskRunner.run builds the trainer by its module-level name `RayPPOTrainer`. This runs in
            # the task runner's own Ray process, so pointing that name at NATRayPPOTrainer there reuses
            # verl's whole set-up (workers, datasets, reward) unchanged.
            main_ppo_v0.RayPPOTrainer = NATRayPPOTrainer
            return super().run(config)

    return ray.remote(num_cpus=1)(NATTaskRunner)


def prepare_config(config) -> None:
    """Check the NAT settings on the driver (before Ray starts) and make every Ray worker apply
    `patch_verl_for_trl1` as it starts (its model is built before any NAT code reaches it)."""
    NATConfig.from_config(config)
    problems = unsupported_settings(config)
    if problems:
        raise ValueError("minnat.integrations.verl cannot run these settings: " + " ".join(problems))
    with open_dict(config):
        runtime_env = config.ray_kwargs.ray_init.setdefault("runtime_env", {})
        runtime_env["worker_process_setup_hook"] = "minnat.integrations.verl.patch_verl_for_trl1"


def main(argv=None) -> int:
    """`python -m minnat.integrations.verl [hydra overrides]`: verl's main_ppo with NAT."""
    import hydra

    @hydra.main(config_path=CONFIG_DIR, config_name="nat_ppo_trainer", version_base=None)
    def run(config):
        from verl.trainer.main_ppo import run_ppo
        from verl.trainer.ppo.utils import need_reference_policy
        from verl.utils.config import validate_config
        from verl.utils.device import auto_set_device

        auto_set_device(config)
        try:
            prepare_config(config)
        except ValueError as error:  # a sentence, not a traceback, and nothing started
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
        run_ppo(config, task_runner_class=nat_task_runner())

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    run()
    return 0


if __name__ == "__main__":
    from minnat.integrations.verl import main as package_main  # one copy of every class, not a __main__ twin

    sys.exit(package_main())
