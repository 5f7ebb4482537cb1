"""The cost benchmark: outputs and their fields, and that every ratio compares with full on the same batch.

Timings are never asserted (they depend on the machine); counts (FLOPs, tokens, bytes) are exact.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_local_chat_model, build_tiny_qwen3
from minnat import bench
from minnat.logprobs import LogprobStats
from minnat.tasks import get_task, write_gsm8k_fixture

ROOT = Path(__file__).resolve().parent.parent
LENGTHS, BUDGETS = [24, 40], [0.5, 1.0]
ROW_FIELDS = {"method", "budget", "response_length", "prompt_length", "batch_size", "time_seconds",
              "time_seconds_min", "time_seconds_max", "time_ratio", "time_ratio_min", "time_ratio_max", "flops",
              "flops_ratio", "activation_bytes", "activation_ratio", "peak_memory_bytes", "peak_memory_ratio",
              "tokens_to_model", "tokens_to_model_ratio", "response_tokens", "response_tokens_used",
              "batch_fingerprint", "selection_fingerprints", "flops_per_draw"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run through the command line, recording the batch each policy update saw."""
    out = tmp_path_factory.mktemp("bench")
    seen = []
    original = bench.policy_update_loss

    def recording(model, batch, selection, **options):
        seen.append((batch.response_length, selection.method, selection.budget, batch.fingerprint(),
                     bench.tensor_fingerprint(selection.keep)))
        return original(model, batch, selection, **options)

    bench.policy_update_loss = recording
    try:
        code = bench.main(["--preset", "tiny", "--response-lengths", ",".join(map(str, LENGTHS)),
                           "--budgets", ",".join(map(str, BUDGETS)), "--batch-size", "3", "--prompt-length", "4",
                           "--draws", "2", "--repeats", "2", "--threads", "1", "--seed", "5", "--out", str(out)])
    finally:
        bench.policy_update_loss = original
    assert code == 0
    rows = json.loads((out / "bench.json").read_text())
    return out, rows, seen


def rows_at(rows, length):
    return [row for row in rows if row["response_length"] == length]


def test_writes_json_markdown_and_plot_with_the_documented_fields(tiny_run):
    out, rows, _ = tiny_run
    assert (out / "bench.md").read_text().startswith("# NAT cost benchmark")
    assert (out / "bench.png").stat().st_size > 10_000
    assert len(rows) == len(LENGTHS) * (1 + 2 * len(BUDGETS))
    for row in rows:
        assert ROW_FIELDS <= set(row)
        assert row["peak_memory_bytes"] is None and row["peak_memory_ratio"] is None  # CPU
        assert row["time_seconds"] > 0 and row["flops"] > 0 and row["activation_bytes"] > 0
    assert {(row["method"], row["budget"]) for row in rows} == \
        {("full", 1.0)} | {(method, budget) for method in ("urs", "rpc") for budget in BUDGETS}
    markdown = (out / "bench.md").read_text()
    assert "| rpc | 0.5 |" in markdown and "time 0.71, peak mem 0.82" in markdown


def test_full_is_its_own_reference(tiny_run):
    _, rows, _ = tiny_run
    for row in rows:
        if row["method"] == "full":
            for ratio in ("time_ratio", "flops_ratio", "activation_ratio", "tokens_to_model_ratio"):
                assert row[ratio] == 1.0
            assert row["response_tokens_used"] == row["response_tokens"]


def test_ratios_are_computed_from_the_same_batch(tiny_run):
    _, rows, _ = tiny_run
    for length in LENGTHS:
        point = rows_at(rows, length)
        full = next(row for row in point if row["method"] == "full")
        assert len({row["batch_fingerprint"] for row in point}) == 1
        for row in point:
            assert row["flops"] == sum(row["flops_per_draw"]) / len(row["flops_per_draw"])
            assert row["flops_ratio"] == pytest.approx(row["flops"] / full["flops"], rel=1e-12)
            assert row["activation_ratio"] == pytest.approx(row["activation_bytes"] / full["activation_bytes"],
                                                            rel=1e-12)
            assert row["time_ratio"] == pytest.approx(row["time_seconds"] / full["time_seconds"], rel=1e-12)
            assert row["response_tokens"] == full["response_tokens"]
    assert rows_at(rows, LENGTHS[0])[0]["batch_fingerprint"] != rows_at(rows, LENGTHS[1])[0]["batch_fingerprint"]


