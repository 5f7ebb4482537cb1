"""NAT inside verl 0.9, for real on CPU: verl's own FSDP2 engine, its ppo_loss/agg_loss, its padding helpers.

The engine is `FSDPEngineWithLMHead` built by verl's `EngineRegistry` around a tiny random Qwen3 (float32,
gloo, one process; minnat.bench_verl's CPU platform shim). Checked:

1. exact expectation: over EVERY combination of RPC cuts of a 4-row batch (120 of them; or the 39
   joint outcomes of stratified cuts), the mean of NAT's gradient through verl's engine equals stock
   verl's full-token gradient, in all five loss_agg modes with the KL loss and the entropy bonus,
   padded and padding-free, fixed and dynamic micro-batches — and the stock, unweighted KL and
   entropy terms over kept tokens are biased (why nat_ppo_loss weights them);
2. one draw through the engine equals minnat's own `policy_loss` on a plain HF forward;
3. the tokens reaching the engine's model drop exactly as the cuts say;
4. the driver side (`NATRayPPOTrainer`, without Ray): one selection per batch, the cut batch handed to
   the workers, old log-probs equal to the full pass's at kept tokens, the update's gradient;
5. two data-parallel ranks (torchrun, gloo, FSDP2) give the single-process gradient;
6. every refused setting raises a sentence, at start-up.
What cannot run here (Ray placement, vLLM/SGLang rollout servers, GPUs) is named in examples/verl/README.md.
"""
from __future__ import annotations

import copy
import functools
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import verl  # noqa: F401
except ImportError as error:  # a test dependency: fail, never skip
    raise ImportError('the verl tests need verl 0.9: `pip install -e ".[test,verl]"` '
                      "(scripts/install_test_deps.sh installs it)") from error

from minnat.bench_verl import build_engine, install_cpu_platform

install_cpu_platform()  # before anything imports verl's trainer (it resolves the platform on import)

from hydra import compose, initialize_config_dir  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402

from minnat.grpo import policy_loss  # noqa: E402
from minnat.integrations import verl as nat_verl  # noqa: E402
from minnat.nat import (rpc_cut_probabilities, rpc_inclusion_probabilities, select_tokens,  # noqa: E402
                        selection_from_keep, stratified_cut_law)
from verl_cases import (TokenCounter, actor_config, driver_batch, engine_data, engine_gradient,  # noqa: E402
                        save_tiny_model)

REPO = Path(__file__).resolve().parent.parent
PROMPTS, RESPONSES = [3, 5, 2, 4], [4, 2, 5, 3]
BUDGET = 0.5


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("verl-model"))


@pytest.fixture(scope="module")
def engine(model_folder):
    return build_engine(model_folder)


def with_selection(batch, selection):
    nat_batch = copy.copy(batch)
    nat_batch.batch = batch.batch.clone()
    nat_verl.store_selection(nat_batch, selection)
    return nat_batch


def relative(a, b):
    return float((a - b).norm() / b.norm())


def every_rpc_cut(batch, budget=BUDGET, cut_distribution="uniform-floor", cut_sampling="independent"):
    """(probability, Selection) for every joint outcome of the batch's RPC cuts: all combinations of
    independent cuts, or the stratified design's exact joint law (`minnat.nat.stratified_cut_law`)."""
    mask = batch.batch["response_mask"].bool()
    lengths = mask.sum(dim=1)
    pi = rpc_inclusion_probabilities(lengths, mask.shape[1], budget, cut_distribution)
    if cut_sampling == "stratified":
        outcomes = [(probability, cuts) for cuts, probability in stratified_cut_law(lengths, budget, cut_distribution)]
    else:
        laws = [rpc_cut_probabilities(int(length), budget, cut_distribution) for length in lengths]
        outcomes = [(math.prod(float(law[cut - 1]) for law, cut in zip(laws, cuts)), torch.tensor(cuts))
                    for cuts in itertools.product(*[range(1, int(length) + 1) for length in lengths])]
    columns = torch.arange(mask.shape[1])
    for probability, cuts in outcomes:
        if probability > 0:
            keep = columns.unsqueeze(0) < cuts.unsqueeze(1)
            yield probability, selection_from_keep(keep, pi, "rpc", budget, cut_distribution)


