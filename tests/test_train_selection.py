"""The trainer's selection flags: the biased contrasts, stratified cuts and a per-update token budget."""
import json

import pytest

from minnat import checkpoint as ckpt
from minnat.train import Trainer, TrainConfig, main, parse_args


def quick(out, *extra):
    return ["--task", "arithmetic", "--max-new-tokens", "96", "--steps", "2", "--batch-size", "16", "--group-size", "4", "--num-eval", "4", "--eval-every", "0",
            "--save-every", "100", "--num-threads", "1", "--out", str(out), *extra]


@pytest.mark.parametrize("method", ["rpc-unweighted", "top-entropy"])
def test_contrasts_train_through_the_same_loop(tmp_path, method, capsys):
    out = tmp_path / method
    assert main(quick(out, "--method", method, "--budget", "0.3", "--cut-sampling", "stratified")) == 0
    records = [r for r in ckpt.read_json_lines(out / "metrics.jsonl") if r["step"] > 0]
    assert len(records) == 2
    for record in records:
        assert record["max_ht_weight"] == 1.0  # weight 1 on every kept token: no 1/π_t
        assert 0 < record["response_tokens_used"] < record["response_tokens_generated"]
        if method == "top-entropy":  # TRL's quantile keeps ρ of the tokens (ties aside)
            assert record["kept_fraction"] == pytest.approx(0.3, abs=0.05)
    assert json.loads((out / "summary.json").read_text())["method"] == method


def test_token_budget_sets_rho_from_the_rollout_lengths(tmp_path):
    trainer = Trainer(parse_args(quick(tmp_path / "budget", "--token-budget", "120", "--cut-sampling", "stratified")),
                      progress=False)
    batch = trainer.questions_for_step(0)
    from minnat.rollout import generate
    rollout = generate(trainer.model, trainer.tokenizer, trainer.task, batch, group_size=4, max_new_tokens=96)
    total = int(rollout.response_mask.sum())
    metrics = trainer.update(rollout)
    assert total > 240 and metrics["budget"] == pytest.approx(120 / total)
    # RPC keeps ρ·L_b to ρ·L_b + 1 tokens per row on average; stratified cuts hold the total near it.
    assert metrics["response_tokens_used"] == pytest.approx(120, abs=16 + 0.15 * 120)


def test_bad_selection_flags_are_clear_errors(tmp_path, capsys):
    assert main(quick(tmp_path / "a", "--method", "full", "--token-budget", "100")) == 2
    assert "--token-budget needs a method" in capsys.readouterr().err
    with pytest.raises(ValueError, match="token_budget must be a whole number"):
        TrainConfig(token_budget=-5).validate()
    with pytest.raises(SystemExit):
        parse_args(["--cut-sampling", "latin"])
    assert parse_args(["--method", "top-entropy"]).method == "top-entropy"