def test_rpc_at_budget_one_costs_exactly_what_full_costs(tiny_run):
    _, rows, _ = tiny_run
    for length in LENGTHS:
        point = rows_at(rows, length)
        full = next(row for row in point if row["method"] == "full")
        rpc = next(row for row in point if row["method"] == "rpc" and row["budget"] == 1.0)
        assert rpc["tokens_to_model"] == full["tokens_to_model"]
        assert rpc["flops"] == full["flops"] and rpc["flops_ratio"] == 1.0
        # the same tensors, up to a few scalars the per-bucket loss sum saves
        assert rpc["activation_bytes"] == pytest.approx(full["activation_bytes"], rel=1e-4)
        half = next(row for row in point if row["method"] == "rpc" and row["budget"] == 0.5)
        assert half["tokens_to_model"] < full["tokens_to_model"] and half["flops_ratio"] < 1.0


def test_every_method_of_a_point_saw_the_identical_batch_and_fixed_draws(tiny_run):
    _, rows, seen = tiny_run
    for length in LENGTHS:
        expected = bench.make_batch(3, 4, length, rows_at(rows, length)[0]["vocab_size"],
                                    bench.batch_seed(5, length)).fingerprint()
        calls = [call for call in seen if call[0] == length]
        assert {call[1] for call in calls} == {"full", "urs", "rpc"}
        assert {call[3] for call in calls} == {expected}  # warm-up, counting and every timed repeat
        assert rows_at(rows, length)[0]["batch_fingerprint"] == expected
        for row in rows_at(rows, length):  # each draw is one fixed selection, reused by every repeat
            draws = {call[4] for call in calls if call[1] == row["method"] and call[2] == row["budget"]}
            assert draws == set(row["selection_fingerprints"])
            if row["budget"] < 1.0:  # distinct random draws (at ρ = 1 every draw keeps everything)
                assert len(draws) == row["draws"] == 2


def make_model_and_batch():
    model = build_tiny_qwen3(vocab_size=32, seed=1).train()
    batch = bench.make_batch(6, 5, 30, 32, seed=2)
    return model, batch


def stats_of(model, batch, selection):
    bench.zero_gradients(model)
    stats = LogprobStats()
    bench.policy_update_loss(model, batch, selection, stats=stats).backward()
    return stats


def test_full_and_rpc_at_budget_one_run_the_same_micro_batches():
    model, batch = make_model_and_batch()
    full = stats_of(model, batch, bench.draw_selection(batch, "full", 1.0, seed=0))
    rpc = stats_of(model, batch, bench.draw_selection(batch, "rpc", 1.0, seed=0))
    assert full.micro_batch_shapes == rpc.micro_batch_shapes and full.tokens_to_model == rpc.tokens_to_model
    half = stats_of(model, batch, bench.stratified_rpc_selections(batch, 0.5, 1, seed=0)[0])
    assert half.tokens_to_model < full.tokens_to_model


def test_cpu_attention_flops_are_counted():
    model, batch = make_model_and_batch()
    counts = bench.count_step(model, batch, bench.draw_selection(batch, "full", 1.0, seed=0))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        bench.policy_update_loss(model, batch, bench.draw_selection(batch, "full", 1.0, seed=0)).backward()
    by_operator = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    assert any("attention" in name and flops > 0 for name, flops in by_operator.items())
    assert counts["flops"] == counter.get_total_flops()


