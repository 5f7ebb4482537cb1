"""The trainer end to end: the GSM8K path on a locally built Qwen3, bad input, checkpoints."""
import errno
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import build_local_chat_model
from minnat import checkpoint as ckpt
from minnat.models import load_model
from minnat.tasks import get_task, write_gsm8k_fixture
from minnat.train import Trainer, TrainConfig, main, parse_args


@pytest.fixture(scope="module")
def gsm8k_setup(tmp_path_factory):
    """A GSM8K-format fixture and a tiny chat-template Qwen3 saved like a hub download (no network)."""
    root = tmp_path_factory.mktemp("gsm8k")
    fixture = write_gsm8k_fixture(root / "data")
    task = get_task("gsm8k", data_path=str(fixture))
    texts = [task.prompt_text(example) + example.solution for example in task.train_examples]
    model_dir = build_local_chat_model(root / "model", texts)
    return fixture, model_dir


def small_args(model_dir, fixture, out, *extra):
    return ["--model", str(model_dir), "--task", "gsm8k", "--data-path", str(fixture), "--steps", "2",
            "--batch-size", "8", "--group-size", "4", "--max-new-tokens", "12", "--num-eval", "4",
            "--out", str(out), *extra]


def test_gsm8k_path_runs_end_to_end_with_chat_template(gsm8k_setup, tmp_path, capsys):
    fixture, model_dir = gsm8k_setup
    out = tmp_path / "run"
    assert main(small_args(model_dir, fixture, out, "--kl-coef", "0.05", "--updates-per-batch", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "budget", "accuracy_before", "accuracy_after", "steps", "wall_seconds",
                "response_tokens_generated", "response_tokens_used"):
        assert key in summary
    assert summary["steps"] == 2 and summary["task"] == "gsm8k"
    assert set(summary["wall_seconds"]) >= {"rollout", "update", "eval"}
    assert 0 < summary["response_tokens_used"] < summary["response_tokens_generated"]
    records = ckpt.read_json_lines(out / "metrics.jsonl")
    assert [record["step"] for record in records] == [0, 1, 2]
    # the chat template was applied to the prompts the model saw
    trainer = Trainer(parse_args(small_args(model_dir, fixture, tmp_path / "other")), progress=False)
    batch = trainer.questions_for_step(0)
    from minnat.rollout import prompt_strings
    assert prompt_strings(trainer.task, trainer.tokenizer, batch)[0].startswith("<|im_start|>user\n")
    # the final checkpoint is a Hugging Face folder that from_pretrained loads
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and (latest / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(latest)
    assert reloaded.config.model_type == "qwen3"
    assert "held-out greedy accuracy" in capsys.readouterr().out


def test_output_folder_with_a_run_is_refused_unless_resume_or_overwrite(gsm8k_setup, tmp_path, capsys):
    fixture, model_dir = gsm8k_setup
    out = tmp_path / "run"
    assert main(small_args(model_dir, fixture, out, "--steps", "1")) == 0
    assert main(small_args(model_dir, fixture, out, "--steps", "1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(small_args(model_dir, fixture, out, "--steps", "1", "--overwrite")) == 0


@pytest.mark.parametrize("args,message", [
    (["--budget", "0"], "budget ρ must be in (0, 1]"),
    (["--budget", "nan"], "budget ρ must be in (0, 1]"),
    (["--group-size", "1"], "group_size must be at least 2"),
    (["--batch-size", "10", "--group-size", "4"], "must be a positive multiple of group_size"),
    (["--task", "chess"], "unknown task"),
    (["--model", "Qwen/Qwen3-0.6B"], "use the embedded default"),
    (["--model", "/nonexistent/folder"], "does not exist"),
])
def test_bad_input_gets_a_clear_sentence(gsm8k_setup, tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network, even if there were one
    fixture, model_dir = gsm8k_setup
    assert main(small_args(model_dir, fixture, tmp_path / "run", *args)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message.lower() in error.lower() and "Traceback" not in error


def test_incomplete_or_foreign_checkpoint_folders_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="incomplete: missing config.json"):
        load_model(str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="does not load pickles"):
        load_model(str(pickled))


def test_unwritable_output_folder_is_explained(gsm8k_setup, tmp_path, capsys):
    fixture, model_dir = gsm8k_setup
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(small_args(model_dir, fixture, blocker / "run")) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_full_disk_during_checkpoint_is_explained(gsm8k_setup, tmp_path, monkeypatch):
    fixture, model_dir = gsm8k_setup
    trainer = Trainer(parse_args(small_args(model_dir, fixture, tmp_path / "run")), progress=False)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ValueError, match="No space left on device. Free disk space"):
        trainer.save()
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*"))  # no half-written folder left


def test_non_finite_update_is_skipped_and_counted(gsm8k_setup, tmp_path, monkeypatch):
    fixture, model_dir = gsm8k_setup
    trainer = Trainer(parse_args(small_args(model_dir, fixture, tmp_path / "run", "--method", "full")),
                      progress=False)
    import minnat.train as train_module
    real_loss = train_module.policy_loss
    monkeypatch.setattr(train_module, "policy_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = train_module.generate(trainer.model, trainer.tokenizer, trainer.task, trainer.questions_for_step(0),
                                  group_size=4, max_new_tokens=8)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    metrics = trainer.update(batch)
    assert trainer.totals["skipped_steps"] == 1 and metrics["loss"] != metrics["loss"]
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_atomic_json_lines_ignore_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    ckpt.append_json_line(path, {"step": 1})
    with open(path, "a") as file:
        file.write('{"step": 2, "loss"')  # what a crash in the middle of a write would leave
    assert ckpt.read_json_lines(path) == [{"step": 1}]
    ckpt.truncate_json_lines(path, lambda record: True)
    assert path.read_text() == '{"step": 1}\n'


def test_config_defaults_are_the_embedded_rpc_half_budget_run():
    config = TrainConfig()
    assert (config.model, config.task, config.method, config.budget) == ("embedded", "long-addition", "rpc", 0.5)
    task = get_task("long-addition")
    longest = max(len(e.solution) + 1 for e in task.train_examples + task.eval_examples)  # characters + EOS
    assert longest <= config.max_new_tokens < longest + 20  # no answer truncated, little waste
    config.validate()


def test_embedded_model_follows_the_task():
    from minnat.assets import TINY_QWEN3_DIR, TINY_QWEN3_LONG_DIR
    from minnat.models import model_location

    assert model_location("embedded", "long-addition") == str(TINY_QWEN3_LONG_DIR)
    assert model_location("embedded", "arithmetic") == str(TINY_QWEN3_DIR)
    assert model_location("embedded") == str(TINY_QWEN3_DIR)  # callers that name no task keep the old model
    assert model_location("some/folder", "long-addition") == "some/folder"


@pytest.mark.parametrize("method", ["rpc", "full"])
def test_default_long_task_runs_a_few_steps_and_counts_full_tokens(tmp_path, capsys, method):
    """The default run (embedded long-addition model) end to end, shrunk to two small steps."""
    out = tmp_path / method
    assert main(["--method", method, "--steps", "2", "--batch-size", "8", "--group-size", "4", "--num-eval", "4",
                 "--eval-batch-size", "4", "--num-threads", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "long-addition" and summary["steps"] == 2
    records = ckpt.read_json_lines(out / "metrics.jsonl")
    assert summary["full_tokens_to_model_in_updates"] == sum(r.get("full_tokens_to_model", 0) for r in records)
    assert summary["tokens_to_model_in_updates"] == sum(r.get("tokens_to_model", 0) for r in records)
    # real long answers were sampled: hundreds of tokens per response on average
    assert min(r["response_length_mean"] for r in records[1:]) > 100
    if method == "full":  # full gives the model exactly what the planner says full gives it
        assert summary["tokens_to_model_in_updates"] == summary["full_tokens_to_model_in_updates"] > 0
    else:
        assert 0 < summary["tokens_to_model_in_updates"] < summary["full_tokens_to_model_in_updates"]
    printed = capsys.readouterr().out
    assert "full-token GRPO would have given it on the same batches" in printed


def test_planned_full_tokens_equal_what_response_logprobs_gives_the_model(tiny_model):
    from conftest import make_batch

    from minnat.logprobs import LogprobStats, planned_tokens_to_model, response_logprobs

    input_ids, attention_mask, response_mask = make_batch([3, 5, 2, 4], [7, 1, 12, 9])
    for overhead in (0, 4, 10_000):
        stats = LogprobStats()
        response_logprobs(tiny_model, input_ids, attention_mask, response_mask, stats=stats,
                          micro_batch_overhead_tokens=overhead)
        assert planned_tokens_to_model(attention_mask, response_mask,
                                       micro_batch_overhead_tokens=overhead) == stats.tokens_to_model


class BrokenTask:
    name = "broken"

    def __init__(self, reward):
        self._reward = reward

    def reward(self, completion, example):
        return self._reward(completion)


def test_reward_function_that_raises_or_returns_nan_is_a_clear_error():
    from minnat.rollout import score

    def raises(completion):
        raise KeyError("answer")

    with pytest.raises(ValueError, match="raised KeyError.*must return a finite number"):
        score(BrokenTask(raises), ["1+1=2"], [None])
    with pytest.raises(ValueError, match="returned nan.*finite"):
        score(BrokenTask(lambda completion: float("nan")), ["1+1=2"], [None])
    assert score(BrokenTask(lambda completion: 1), ["x"], [None]).tolist() == [1.0]


def test_resuming_with_another_architecture_is_refused(gsm8k_setup, tmp_path):
    fixture, model_dir = gsm8k_setup
    trainer = Trainer(parse_args(small_args(model_dir, fixture, tmp_path / "run")), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="is a llama model of another architecture than the qwen3"):
        trainer.check_same_architecture(foreign)
    wider = json.loads((Path(model_dir) / "config.json").read_text()) | {"hidden_size": 64}
    (foreign / "config.json").write_text(json.dumps(wider))
    with pytest.raises(ValueError, match=r"hidden_size 64 \(expected 32\)"):
        trainer.check_same_architecture(foreign)
    trainer.check_same_architecture(Path(model_dir))  # its own architecture passes


def test_all_truncated_responses_warn_with_the_fix(gsm8k_setup, tmp_path, capsys):
    fixture, model_dir = gsm8k_setup
    assert main(small_args(model_dir, fixture, tmp_path / "run", "--steps", "1", "--max-new-tokens", "1",
                           "--mask-truncated")) == 0
    captured = capsys.readouterr()
    assert "hit --max-new-tokens 1 without EOS" in captured.out + captured.err


def test_learning_rate_warms_up_then_decays_linearly_to_zero_or_stays(tmp_path):
    config = TrainConfig(steps=10, warmup_steps=2, out=str(tmp_path / "a"))
    trainer = Trainer.__new__(Trainer)  # the schedule needs only the configuration
    trainer.config = config
    factors = [trainer.learning_rate_factor(step) for step in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[2:] == pytest.approx([(10 - step) / 8 for step in range(2, 10)])  # reaches 1/8, then 0 after
    trainer.config = TrainConfig(steps=10, warmup_steps=2, lr_schedule="constant", out=str(tmp_path / "b"))
    assert [trainer.learning_rate_factor(step) for step in range(2, 10)] == [1.0] * 8
