"""NAT inside TRL's real GRPOTrainer (use_vllm=False, CPU): parity, exact unbiasedness, real savings, training, DDP.

Every trainer here is TRL's own `GRPOTrainer` (stock) or its subclass `NATGRPOTrainer`, on the
embedded tiny Qwen3. The exactness tests run it in float64 (TRL still returns float32 log-probs,
so stock-vs-NAT agreement is at float32 rounding).
"""
import copy
import importlib
import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="the TRL integration needs `pip install \"minnat[trl]\"`")

from conftest import make_batch  # noqa: E402
from minnat.integrations.trl import (INCLUSION_KEY, KEEP_KEY, SUPPORTED_LOSS_TYPES, NATGRPOConfig,  # noqa: E402
                                     NATGRPOTrainer, build_trainer_for_loss, task_dataset, task_reward,
                                     trl_inputs_from_generate_batch)
from minnat.models import load_model  # noqa: E402
from minnat.nat import rpc_cut_probabilities, rpc_inclusion_probabilities, select_tokens  # noqa: E402
from minnat.rollout import generate  # noqa: E402
from minnat.tasks import get_task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedded():
    model, tokenizer = load_model("embedded")
    return model.double(), tokenizer


@pytest.fixture(scope="module")
def rollout(embedded):
    """Eight real sampled responses of the embedded model (ragged, as TRL would see them)."""
    model, tokenizer = embedded
    task = get_task("arithmetic", num_train=4, num_eval=4)
    torch.manual_seed(0)
    return generate(copy.deepcopy(model).float(), tokenizer, task, task.train_examples, group_size=2,
                    max_new_tokens=40)


def loss_and_grad(trainer, model, inputs):
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return loss.detach().double(), torch.cat([p.grad.flatten() for p in model.parameters()])


def perturbed(logps, mask, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    noise = scale * torch.randn(logps.shape, generator=generator, dtype=logps.dtype)
    return ((logps + noise) * mask).float()


def current_logprobs(trainer, model, input_ids, attention_mask, response_mask):
    with torch.no_grad():
        return trainer.nat_logprobs(model, input_ids, attention_mask, response_mask.long(),
                                    select_tokens(response_mask, "full"))


def old_and_ref(trainer, model, batch):
    """log π_old and log π_ref far enough from log π_θ to switch clipping and the KL on."""
    input_ids, attention_mask, response_mask = batch
    current = current_logprobs(trainer, model, input_ids, attention_mask, response_mask)
    return perturbed(current, response_mask, 0.25, 1), perturbed(current, response_mask, 0.25, 2)


def test_import_without_trl_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # makes `import trl` fail as if it were not installed
    monkeypatch.delitem(sys.modules, "minnat.integrations.trl")
    with pytest.raises(ImportError, match=r'pip install "minnat\[trl\]"'):
        importlib.import_module("minnat.integrations.trl")
    monkeypatch.undo()
    importlib.import_module("minnat.integrations.trl")


@pytest.mark.parametrize("loss_type,extra", [(name, {}) for name in SUPPORTED_LOSS_TYPES] +
                         [("dapo", {"use_bias_correction_kl": False, "delta": 1.3, "epsilon_high": 0.28})])
def test_full_equals_stock_grpo_trainer(embedded, rollout, loss_type, extra):
    model, tokenizer = embedded
    batch = (rollout.input_ids, rollout.attention_mask, rollout.response_mask)
    config = dict(loss_type=loss_type, beta=0.1, epsilon=0.1, max_completion_length=batch[2].shape[1], **extra)
    stock_model, nat_model = copy.deepcopy(model), copy.deepcopy(model)
    stock = build_trainer_for_loss(stock_model, tokenizer, nat_method=None, **config)
    nat = build_trainer_for_loss(nat_model, tokenizer, nat_method="full", **config)
    assert type(stock).__name__ == "GRPOTrainer" and isinstance(nat, type(stock))
    old, ref = old_and_ref(nat, nat_model, batch)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.2, -0.2])
    stock_loss, stock_grad = loss_and_grad(stock, stock_model, trl_inputs_from_generate_batch(
        *batch, advantages, old_per_token_logps=old, ref_per_token_logps=ref))
    inputs = trl_inputs_from_generate_batch(*batch, advantages, old_per_token_logps=old, ref_per_token_logps=ref,
                                            trainer=nat)
    assert torch.equal(inputs[KEEP_KEY], batch[2])
    nat_loss, nat_grad = loss_and_grad(nat, nat_model, inputs)
    assert float(nat_loss) == pytest.approx(float(stock_loss), rel=2e-5, abs=1e-7)
    assert (nat_grad - stock_grad).abs().max() <= 2e-5 * stock_grad.abs().max()
    metrics = nat._metrics["train" if nat_model.training else "eval"]
    assert stock_grad.abs().max() > 0 and metrics["kl"][-1] > 0  # not vacuous: the KL term is on
    if loss_type not in ("cispo", "sapo"):
        assert metrics["clip_ratio/region_mean"][-1] > 0  # ...and so is clipping