CASES = {  # loss_agg_mode, KL loss + entropy bonus, data layout
    "token-mean": ("token-mean", True, dict()),
    "token-sum": ("token-sum", True, dict()),
    "seq-mean-token-sum": ("seq-mean-token-sum", True, dict()),
    "seq-mean-token-mean": ("seq-mean-token-mean", True, dict()),
    "seq-mean-token-sum-norm": ("seq-mean-token-sum-norm", True, dict()),
    "padded, no KL": ("token-mean", False, dict(use_remove_padding=False)),
    "dynamic micro-batches": ("seq-mean-token-mean", True, dict(micro_batch_size=None, max_token_len=20)),
    "stratified cuts": ("seq-mean-token-sum-norm", True, dict()),  # the launcher's default cut sampling
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_expectation_over_every_cut_equals_stock_verl(engine, case):
    loss_agg_mode, regularised, layout = CASES[case]
    layout = {"micro_batch_size": 2, **layout}
    config = actor_config(loss_agg_mode, use_kl_loss=regularised, entropy_coeff=0.01 if regularised else 0.0)
    batch = driver_batch(PROMPTS, RESPONSES)
    options = dict(global_batch_size=4, calculate_entropy=regularised, **layout)
    stock = engine_gradient(engine, engine_data(batch, **options), functools.partial(ppo_loss, config=config))
    nat_loss = functools.partial(nat_verl.nat_ppo_loss, config=config)

    # method "full" through nat_ppo_loss is stock verl, to float rounding
    full = with_selection(batch, select_tokens(batch.batch["response_mask"].bool(), "full"))
    assert relative(engine_gradient(engine, engine_data(full, **options), nat_loss), stock) < 1e-6

    expected, naive, mass = torch.zeros_like(stock), torch.zeros_like(stock), 0.0
    sampling = "stratified" if case == "stratified cuts" else "independent"
    for probability, selection in every_rpc_cut(batch, cut_sampling=sampling):
        cut = nat_verl.engine_view(with_selection(batch, selection))
        expected += probability * engine_gradient(engine, engine_data(cut, **options), nat_loss)
        mass += probability
        if case == "token-mean":  # the obvious port: HT weights as rollout_is_weights, verl's own ppo_loss
            cut.batch["rollout_is_weights"] = cut.batch[nat_verl.WEIGHTS]
            naive += probability * engine_gradient(engine, engine_data(cut, **options),
                                                   functools.partial(ppo_loss, config=config))
    assert abs(mass - 1.0) < 1e-9
    assert relative(expected, stock) < 1e-5, f"{case}: E[g_NAT] is {relative(expected, stock):.2e} from stock"
    if case == "token-mean":  # stock verl's KL and entropy terms are unweighted: biased over kept tokens
        assert relative(naive, stock) > 1e-2  # (0.042 here, over 1000× NAT's rounding error)


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_one_draw_through_verl_equals_minnat_policy_loss(engine, model_folder, loss_agg_mode):
    from transformers import AutoModelForCausalLM

    batch = driver_batch(PROMPTS, RESPONSES, seed=1)
    mask = batch.batch["response_mask"].bool()
    T = mask.shape[1]
    selection = select_tokens(mask, "rpc", BUDGET, torch.Generator().manual_seed(3))
    config = actor_config(loss_agg_mode, use_kl_loss=True, loss_scale_factor=T)
    cut = nat_verl.engine_view(with_selection(batch, selection))
    verl_gradient = engine_gradient(engine, engine_data(cut, global_batch_size=4, micro_batch_size=2),
                                    functools.partial(nat_verl.nat_ppo_loss, config=config))

    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, attn_implementation="sdpa")
    tensors = batch.batch
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                   position_ids=tensors["position_ids"]).logits[:, -T - 1:-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, tensors["responses"].unsqueeze(-1)).squeeze(-1)
    loss = policy_loss(logprobs, tensors["old_log_probs"], tensors["advantages"][:, 0], mask,
                       weights=selection.weights, ref_logprobs=tensors["ref_log_prob"], clip_eps=0.2, kl_coef=0.5,
                       loss_agg=loss_agg_mode, max_new_tokens=T)
    loss.backward()
    minnat_gradient = torch.cat([parameter.grad.reshape(-1).double() for parameter in model.parameters()])
    assert relative(verl_gradient, minnat_gradient) < 1e-5