def test_batch_is_ragged_and_reproducible():
    first, second = bench.make_batch(64, 8, 100, 50, seed=1), bench.make_batch(64, 8, 100, 50, seed=1)
    assert first.fingerprint() == second.fingerprint()
    lengths = first.response_mask.sum(dim=1)
    assert int(lengths.min()) >= 50 and int(lengths.max()) <= 100 and len(set(lengths.tolist())) > 10
    assert bool((first.input_ids[:, 8:][~first.response_mask] == 0).all())
    assert bench.make_batch(64, 8, 100, 50, seed=2).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("argv,message", [
    (["--budgets", "0.5,1.5"], "budget"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--vocab-size", "1"], "--vocab-size must be at least 2"),
])
def test_bad_input_is_a_clear_error(argv, message, tmp_path, capsys):
    assert bench.main(argv + ["--out", str(tmp_path), "--response-lengths", "8", "--draws", "1",
                              "--repeats", "1"]) == 2
    assert message in capsys.readouterr().err


def test_unparsable_list_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--response-lengths", "long"])
    assert "comma-separated list" in capsys.readouterr().err


def test_step_mode_times_trainer_steps_on_identical_rollouts(tmp_path):
    fixture = write_gsm8k_fixture(tmp_path / "data")
    task = get_task("gsm8k", data_path=str(fixture))
    model_dir = build_local_chat_model(tmp_path / "model",
                                       [task.prompt_text(e) + e.solution for e in task.train_examples])
    out = tmp_path / "step"
    assert bench.main(["--mode", "step", "--model", str(model_dir), "--task", "gsm8k", "--data-path", str(fixture),
                       "--batch-size", "8", "--group-size", "4", "--max-new-tokens", "10", "--steps", "2",
                       "--num-eval", "2", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "step.json").read_text())
    assert [(row["method"], row["budget"]) for row in rows] == [("full", 1.0), ("urs", 0.5), ("rpc", 0.5)]
    assert rows[0]["update_ratio"] == rows[0]["step_ratio"] == 1.0
    for row in rows:
        assert row["steps"] == 2 and row["rollout_seconds"] > 0 and row["update_seconds"] > 0
        assert 0 < row["update_share"] < 1 and row["step_ratio_shared_rollout"] > 0
        # learning rate 0 and a per-step seed: every method trained on the very same rollouts
        assert row["response_tokens_generated_per_step"] == rows[0]["response_tokens_generated_per_step"]
        assert row["reward_mean_per_step"] == rows[0]["reward_mean_per_step"]
    assert rows[2]["response_tokens_used"] < rows[0]["response_tokens_used"]
    assert "update share of step" in (out / "step.md").read_text()


def test_gpu_script_runs_end_to_end_in_its_tiny_cpu_rehearsal(tmp_path):
    """bench/run_gpu.sh with BENCH_TINY=1: tiny shapes on CPU; a failing preset is logged and skipped."""
    environment = dict(os.environ, BENCH_TINY="1", BENCH_PRESETS="no-such-preset qwen3-0.6b",
                       PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "bench" / "run_gpu.sh"), str(tmp_path / "gpu")], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "gpu"
    assert "torch" in (out / "machine.txt").read_text()
    assert (out / "qwen3-0.6b" / "bench.json").exists() and (out / "qwen3-0.6b" / "bench.md").exists()
    assert "qwen3-0.6b OK" in (out / "summary.txt").read_text()
    assert "no-such-preset FAILED" in (out / "summary.txt").read_text()
    assert "no-such-preset" in result.stdout
    assert (out / "lora-qwen3-0.6b" / "lora.json").exists() and "lora qwen3-0.6b OK" in (out / "summary.txt").read_text()


@pytest.mark.parametrize("cut_distribution", ["uniform-floor", "power"])
@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75, 1.0])
def test_stratified_rpc_cuts_have_rpc_law_and_balanced_totals(cut_distribution, budget):
    from minnat.nat import rpc_cut_probabilities, rpc_inclusion_probabilities

    batch = bench.make_batch(1, 3, 20, 16, seed=0)
    length = int(batch.response_mask.sum())
    selections = bench.stratified_rpc_selections(batch, budget, draws=4000, seed=1,
                                                  cut_distribution=cut_distribution)
    cuts = torch.tensor([int(selection.cut_lengths[0]) for selection in selections])
    empirical = torch.bincount(cuts, minlength=length + 1)[1:].double() / len(cuts)
    exact = rpc_cut_probabilities(length, budget, cut_distribution)
    assert (empirical - exact).abs().max() < 0.01  # each row's cut has RPC's law
    expected_pi = rpc_inclusion_probabilities(batch.response_mask.sum(1), 20, budget, cut_distribution)
    for selection in selections[:3]:  # the real π_t and HT weights, and a prefix (response_logprobs checks it)
        assert torch.equal(selection.inclusion_prob, expected_pi) and selection.method == "rpc"
        assert torch.equal(selection.weights[selection.keep], 1 / expected_pi[selection.keep])
    # balanced: the kept total of 3 draws over 8 rows is ρ·Σ L on average, with much less spread
    batch = bench.make_batch(8, 3, 200, 16, seed=0)
    expected = 3 * float(rpc_inclusion_probabilities(batch.response_mask.sum(1), 200, budget,
                                                     cut_distribution).sum())

    def spread(draw_three):
        totals = torch.tensor([sum(int(s.keep.sum()) for s in draw_three(seed)) / expected for seed in range(40)])
        return float(totals.mean()), float(totals.std())

    stratified_mean, stratified_std = spread(
        lambda seed: bench.stratified_rpc_selections(batch, budget, 3, seed, cut_distribution))
    independent_mean, independent_std = spread(
        lambda seed: [bench.draw_selection(batch, "rpc", budget, 100 * seed + d, cut_distribution) for d in range(3)])
    assert abs(stratified_mean - 1) < 0.03
    if budget < 1.0:
        assert stratified_std < 0.5 * independent_std
    else:
        assert stratified_std == independent_std == 0.0