def enumerate_selections(lengths, columns, method, budget):
    """Every (keep [B, T], probability) of a URS or RPC draw, with π [B, T]."""
    mask = torch.arange(columns).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if method == "rpc":
        pi = rpc_inclusion_probabilities(torch.tensor(lengths), columns, budget, dtype=torch.float64)
        choices = [list(zip(range(1, L + 1), rpc_cut_probabilities(L, budget).tolist())) for L in lengths]
        for combo in itertools.product(*choices):
            cuts = torch.tensor([cut for cut, _ in combo])
            yield torch.arange(columns).unsqueeze(0) < cuts.unsqueeze(1), math.prod(p for _, p in combo), pi
        return
    pi = mask.double() * budget
    positions = mask.nonzero().tolist()
    for bits in itertools.product([0, 1], repeat=len(positions)):
        keep = torch.zeros_like(mask)
        for (row, column), bit in zip(positions, bits):
            keep[row, column] = bool(bit)
        yield keep, budget ** sum(bits) * (1 - budget) ** (len(bits) - sum(bits)), pi


@pytest.mark.parametrize("method,budget,lengths", [("rpc", 0.5, [4, 2, 3]), ("urs", 0.4, [3, 2, 1])])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo"])
def test_expectation_over_every_selection_is_the_full_loss_and_gradient(embedded, method, budget, lengths,
                                                                        loss_type):
    model, tokenizer = embedded
    model = copy.deepcopy(model)
    batch = make_batch(prompt_lengths=[3, 5, 2], response_lengths=lengths, vocab_size=100, seed=3)
    trainer = build_trainer_for_loss(model, tokenizer, nat_method=method, nat_budget=budget, loss_type=loss_type,
                                     beta=0.2, epsilon=0.1, max_completion_length=batch[2].shape[1])
    old, ref = old_and_ref(trainer, model, batch)
    base = trl_inputs_from_generate_batch(*batch, torch.tensor([1.3, -0.8, 0.6]), old_per_token_logps=old,
                                          ref_per_token_logps=ref)
    full_loss, full_grad = loss_and_grad(trainer, model, base)  # no selection stored: every token
    expected_loss, expected_grad, total = 0.0, torch.zeros_like(full_grad), 0.0
    for keep, probability, pi in enumerate_selections(lengths, batch[2].shape[1], method, budget):
        loss, grad = loss_and_grad(trainer, model, {**base, KEEP_KEY: keep, INCLUSION_KEY: pi.float()})
        expected_loss, expected_grad, total = expected_loss + probability * loss, expected_grad + probability * grad, \
            total + probability
    assert total == pytest.approx(1.0, abs=1e-12)
    assert float(expected_loss) == pytest.approx(float(full_loss), rel=1e-6)
    # Qwen3's RMSNorm computes in float32 even for a float64 model: agreement at float32 rounding.
    assert (expected_grad - full_grad).abs().max() <= 1e-5 * full_grad.abs().max()
    assert full_grad.abs().max() > 0


