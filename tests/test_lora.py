"""LoRA (peft) with NAT: exactness on the adapters, π_ref = the base with adapters off, the trainer, checkpoints, TRL.

Every model is built here (tiny random Qwen3s, the embedded one); nothing is downloaded.
"""
import copy
import itertools
import json
import math

import pytest
import torch

pytest.importorskip("peft", reason='LoRA needs `pip install "minnat[lora]"`')

from conftest import build_tiny_qwen3, make_batch  # noqa: E402
from minnat import checkpoint as ckpt  # noqa: E402
from minnat import lora  # noqa: E402
from minnat.grpo import policy_loss  # noqa: E402
from minnat.logprobs import response_logprobs  # noqa: E402
from minnat.models import architecture, load_model  # noqa: E402
from minnat.nat import rpc_cut_probabilities, rpc_inclusion_probabilities, selection_from_keep  # noqa: E402
from minnat.train import TrainConfig, Trainer, main, parse_args  # noqa: E402


def randomise_adapters(model, seed=0, scale=0.3):
    """peft starts B at 0 (the adapted model is the base); random A and B make every check non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lora.trainable_parameters(model):
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


@pytest.fixture(scope="module")
def adapted():
    """(base copy, LoRA model over an identical base) in float64, adapters random."""
    base = build_tiny_qwen3()
    model = lora.add_lora(copy.deepcopy(base), rank=2, alpha=4.0)
    randomise_adapters(model)
    return base, model


def test_adapters_off_give_exactly_the_base_models_logprobs(adapted):
    base, model = adapted
    input_ids, attention_mask, response_mask = make_batch([3, 5], [4, 2], response_columns=5, seed=1)
    reference = response_logprobs(base, input_ids, attention_mask, response_mask)
    with lora.adapters_disabled(model):
        disabled = response_logprobs(model, input_ids, attention_mask, response_mask)
    enabled = response_logprobs(model, input_ids, attention_mask, response_mask)
    assert torch.equal(disabled, reference)
    assert (enabled - reference).abs().max() > 1e-3  # the adapters do change the policy
    fresh = lora.add_lora(copy.deepcopy(base), rank=2)  # B = 0: a fresh adapter is the base model
    assert torch.equal(response_logprobs(fresh, input_ids, attention_mask, response_mask), reference)
    trainable = lora.trainable_parameters(model)
    assert trainable and all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def adapter_loss_and_grad(model, batch, old, ref, advantages, selection):
    input_ids, attention_mask, response_mask = batch
    parameters = lora.trainable_parameters(model)
    logprobs = response_logprobs(model, input_ids, attention_mask, response_mask, selection)
    loss = policy_loss(logprobs, old, advantages, response_mask,
                       weights=None if selection is None else selection.weights.double(), ref_logprobs=ref,
                       clip_eps=0.1, kl_coef=0.3)
    if not loss.requires_grad:
        return loss.detach(), torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64)
    gradients = torch.autograd.grad(loss, parameters)
    return loss.detach(), torch.cat([g.flatten() for g in gradients])


@pytest.mark.parametrize("method,budget", [("rpc", 0.5), ("urs", 0.4)])
def test_nat_gradient_on_the_adapters_averages_exactly_to_full_grpos(adapted, method, budget):
    """E over every selection of ∇_{A,B} L_NAT = ∇_{A,B} L_full, with the KL to the base (adapters off)."""
    _, model = adapted
    lengths = [4, 2, 3] if method == "rpc" else [3, 2, 1]
    batch = make_batch([3, 5, 2], lengths, seed=3)
    input_ids, attention_mask, response_mask = batch
    with torch.no_grad():
        current = response_logprobs(model, *batch).double()
        with lora.adapters_disabled(model):
            ref = response_logprobs(model, *batch).double()
    old = (current + 0.25 * torch.randn(current.shape, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64)) * response_mask
    advantages = torch.tensor([1.3, -0.8, 0.6], dtype=torch.float64)
    full_loss, full_grad = adapter_loss_and_grad(model, batch, old, ref, advantages, None)
    columns = response_mask.shape[1]
    if method == "rpc":
        pi = rpc_inclusion_probabilities(torch.tensor(lengths), columns, budget, dtype=torch.float64)
        outcomes = []
        for combo in itertools.product(*[list(zip(range(1, n + 1), rpc_cut_probabilities(n, budget).tolist()))
                                         for n in lengths]):
            cuts = torch.tensor([cut for cut, _ in combo])
            outcomes.append((torch.arange(columns).unsqueeze(0) < cuts.unsqueeze(1), math.prod(p for _, p in combo)))
    else:
        pi = response_mask.double() * budget
        positions = response_mask.nonzero().tolist()
        outcomes = []
        for bits in itertools.product([0, 1], repeat=len(positions)):
            keep = torch.zeros_like(response_mask)
            for (row, column), bit in zip(positions, bits):
                keep[row, column] = bool(bit)
            outcomes.append((keep, budget ** sum(bits) * (1 - budget) ** (len(bits) - sum(bits))))
    expected_loss, expected_grad = 0.0, torch.zeros_like(full_grad)
    for keep, probability in outcomes:
        loss, grad = adapter_loss_and_grad(model, batch, old, ref, advantages,
                                           selection_from_keep(keep, pi, method, budget))
        expected_loss, expected_grad = expected_loss + probability * loss, expected_grad + probability * grad
    assert sum(p for _, p in outcomes) == pytest.approx(1.0, abs=1e-12)
    assert float(expected_loss) == pytest.approx(float(full_loss), rel=1e-6)
    # Qwen3's RMSNorm computes in float32 even for a float64 model: agreement at float32 rounding.
    assert (expected_grad - full_grad).abs().max() <= 1e-6 * full_grad.abs().max()
    a_and_b = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in a_and_b) and any("lora_B" in name for name in a_and_b)
    assert full_grad.abs().max() > 0


def test_lora_flags_are_checked_with_sentences_that_say_what_to_do():
    assert TrainConfig().lora_rank == 0  # the default run is full fine-tuning, unchanged
    with pytest.raises(ValueError, match="without --lora-rank"):
        TrainConfig(lora_alpha=16.0).validate()
    with pytest.raises(ValueError, match="LM head"):
        TrainConfig(lora_rank=4, lora_targets="q_proj,lm_head").validate()
    with pytest.raises(ValueError, match="lora_rank must be"):
        TrainConfig(lora_rank=-1).validate()
    with pytest.raises(ValueError, match="linear layers are"):
        lora.add_lora(build_tiny_qwen3(), rank=2, targets=["no_such_proj"])


def test_lora_without_peft_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as if it were not installed
    with pytest.raises(ValueError, match=r'pip install "minnat\[lora\]"'):
        TrainConfig(lora_rank=4).validate()
    TrainConfig().validate()  # the default run needs no peft


def small_run(out, *extra):
    return ["--task", "arithmetic", "--steps", "2", "--batch-size", "16", "--group-size", "4", "--num-eval", "4",
            "--eval-batch-size", "4", "--eval-every", "0", "--max-new-tokens", "72", "--num-threads", "1",
            "--save-every", "1", "--learning-rate", "5e-3", "--warmup-steps", "0", "--seed", "2",
            "--out", str(out), *extra]


@pytest.mark.parametrize("method", ["full", "urs", "rpc", "rpc-unweighted", "top-entropy"])
def test_trainer_trains_only_the_adapters_with_the_base_as_reference(tmp_path, method):
    config = dict(model="embedded", task="arithmetic", method=method, steps=1, batch_size=16, group_size=4,
                  num_eval=4, eval_batch_size=4, max_new_tokens=72, num_threads=1, learning_rate=5e-3,
                  warmup_steps=0, kl_coef=0.1, lora_rank=4, seed=2, out=str(tmp_path / method))
    trainer = Trainer(TrainConfig(**config), progress=False)
    assert trainer.reference_model is None and lora.is_lora_model(trainer.model)  # no second copy of the weights
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    summary = trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all("lora_" in name for name in moved), "only the adapters train"
    assert summary["trainable_parameters"] < 0.2 * summary["parameters"]
    record = ckpt.read_json_lines(tmp_path / method / "metrics.jsonl")[-1]
    assert record["loss"] is not None and math.isfinite(record["grad_norm"])


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("rollout_seconds", "update_seconds")} for r in records]


def test_lora_checkpoint_holds_the_adapter_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(small_run(straight, "--lora-rank", "4", "--kl-coef", "0.1")) == 0
    # Stop after step 1 as a killed run would have (its checkpoint is written), then resume it.
    Trainer(parse_args(small_run(resumed, "--lora-rank", "4", "--kl-coef", "0.1")), progress=False).train(
        should_stop=lambda: True)
    assert [r["step"] for r in ckpt.read_json_lines(resumed / "metrics.jsonl")] == [0, 1]
    assert main(["--resume", str(resumed)]) == 0
    assert comparable(ckpt.read_json_lines(resumed / "metrics.jsonl")) == \
        comparable(ckpt.read_json_lines(straight / "metrics.jsonl"))
    from safetensors.torch import load_file
    final = [load_file(run / "checkpoints" / "step-000002" / "adapter_model.safetensors") for run in (straight, resumed)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    checkpoint = ckpt.latest_checkpoint(straight)
    assert not (checkpoint / "model.safetensors").exists()  # the adapter only, not the base weights
    assert json.loads((checkpoint / lora.BASE_MODEL_FILE).read_text()) == {"model": "embedded", "task": "arithmetic"}


def test_a_lora_checkpoint_loads_merged_for_evaluation_and_the_explorer(tmp_path):
    from minnat.explorer.library import ModelLibrary

    assert main(small_run(tmp_path / "run", "--lora-rank", "4", "--steps", "1")) == 0
    checkpoint = ckpt.latest_checkpoint(tmp_path / "run")
    kept, _ = load_model(str(checkpoint), keep_adapter=True)
    merged, tokenizer = load_model(str(checkpoint))
    assert lora.is_lora_model(kept) and not lora.is_lora_model(merged)
    randomise_adapters(kept, seed=4, scale=0.05)  # so that merging has something to fold in
    kept.save_pretrained(checkpoint)
    merged, _ = load_model(str(checkpoint))
    batch = make_batch([3, 4], [5, 3], vocab_size=len(tokenizer), seed=0)
    with torch.no_grad():
        adapted = response_logprobs(kept, *batch)
        torch.testing.assert_close(response_logprobs(merged, *batch), adapted, rtol=0, atol=1e-5)
        with lora.adapters_disabled(kept):
            assert (response_logprobs(kept, *batch) - adapted).abs().max() > 1e-3
    assert architecture(str(checkpoint)) == architecture("embedded", "arithmetic")
    loaded = ModelLibrary(task="arithmetic").get(str(checkpoint))
    assert not lora.is_lora_model(loaded.model) and loaded.parameter_count == sum(p.numel() for p in merged.parameters())


# ----------------------------------------------------------------------------- TRL's peft_config
def test_trl_full_path_with_lora_equals_stock_trl_and_rpc_gives_the_model_fewer_tokens():
    pytest.importorskip("trl", reason='the TRL integration needs `pip install "minnat[trl]"`')
    from minnat.integrations.trl import build_trainer_for_loss, trl_inputs_from_generate_batch

    base, tokenizer = load_model("embedded", task="arithmetic")
    base = base.double()
    peft_config = lora.lora_config(4, 8.0, lora.ALL_LINEAR)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 97, (16,), generator=generator).tolist()  # ragged responses, short prompts
    batch = make_batch(torch.randint(5, 15, (16,), generator=generator).tolist(), lengths, vocab_size=90, seed=4)
    advantages = torch.randn(16, generator=generator)
    trainers, models = {}, {}
    for name, method in [("stock", None), ("full", "full"), ("rpc", "rpc")]:
        models[name] = copy.deepcopy(base)  # TRL wraps the model it is given in place
        trainers[name] = build_trainer_for_loss(models[name], tokenizer, nat_method=method, nat_budget=0.5,
                                                peft_config=copy.deepcopy(peft_config), loss_type="grpo", beta=0.1,
                                                max_completion_length=batch[2].shape[1])
    wrapped = {name: trainer.model for name, trainer in trainers.items()}
    assert all(lora.is_lora_model(model) for model in wrapped.values())
    randomise_adapters(wrapped["stock"], seed=1, scale=0.05)
    for name in ("full", "rpc"):
        wrapped[name].load_state_dict(wrapped["stock"].state_dict())
    with torch.no_grad(), lora.adapters_disabled(wrapped["full"]):
        ref = response_logprobs(wrapped["full"], *batch).float()
    results, tokens = {}, {}
    for name, trainer in trainers.items():
        inputs = trl_inputs_from_generate_batch(*batch, advantages, ref_per_token_logps=ref,
                                                trainer=trainer if name != "stock" else None)
        seen = []
        hook = wrapped[name].get_decoder().register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
        try:
            loss = trainer._compute_loss(wrapped[name], inputs)
            gradients = torch.autograd.grad(loss, lora.trainable_parameters(wrapped[name]))
        finally:
            hook.remove()
        results[name] = (float(loss), torch.cat([g.flatten() for g in gradients]))
        tokens[name] = sum(seen)
    (stock_loss, stock_grad), (full_loss, full_grad) = results["stock"], results["full"]
    assert full_loss == pytest.approx(stock_loss, rel=2e-5, abs=1e-7)
    assert (full_grad - stock_grad).abs().max() <= 2e-5 * stock_grad.abs().max() and stock_grad.abs().max() > 0
    # RPC's shortened passes survive LoRA: as without it (tests/test_trl_integration.py), ≤ 0.6× stock TRL's tokens
    assert tokens["stock"] == 16 * batch[0].shape[1] and tokens["rpc"] <= 0.6 * tokens["stock"], tokens
    assert tokens["rpc"] <= 0.7 * tokens["full"], tokens


def test_nat_grpo_trainer_trains_the_adapters_through_trls_peft_config(tmp_path):
    pytest.importorskip("trl", reason='the TRL integration needs `pip install "minnat[trl]"`')
    from minnat.integrations.trl import NATGRPOConfig, NATGRPOTrainer, task_dataset, task_reward
    from minnat.tasks import get_task

    torch.manual_seed(0)
    model, tokenizer = load_model("embedded", task="arithmetic")
    task = get_task("arithmetic", num_train=32, num_eval=4)
    correct = task_reward(task)

    def reward(completions, **columns):  # + a length term, so that no group has all-equal rewards
        return [r + len(c) / 1000 for r, c in zip(correct(completions, **columns), completions)]

    args = NATGRPOConfig(output_dir=str(tmp_path / "trainer"), use_cpu=True, bf16=False, nat_method="rpc",
                         nat_budget=0.5, max_steps=2, beta=0.1, per_device_train_batch_size=8, num_generations=4,
                         max_completion_length=96, learning_rate=1e-2, top_k=0, logging_steps=1, save_strategy="no",
                         report_to="none", gradient_checkpointing=False, disable_tqdm=True)
    trainer = NATGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=task_dataset(task),
                             processing_class=tokenizer, peft_config=lora.lora_config(4, 8.0, lora.ALL_LINEAR))
    assert lora.is_lora_model(trainer.model) and trainer.ref_model is None  # reference = adapters disabled
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all("lora_" in name for name in moved)
    logged = [entry for entry in trainer.state.log_history if "nat/kept_fraction" in entry]
    assert len(logged) == 2 and all(0 < entry["nat/kept_fraction"] < 1 for entry in logged)
    with pytest.raises(ValueError, match="lm_head"):
        NATGRPOTrainer(model=load_model("embedded")[0], reward_funcs=reward, args=args,
                       train_dataset=task_dataset(task), processing_class=tokenizer,
                       peft_config=lora.lora_config(4, 8.0, ["q_proj"]).__class__(
                           r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))



# ----------------------------------------------------------------------------- the bench's LoRA mode
def test_adapter_count_matches_peft_and_the_arithmetic_matches_the_saved_bytes():
    from minnat import bench_lora

    model = build_tiny_qwen3(dtype=torch.float32)
    wrapped = lora.add_lora(copy.deepcopy(model), rank=3)
    assert bench_lora.adapter_parameters(model.config, 3) == sum(p.numel() for p in lora.trainable_parameters(wrapped))
    assert bench_lora.model_parameters(model.config) == sum(p.numel() for p in model.parameters())
    # Per-layer bytes from 1- and 2-layer bodies predict a 3-layer body's saved bytes (every layer is the same).
    config = bench_lora.replace_config(model.config, num_hidden_layers=3)
    for rank, checkpointing in [(0, False), (2, False), (0, True)]:
        profile = bench_lora.layer_activation_bytes(model.config, dtype=torch.float32, lora_rank=rank,
                                                    gradient_checkpointing=checkpointing)
        measured = bench_lora.saved_bytes_per_token(bench_lora.replace_config(config, vocab_size=512), dtype=torch.float32,
                                                    lora_rank=rank, gradient_checkpointing=checkpointing)
        assert 3 * profile["layer"] + profile["rest"] == pytest.approx(measured, rel=1e-9)
        assert profile["layer"] > 0


def test_bench_lora_mode_measures_and_predicts(tmp_path, monkeypatch):
    from minnat import bench, bench_lora, bench_memory

    # The fresh processes cost ~20 s each on a busy 2-core machine; the test measures in this process instead.
    monkeypatch.setattr(bench_lora, "measure_in_fresh_process",
                        lambda spec: bench_memory.measure_in_this_process(json.loads(json.dumps(spec))))
    assert bench.main(["--mode", "lora", "--preset", "tiny", "--batch-size", "3", "--prompt-length", "8",
                       "--response-lengths", "32", "--lora-rank", "4", "--predict-presets", "qwen3-0.6b",
                       "--predict-rows", "2", "--predict-prompt-length", "16", "--predict-response-length", "64",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "lora.json").read_text())
    measured = {row["name"]: row for row in result["measured"]}
    assert len(measured) == 6
    full, rpc = measured["minnat full, every weight"], measured["minnat rpc ρ=0.5, every weight"]
    lora_full = measured["minnat full, LoRA r=4"]
    assert rpc["saved_for_backward_bytes"] < 0.8 * full["saved_for_backward_bytes"]
    assert all(0.9 < row["predicted_over_measured"] < 1.1 for row in measured.values())
    assert lora_full["tokens_to_model"] == full["tokens_to_model"]
    budget = {row["training"]: row for row in result["predicted_budget"]}
    assert budget["lora"]["states_bytes"] < 0.02 * budget["full_ft"]["states_bytes"]
    for row in budget.values():
        assert row["activation_bytes_rpc"] < row["activation_bytes_full"]
        assert row["total_bytes_rpc_gc"] < row["total_bytes_full_gc"]
    markdown = (tmp_path / "lora.md").read_text()
    assert "Predicted GPU budget" in markdown and "qwen3-0.6b" in markdown
    assert bench.main(["--mode", "lora", "--predict-presets", "qwen3-70b", "--out", str(tmp_path)]) == 2