def test_tokens_reaching_the_model_drop_as_the_cuts_say(engine):
    batch = driver_batch(PROMPTS, RESPONSES, seed=2)
    selection = select_tokens(batch.batch["response_mask"].bool(), "rpc", BUDGET, torch.Generator().manual_seed(5))
    config = actor_config("token-mean")
    counts = {}
    for name, data_batch in [("stock", batch), ("rpc", nat_verl.engine_view(with_selection(batch, selection)))]:
        for packed in (True, False):
            counter = TokenCounter(engine)
            loss = nat_verl.nat_ppo_loss if name == "rpc" else ppo_loss
            engine_gradient(engine, engine_data(data_batch, global_batch_size=4, micro_batch_size=2,
                                                use_remove_padding=packed), functools.partial(loss, config=config))
            counter.close()
            counts[name, packed] = counter.tokens
    prompts, responses = torch.tensor(PROMPTS), torch.tensor(RESPONSES)
    assert counts["stock", True] == int((prompts + responses).sum())
    assert counts["rpc", True] == int((prompts + selection.cut_lengths).sum())  # prompt + C_b per row, packed
    assert counts["rpc", False] < counts["stock", False]  # padded micro-batches shrink too
    assert selection.cut_lengths.lt(responses).any()  # the draw really cut something


class EngineWorkerGroup:
    """What NATRayPPOTrainer's driver methods call on `actor_rollout_wg`, run by the real engine in-process."""

    def __init__(self, engine, config):
        self.engine, self.loss = engine, functools.partial(nat_verl.nat_ppo_loss, config=config)
        self.received, self.gradients = [], []
        self._dispatch_info = {"actor": [0, 1]}  # two data-parallel ranks, for _balance_batch

    def _run_time_keys(self, data):
        tu.assign_non_tensor(data, use_remove_padding=True, use_dynamic_bsz=False, micro_batch_size_per_gpu=2,
                             max_token_len_per_gpu=4096, use_fused_kernels=False)

    def compute_log_prob(self, data):
        self.received.append(("log_prob", data["input_ids"].offsets().diff().clone()))
        self._run_time_keys(data)
        output = self.engine.infer_batch(data)["model_output"]
        tensors = {name: output[name] for name in ("log_probs", "entropy") if name in output}
        return tu.get_tensordict(tensors, non_tensor_dict={"metrics": {"mfu": 0.0}})

    def update_actor(self, data):
        self.received.append(("update", data["input_ids"].offsets().diff().clone()))
        self._run_time_keys(data)
        self.gradients.append(engine_gradient(self.engine, data, self.loss))
        return tu.get_tensordict({}, non_tensor_dict={"metrics": {"mfu": 0.0}})


def nat_trainer_config(*overrides):
    with initialize_config_dir(config_dir=nat_verl.CONFIG_DIR, version_base=None):
        return compose("nat_ppo_trainer", overrides=list(overrides))