def test_rpc_gives_the_model_at_most_six_tenths_of_the_tokens_of_full(embedded):
    model, tokenizer = embedded
    model = copy.deepcopy(model).float()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 97, (16,), generator=generator).tolist()  # ragged responses, short prompts
    batch = make_batch(prompt_lengths=torch.randint(5, 15, (16,), generator=generator).tolist(),
                       response_lengths=lengths, vocab_size=100, seed=4)
    advantages = torch.randn(16, generator=generator)
    seen = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
    try:
        tokens = {}
        for name, method in [("stock", None), ("full", "full"), ("rpc", "rpc")]:
            trainer = build_trainer_for_loss(model, tokenizer, nat_method=method, nat_budget=0.5)
            inputs = trl_inputs_from_generate_batch(*batch, advantages, trainer=trainer)
            seen.clear()
            trainer._compute_loss(model, inputs).backward()
            tokens[name] = sum(seen)
    finally:
        hook.remove()
    assert tokens["stock"] == 16 * batch[0].shape[1]  # TRL pads every row to the longest
    assert tokens["rpc"] <= 0.6 * tokens["stock"], tokens
    # Not only less padding: against minnat's own length-grouped full pass, the cut still saves ~35%
    # (the prompts, ~15% of these rows, are never cut).
    assert tokens["rpc"] <= 0.7 * tokens["full"], tokens


def small_config(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "trainer"), use_cpu=True, bf16=False, nat_method="rpc",
                    nat_budget=0.5, max_steps=1, per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=48, learning_rate=1e-4, top_k=0, logging_steps=1, save_strategy="no",
                    report_to="none", gradient_checkpointing=False, disable_tqdm=True)
    return NATGRPOConfig(**{**settings, **overrides})


def test_old_and_reference_logprobs_come_from_the_same_shortened_inputs(tmp_path):
    model, tokenizer = load_model("embedded")
    task = get_task("arithmetic", num_train=16, num_eval=4)
    trainer = NATGRPOTrainer(model=model, reward_funcs=task_reward(task), train_dataset=task_dataset(task),
                             args=small_config(tmp_path, num_iterations=2, beta=0.1,
                                               nat_micro_batch_overhead_tokens=0),  # no padding: exact counts
                             processing_class=tokenizer)
    assert trainer.ref_model is not None
    trainer.model.train()  # as inside trainer.train(); in eval mode the batch is scored on every token
    scored_tokens = {"policy": [], "reference": []}
    hooks = [network.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs, name=name: scored_tokens[name].append(kwargs["input_ids"].numel())
        if kwargs.get("use_cache") is False else None, with_kwargs=True)  # generate() uses the cache
        for name, network in [("policy", model), ("reference", trainer.ref_model)]]
    try:
        output = trainer._generate_and_score_completions(list(task_dataset(task).select(range(8))))
    finally:
        for hook in hooks:
            hook.remove()
    keep, mask = output[KEEP_KEY], output["completion_mask"].bool()
    assert torch.equal(output[INCLUSION_KEY] > 0, mask) and 0 < keep.sum() < mask.sum()
    for key in ("old_per_token_logps", "ref_per_token_logps"):
        assert torch.isfinite(output[key][keep]).all() and torch.isnan(output[key][mask & ~keep]).all()
    # The old policy is the current one before the first update, so log π_old equals a fresh log π_θ there.
    current = current_logprobs(trainer, model, torch.cat([output["prompt_ids"], output["completion_ids"]], 1),
                               torch.cat([output["prompt_mask"], output["completion_mask"]], 1), mask)
    assert torch.allclose(output["old_per_token_logps"][keep], current[keep], atol=1e-5)
    # Both passes saw prompt + kept prefix only, the same tokens; TRL's would see B × (P + T) each.
    full_tokens = mask.shape[0] * (output["prompt_ids"].shape[1] + mask.shape[1])
    assert sum(scored_tokens["policy"]) == sum(scored_tokens["reference"]) > 0
    assert sum(scored_tokens["policy"]) < 0.8 * full_tokens, (scored_tokens, full_tokens)