def test_pass_overhead_calibration_and_its_flag(capsys):
    model, _ = make_model_and_batch()
    overhead = bench.calibrate_pass_overhead(model.float(), "cpu", vocab_size=32, longest=96, repeats=1)
    assert isinstance(overhead, int) and overhead >= 0
    options = bench.build_parser().parse_args(["--micro-batch-overhead-tokens", "auto"])
    assert options.micro_batch_overhead_tokens == "auto"
    assert bench.build_parser().parse_args(["--micro-batch-overhead-tokens", "0"]).micro_batch_overhead_tokens == 0
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--micro-batch-overhead-tokens", "lots"])
    assert "whole number of tokens or 'auto'" in capsys.readouterr().err


# --------------------------------------------------------------------------- threads and noisy time ratios
def test_default_is_one_thread_and_the_output_says_so(tiny_run, capsys):
    assert bench.build_parser().parse_args([]).threads == 1
    out, rows, _ = tiny_run
    assert "1 CPU thread" in (out / "bench.md").read_text()  # the thread count is part of every report
    assert "load average" in (out / "bench.md").read_text()


def test_ratio_spread_flags_disagreeing_repeats():
    from minnat.measure import ratio_spread

    agreeing = ratio_spread([0.50, 0.52, 0.51, 0.50])
    assert agreeing["reliable"] and "agree" in agreeing["note"]
    noisy = ratio_spread([0.51, 1.45, 0.55])  # issue 13: one disturbed repeat turned 0.51× into 1.45×
    assert not noisy["reliable"] and "unreliable" in noisy["note"] and "--threads 1" in noisy["note"]
    assert "0.51–1.45" in noisy["note"]
    assert not ratio_spread([0.5, 0.5])["reliable"]  # two repeats cannot show the noise