def test_trainer_hooks_draw_once_cut_the_batch_and_reuse_the_selection(engine):
    config = nat_trainer_config("nat.rho=0.5", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                                "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.loss_agg_mode=token-mean")
    trainer = object.__new__(nat_verl.NATRayPPOTrainer)  # the driver's methods alone: no Ray, no workers
    trainer.config, trainer.nat = config, nat_verl.NATConfig.from_config(config)
    trainer.nat_generator = torch.Generator().manual_seed(0)
    actor = nat_verl.actor_config_from(config.actor_rollout_ref.actor)
    workers = trainer.actor_rollout_wg = EngineWorkerGroup(engine, actor)
    trainer.ref_in_actor = True
    batch = driver_batch(PROMPTS, RESPONSES, seed=4)

    metrics = {}
    trainer._balance_batch(batch, metrics)  # the selection is drawn here, then the ranks are balanced
    P = batch.batch["prompts"].shape[1]
    keep = batch.batch[nat_verl.KEEP].clone()
    prompts = batch.batch["attention_mask"][:, :P].sum(1)
    cuts = batch.batch[nat_verl.ATTENTION][:, P:].sum(1)
    old, _ = trainer._compute_old_log_prob(batch)
    trainer._compute_ref_log_prob(batch)
    output = trainer._update_actor(batch)
    reference, _ = nat_verl.RayPPOTrainer._compute_old_log_prob(trainer, batch)  # verl's own full pass

    assert torch.equal(batch.batch[nat_verl.KEEP], keep)  # one draw, reused by every pass
    assert torch.equal(cuts, keep.sum(1)) and cuts.lt(batch.batch["response_mask"].sum(1)).any()
    assert torch.equal(batch.batch["attention_mask"].sum(1), prompts + batch.batch["response_mask"].sum(1))
    assert [name for name, _ in workers.received[:3]] == ["log_prob", "log_prob", "update"]
    for name, lengths in workers.received[:3]:  # old log-probs, reference, update: prompt + C_b per row
        assert torch.equal(lengths, prompts + cuts), name
    assert torch.equal(workers.received[3][1], prompts + batch.batch["response_mask"].sum(1))
    kept = keep & batch.batch["response_mask"].bool()
    new, full = old.batch["old_log_probs"], reference.batch["old_log_probs"]
    assert new[~kept].abs().max() == 0  # nothing computed past the cut
    assert torch.allclose(new[kept], full[kept], atol=1e-6)  # causal attention: the prefix's log-probs are exact
    assert "global_seqlen/mean" in metrics  # verl's DP balancing ran (on prompt + C_b workloads)
    nat_metrics = output.meta_info["metrics"]
    assert 0.0 < nat_metrics["nat/kept_fraction"] < 1.0
    assert nat_metrics["nat/tokens_to_model"] == float((prompts + cuts).sum()) < nat_metrics["nat/tokens_to_model_full"]
    direct = engine_gradient(engine, engine_data(nat_verl.engine_view(batch), global_batch_size=4, micro_batch_size=2),
                             functools.partial(nat_verl.nat_ppo_loss, config=actor))
    assert relative(workers.gradients[0], direct) < 1e-6  # the worker got exactly the tested batch


def test_two_data_parallel_ranks_equal_one_process(tmp_path, model_folder):
    from verl_two_ranks import one_step

    single = one_step(model_folder)  # this process: world size 1, both micro-batches here
    out = tmp_path / "ranks2.pt"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29613",
               str(REPO / "tests" / "verl_two_ranks.py"), str(out), model_folder]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(out)
    for name in ("gradient", "parameters"):  # bitwise: verl's global normalisers make the split invisible
        assert torch.equal(single[name], two[name]), f"{name}: max difference {(single[name] - two[name]).abs().max():.2e}"


REFUSED = {
    "actor_rollout_ref.actor.policy_loss.loss_mode=gspo": "gspo",
    "actor_rollout_ref.actor.policy_loss.loss_mode=geo_mean": "geo_mean",
    "actor_rollout_ref.actor.policy_loss.loss_mode=clip_cov": "clip_cov",
    "actor_rollout_ref.actor.policy_loss.loss_mode=kl_cov": "kl_cov",
    "algorithm.rollout_correction.bypass_mode=true": "bypass_mode",
    "algorithm.rollout_correction.rollout_is=sequence": "rollout_is='sequence'",
    "algorithm.use_kl_in_reward=true": "use_kl_in_reward",
    "algorithm.adv_estimator=optimal_token_baseline": "optimal token baseline",
    "algorithm.adv_estimator=gae": "critic",
    "distillation.enabled=true": "distillation",
    "actor_rollout_ref.actor.strategy=megatron": "megatron",
    "trainer.use_v1=true": "use_v1",
}


def with_overrides(base, *overrides):
    """The composed config with `key=value` overrides applied (one hydra compose serves every case)."""
    import yaml
    from omegaconf import OmegaConf, open_dict

    config = copy.deepcopy(base)
    with open_dict(config):
        for override in overrides:
            key, value = override.split("=", 1)
            OmegaConf.update(config, key, yaml.safe_load(value), force_add=True)
    return config