def test_short_training_raises_the_reward_on_the_embedded_task(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_model("embedded")
    task = get_task("arithmetic", num_train=2000, num_eval=48)

    def held_out_reward():
        return generate(model, tokenizer, task, task.eval_examples, max_new_tokens=96, greedy=True).rewards.mean()

    before = float(held_out_reward())
    args = small_config(tmp_path, max_steps=10, per_device_train_batch_size=64, num_generations=8,
                        max_completion_length=96)
    trainer = NATGRPOTrainer(model=model, reward_funcs=task_reward(task), args=args,
                             train_dataset=task_dataset(task), processing_class=tokenizer)
    trainer.train()
    after = float(held_out_reward())
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logged) == 10
    assert 0.35 < sum(entry["nat/kept_fraction"] for entry in logged) / len(logged) < 0.65
    assert after >= before + 0.4, (before, after)  # the embedded run flips the carry habit within ~6 steps


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer, task_dataset, task_reward
    from minnat.models import load_model
    from minnat.tasks import get_task

    out = Path(sys.argv[1])
    model, tokenizer = load_model("embedded")
    task = get_task("arithmetic", num_train=64, num_eval=4)
    args = NATGRPOConfig(output_dir=str(out / "trainer"), use_cpu=True, bf16=False, nat_method="rpc",
                         max_steps=2, num_iterations=2, beta=0.05, per_device_train_batch_size=16, num_generations=8,
                         temperature=1.5, max_completion_length=64, learning_rate=1e-3, save_strategy="no",
                         report_to="none", gradient_checkpointing=False, disable_tqdm=True)
    correct = task_reward(task)
    def reward(completions, **columns):  # + a length term, so that no group has all-equal rewards
        return [r + len(c) / 1000 for r, c in zip(correct(completions, **columns), completions)]
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward, args=args,
                             train_dataset=task_dataset(task), processing_class=tokenizer)
    questions, generate_and_score = [], trainer._generate_and_score_completions
    def spy(inputs):
        questions.extend(row["question"] for row in inputs)
        return generate_and_score(inputs)
    trainer._generate_and_score_completions = spy
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer.train()
    final = torch.cat([p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
    torch.save({"initial": initial, "final": final, "questions": questions,
                "world": trainer.accelerator.num_processes},
               out / f"rank{trainer.accelerator.process_index}.pt")
""")


def test_two_process_ddp_run_on_cpu_ends_with_identical_parameters(tmp_path):
    script = tmp_path / "train_two_ranks.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
                             str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=environment, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert set(ranks[0]["questions"]).isdisjoint(ranks[1]["questions"])  # each rank trained on its own prompts
    assert (ranks[0]["final"] - ranks[0]["initial"]).abs().max() > 0  # training moved the weights
    assert torch.equal(ranks[0]["final"], ranks[1]["final"])  # ...identically on both ranks (gradients synced)


@pytest.mark.parametrize("setting,phrase", [
    ({"importance_sampling_level": "sequence"}, "importance_sampling_level='token'"),
    ({"loss_type": "vespo"}, "loss_type='vespo' is not supported"),
    ({"top_entropy_quantile": 0.2}, "set top_entropy_quantile=1.0"),
    ({"entropy_coef": 0.01}, "Set entropy_coef=0.0"),
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold=None"),
    ({"use_adaptive_entropy": True}, "use_adaptive_entropy=False"),
])
def test_unsupported_settings_are_refused_with_the_reason(tmp_path, embedded, setting, phrase):
    model, tokenizer = embedded
    with pytest.raises(ValueError, match=r"NATGRPOTrainer cannot run these settings: .*" + phrase.replace("(", r"\(")):
        NATGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                       args=small_config(tmp_path, **setting), processing_class=tokenizer,
                       train_dataset=task_dataset(get_task("arithmetic", num_train=4, num_eval=1)))


def test_bad_nat_settings_and_a_plain_grpo_config_are_clear_errors(tmp_path, embedded):
    from trl import GRPOConfig
    with pytest.raises(ValueError, match="nat_method must be one of"):
        small_config(tmp_path, nat_method="top-k")
    with pytest.raises(ValueError, match="budget ρ must be"):
        small_config(tmp_path, nat_budget=0.0)
    with pytest.raises(TypeError, match="needs a NATGRPOConfig"):
        NATGRPOTrainer(model=embedded[0], reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                       args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False))
    with pytest.raises(ValueError, match="must equal response_mask"):
        input_ids, attention_mask, response_mask = make_batch([2, 3], [3, 1], vocab_size=100)
        trl_inputs_from_generate_batch(input_ids, attention_mask * 0, response_mask, torch.zeros(2))


def test_example_script_trains_through_trl(tmp_path):
    spec = importlib.util.spec_from_file_location("grpo_nat_example", REPO / "examples" / "trl" / "grpo_nat.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summary = example.main(["--steps", "2", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens",
                            "48", "--out", str(tmp_path / "run")])
    assert summary["steps"] == 2 and summary["method"] == "rpc"
    assert (tmp_path / "run" / "summary.json").is_file()
    assert 0.0 < summary["mean_kept_fraction"] < 1.0


# --- the loss entry: whatever path TRL takes, NAT's loss runs (or the trainer refuses) -------------------------

def count_norm_calls(model, counter):
    """Stand-in for layer kernels (Liger's, or the Hub's `kernelize`): every RMSNorm's forward is replaced, in
    place, by an equal computation that counts its calls — what those kernels do to the decoder's layers."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and "forward" not in module.__dict__:
            def forward(hidden_states, original=module.forward):
                counter[0] += 1
                return original(hidden_states)
            module.forward = forward


# Each GRPOConfig setting of LOSS_PATH_SETTINGS that NAT runs with, as TRL's training step sees it.
NAT_LOSS_PATH_CASES = {
    "loss_type": {"loss_type": "grpo"}, "beta": {"beta": 0.05},
    "use_bias_correction_kl": {"beta": 0.05, "use_bias_correction_kl": False}, "delta": {"delta": 1.5},
    "num_iterations": {"num_iterations": 2}, "cast_lm_head_to_fp32": {"cast_lm_head_to_fp32": True},
    "use_liger_kernel": {"use_liger_kernel": True},
    "liger_kernel_config": {"use_liger_kernel": True, "liger_kernel_config": {"rms_norm": True}},
    "model_init_kwargs": {"model_init_kwargs": {"use_kernels": True}},
    "top_entropy_quantile": {"top_entropy_quantile": 1.0}, "importance_sampling_level": {},
    "entropy_coef": {}, "use_adaptive_entropy": {}, "off_policy_mask_threshold": {},
}
REFUSED_LOSS_PATH_CASES = {  # the refusal sentences are checked in test_unsupported_settings_are_refused...
    "loss_type", "importance_sampling_level", "top_entropy_quantile", "entropy_coef", "use_adaptive_entropy",
    "off_policy_mask_threshold"}
NEEDS_A_GPU = {"use_vllm"}


def test_every_loss_path_setting_is_covered_by_a_nat_test_or_refused():
    from minnat.integrations.trl import LOSS_PATH_SETTINGS
    covered = set(NAT_LOSS_PATH_CASES) | REFUSED_LOSS_PATH_CASES | NEEDS_A_GPU
    assert set(LOSS_PATH_SETTINGS) == covered, set(LOSS_PATH_SETTINGS) ^ covered


@pytest.mark.parametrize("name", ["default"] + sorted(k for k, v in NAT_LOSS_PATH_CASES.items() if v))
def test_trls_training_step_reaches_nats_loss(tmp_path, monkeypatch, name):
    """TRL's own loop (`Trainer.train` → `training_step` → `compute_loss`) under each setting runs NAT's loss."""
    import transformers
    import transformers.trainer
    settings = NAT_LOSS_PATH_CASES.get(name, {})
    norm_calls = [0]
    # Liger and the Hub kernels need a GPU and a download: their stand-ins patch the layers the same way.
    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel",
                        lambda model, config: count_norm_calls(model, norm_calls))
    original_set_use_kernels = transformers.PreTrainedModel.set_use_kernels

    def set_use_kernels(self, use_kernels, kernel_config=None, mode=None):
        if not use_kernels:
            return original_set_use_kernels(self, use_kernels, kernel_config)
        self._use_kernels = True
        count_norm_calls(self, norm_calls)

    monkeypatch.setattr(transformers.PreTrainedModel, "set_use_kernels", set_use_kernels)
    if hasattr(transformers.PreTrainedModel, "kernelize"):  # transformers < 5.11 calls kernelize() instead
        monkeypatch.setattr(transformers.PreTrainedModel, "kernelize",
                            lambda self, mode=None: count_norm_calls(self, norm_calls))
    model, tokenizer = load_model("embedded")
    if "model_init_kwargs" in settings:  # TRL loads the model itself, with these kwargs
        model = str(REPO / "minnat" / "assets" / "tiny-qwen3")
    task = get_task("arithmetic", num_train=8, num_eval=1)
    trainer = NATGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [len(c) / 10 for c in completions],
                             args=small_config(tmp_path, max_completion_length=16, **settings),
                             train_dataset=task_dataset(task), processing_class=tokenizer)
    trainer.train()  # one step: Trainer.train → training_step → compute_loss, as in any run
    assert trainer.nat_loss_calls == 1
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 1 and math.isfinite(logged[0]["loss"])
    assert 0.0 < logged[0]["nat/kept_fraction"] < 1.0  # NAT's selection, not every token
    if name in ("use_liger_kernel", "liger_kernel_config", "model_init_kwargs"):
        assert norm_calls[0] > 0  # NAT's log-probs ran through the patched layers