def injected_rows(full_times, rpc_times):
    """Two benchmark rows (full, RPC ρ=0.5 at T=1024) with the given per-repeat times and fixed counts."""
    common = dict(response_length=1024, prompt_length=64, batch_size=8, response_tokens=6000, repeats=len(full_times),
                  tokens_to_model=1000, flops=1e9, activation_bytes=1e6, micro_batches=2.0,
                  peak_memory_bytes=None, peak_step_memory_bytes=None, response_tokens_used=3000, used_fraction=0.5)
    rows = []
    for method, budget, times, scale in (("full", 1.0, full_times, 1.0), ("rpc", 0.5, rpc_times, 0.45)):
        row = dict(common, method=method, budget=budget, time_seconds_per_repeat=times,
                   time_seconds=sorted(times)[len(times) // 2], time_seconds_best=min(times))
        for key in ("tokens_to_model", "flops", "activation_bytes"):
            row[key] = common[key] * scale
        rows.append(row)
    bench.add_ratios(rows)
    return rows


def test_an_unreliable_time_ratio_is_never_reported_as_met_or_missed():
    noisy = injected_rows([1.0, 1.0, 1.0], [0.5, 1.45, 0.55])  # the median ratio 0.55 would "meet" ≤ 0.6
    assert noisy[1]["time_ratio_reliable"] is False
    checks = " ".join(bench.target_checks(noisy))
    assert "time_ratio not a finding" in checks and "unreliable" in checks
    assert "time_ratio 0.550 (target" not in checks and "best-of" not in checks
    assert "unreliable" in bench.markdown_table(noisy)
    assert not any("time" in note for note in bench.explain_misses(noisy))
    calm = injected_rows([1.0, 1.01, 0.99], [0.50, 0.51, 0.505])
    assert calm[1]["time_ratio_reliable"] is True
    assert "time_ratio 0.505 (target ≤ 0.6: met)" in " ".join(bench.target_checks(calm))
    assert "unreliable" not in bench.markdown_table(calm)


# --------------------------------------------------------------------------- memory mode
def test_peak_rss_sees_an_allocation_inside_the_block():
    """In a fresh process, as the memory mode uses it: in this long-lived pytest process the freed,
    still-resident heap of earlier tests can hold the block, and the high-water mark need not rise."""
    probe = ("import json, torch\n"
             "from minnat.measure import PeakRSS\n"
             "with PeakRSS() as peak:\n"
             "    block = torch.ones(25_000_000)  # 100 MB, touched\n"
             "    del block\n"
             "print(json.dumps({'method': peak.method, 'above_start': peak.above_start}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["method"] in ("VmHWM reset", "ru_maxrss")
    if peak["method"] == "VmHWM reset":
        assert 90e6 < peak["above_start"] < 400e6


def test_memory_mode_measures_minnat_and_stock_trl_on_the_same_batch(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "memory"
    code = bench.main(["--mode", "memory", "--engines", "minnat,trl,head", "--budgets", "0.5", "--batch-size", "4",
                       "--prompt-length", "8", "--response-lengths", "32", "--repeats", "0", "--out", str(out)])
    assert code == 0
    rows = {row["name"]: row for row in json.loads((out / "memory.json").read_text())}
    assert list(rows) == ["minnat full", "minnat urs ρ=0.5", "minnat rpc ρ=0.5", "TRL stock",
                          "minnat full, LM head before", "LM head tiled", "LM head before"]
    assert len({row["batch_fingerprint"] for row in rows.values()}) == 1  # one batch, in seven fresh processes
    # the previous head computes the same loss: only memory (and time) may differ
    assert rows["minnat full, LM head before"]["loss"] == pytest.approx(rows["minnat full"]["loss"], rel=1e-5)
    for row in rows.values():
        assert row["peak_bytes"] >= row["peak_above_start_bytes"] > 0 and row["saved_for_backward_bytes"] > 0
    assert rows["TRL stock"]["peak_above_start_ratio"] == 1.0 and rows["minnat full"]["reference"] == "TRL stock"
    # RPC holds less for backward than full: its forward is shorter (deterministic, allocator-independent)
    assert rows["minnat rpc ρ=0.5"]["saved_for_backward_bytes"] < rows["minnat full"]["saved_for_backward_bytes"]
    assert rows["LM head tiled"]["reference"] == "LM head before"
    text = (out / "memory.md").read_text()
    assert "peak above start" in text and "minnat full peak above start / TRL's" in text and "1 CPU thread" in text


def test_memory_targets_report_unreliable_times_as_no_finding():
    from minnat.bench_memory import target_lines

    rows = [{"name": "minnat full", "engine": "minnat", "reference": "TRL stock", "peak_above_start_ratio": 0.9,
             "time_ratio": 0.5, "time_ratio_reliable": False, "time_ratio_note": "unreliable: repeats spread"},
            {"name": "minnat rpc ρ=0.5", "engine": "minnat", "reference": "TRL stock", "peak_above_start_ratio": 0.7},
            {"name": "LM head tiled", "engine": "head", "reference": "LM head before", "head_transient_ratio": 0.05,
             "peak_above_start_ratio": 0.3, "head_weight_gradient_bytes": 2 ** 20, "time_ratio": 1.02,
             "time_ratio_reliable": True}]
    lines = "\n".join(target_lines(rows))
    assert "minnat full peak above start / TRL's: 0.900 (target ≤ 1: met)" in lines
    assert "minnat full time / TRL's: 0.500 — not a finding" in lines
    assert "RPC ρ=0.5 peak above start / TRL's: 0.700 (target ≤ 0.6: MISSED by 0.100)" in lines
    assert "without the [V, H] weight gradient: 0.050 (target ≤ 0.125: met)" in lines
    assert "LM head tiled time / before: 1.020 (target ≤ 1.1: met)" in lines