def test_settings_nat_cannot_keep_unbiased_are_refused_with_a_sentence():
    base = nat_trainer_config()
    assert nat_verl.unsupported_settings(base) == []  # the launcher's defaults run
    for override, word in REFUSED.items():
        problems = nat_verl.unsupported_settings(with_overrides(base, override))
        assert len(problems) == 1 and word in problems[0], (override, problems)
        assert any(advice in problems[0] for advice in ("Use ", "Set ", "Disable ")), problems[0]
        with pytest.raises(ValueError, match="cannot run these settings"):
            nat_verl.NATRayPPOTrainer(with_overrides(base, override))
    urs = with_overrides(base, "nat.method=urs", "algorithm.rollout_correction.rollout_is=sequence")
    assert nat_verl.unsupported_settings(urs) == []  # URS computes every log-prob: sequence IS stays exact
    with pytest.raises(ValueError, match="nat.method must be one of"):
        nat_verl.NATConfig.from_config(with_overrides(base, "nat.method=top-entropy"))
    with pytest.raises(ValueError, match="multimodal"):
        batch = driver_batch(PROMPTS, RESPONSES)
        batch.non_tensor_batch["multi_modal_inputs"] = __import__("numpy").array([{"pixel_values": 1}] * 4)
        nat_verl.add_selection(batch, nat_verl.NATConfig(), torch.Generator())


def test_launcher_refuses_before_starting_anything(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "minnat.integrations.verl",  # hydra writes outputs/ in cwd
                             "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"], env=environment,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "gspo" in result.stderr and "Traceback" not in result.stderr


def test_bench_verl_mode_measures_tokens_and_time_on_one_batch(tmp_path):
    from minnat.bench import build_parser
    from minnat.bench_verl import run_verl_benchmark

    options = build_parser().parse_args(["--mode", "verl", "--batch-size", "2", "--prompt-length", "4",
                                         "--response-lengths", "16", "--repeats", "1", "--budgets", "0.5",
                                         "--out", str(tmp_path)])
    options.command = "test"
    [row] = run_verl_benchmark(options, log=lambda line: None)
    assert row["tokens_to_model"]["rpc"] < row["tokens_to_model"]["stock"]
    assert 0.0 < row["kept_fraction"] < 1.0 and len(row["time_seconds_per_repeat"]["rpc"]) == 1
    assert not row["time_ratio_spread"]["reliable"]  # one repeat is never called a finding
    assert (tmp_path / "verl.json").exists() and "UNRELIABLE" in (tmp_path / "verl.md").read_text()


def test_the_gpu_example_composes_against_verls_config_and_is_not_refused():
    import shlex

    text = (REPO / "examples" / "verl" / "grpo_qwen3_nat.sh").read_text()
    body = text[text.index("python -m minnat.integrations.verl"):text.index('"$@"')]
    overrides = [argument.replace("$DATA", "/data").replace("$MODEL", "Qwen/Qwen3-8B")
                 for argument in shlex.split(body.replace("\\\n", " ")) if "=" in argument]
    config = nat_trainer_config(*overrides)  # hydra refuses any key verl 0.9.1 does not have
    assert len(overrides) > 40 and config.nat.method == "rpc" and config.actor_rollout_ref.rollout.name == "vllm"
    assert nat_verl.unsupported_settings(config) == []


def test_the_launcher_pieces_that_ray_carries(tmp_path):
    """What can be checked of the Ray side without a cluster: the loss the driver sends through
    `set_loss_fn` survives Ray's pickling, the task runner is verl's with the NAT trainer swapped in, and
    every worker is told to apply the TRL-1 patch. (A local Ray worker started with this runtime_env was
    checked by hand to have the patch: 60 s, too slow for the suite.)"""
    import cloudpickle
    from verl.trainer import main_ppo_v0

    config = nat_trainer_config("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2")
    loss = cloudpickle.loads(cloudpickle.dumps(nat_verl.nat_loss_function(config)))
    assert loss.func is nat_verl.nat_ppo_loss and loss.keywords["config"].loss_agg_mode == "token-mean"
    runner = nat_verl.nat_task_runner()
    assert issubclass(runner.__ray_actor_class__, main_ppo_v0.TaskRunner.__ray_actor_class__)
    nat_verl.prepare_config(config)
    assert config.ray_kwargs.ray_init.runtime_env.worker_process_setup_hook == \
        "minnat.integrations.verl.patch_verl_for_trl1"
    import verl.models.transformers.monkey_patch as monkey_patch

    assert monkey_patch.is_trl_available() is False  # patched here too: TRL 1.x has no value-head class