def test_a_training_step_that_bypasses_nats_loss_is_refused(tmp_path):
    """A TRL whose step computed its own (full-token) loss instead of NAT's must fail, not train."""
    from trl import GRPOTrainer
    model, tokenizer = load_model("embedded")
    task = get_task("arithmetic", num_train=8, num_eval=1)
    trainer = NATGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [len(c) / 10 for c in completions],
                             args=small_config(tmp_path, max_completion_length=16), train_dataset=task_dataset(task),
                             processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.compute_loss = lambda model, inputs, **kw: GRPOTrainer._compute_loss(trainer, model, inputs)
    with pytest.raises(RuntimeError, match="refuses to fall back to full-token training"):
        trainer.training_step(trainer.model, list(task_dataset(task).select(range(8))), None)


# --- stratified cuts in TRL -----------------------------------------------------------------------------------

def test_nat_cut_sampling_defaults_to_the_trainers_and_draws_minnats_exact_stratified_law(tmp_path, embedded):
    from minnat.nat import stratified_cut_law
    from minnat.train import TrainConfig
    assert NATGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).nat_cut_sampling == \
        TrainConfig().cut_sampling == "stratified"
    with pytest.raises(ValueError, match="nat_cut_sampling must be one of"):
        small_config(tmp_path, nat_cut_sampling="systematic")
    model, tokenizer = embedded
    trainer = build_trainer_for_loss(copy.deepcopy(model), tokenizer, nat_method="rpc", nat_budget=0.5)
    assert trainer.args.nat_cut_sampling == "stratified"
    lengths = torch.tensor([5, 2, 4, 3])
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).long()
    # The trainer's draw is minnat's stratified draw over the whole (generation) batch, from its generator...
    trainer.nat_generator.manual_seed(11)
    drawn = trainer.draw_nat_selection(mask)
    expected = select_tokens(mask.bool(), "rpc", 0.5, torch.Generator().manual_seed(11), cut_sampling="stratified")
    assert torch.equal(drawn.keep, expected.keep) and drawn.cut_sampling == "stratified"
    # ...so each row's cut has exactly RPC's law (the exact joint law of the design, summed per row),
    law = stratified_cut_law(lengths, 0.5)
    for row, length in enumerate(lengths.tolist()):
        marginal = torch.zeros(length, dtype=torch.float64)
        for cuts, probability in law:
            marginal[int(cuts[row]) - 1] += probability
        assert torch.allclose(marginal, rpc_cut_probabilities(length, 0.5), atol=1e-12)
    # ...and a Monte Carlo run of the trainer's own draws matches π_t per row.
    keeps = torch.stack([trainer.draw_nat_selection(mask).keep for _ in range(4000)]).double().mean(0)
    pi = rpc_inclusion_probabilities(lengths, 5, 0.5).double()
    assert ((keeps - pi).abs() <= 5 * torch.sqrt(pi * (1 - pi) / 4000) + 1e-9).all()
