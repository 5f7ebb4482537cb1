"""Crash safety: SIGKILL a real training process mid-run, resume it, and get the uninterrupted run's metrics."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from minnat import checkpoint as ckpt
from minnat.train import main

ROOT = Path(__file__).resolve().parent.parent
# Small, deterministic (one thread) run on the embedded default; checkpoints every 2 steps.
ARGS = ["--steps", "6", "--batch-size", "16", "--group-size", "4", "--num-eval", "8", "--eval-every", "2",
        "--save-every", "2", "--max-new-tokens", "96", "--num-threads", "1", "--seed", "3"]
TIMING_KEYS = {"rollout_seconds", "update_seconds"}


def comparable(records):
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    reference = tmp_path / "uninterrupted"
    assert main([*ARGS, "--out", str(reference)]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "minnat.train", *ARGS, "--out", str(killed)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # Kill it after the step-2 checkpoint, while it is in the middle of step 3 or 4.
    while time.time() < deadline:
        records = ckpt.read_json_lines(killed / "metrics.jsonl")
        if ckpt.latest_checkpoint(killed) is not None and any(r["step"] >= 3 for r in records):
            break
        assert process.poll() is None, "the training process ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run

    text = (killed / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # no partial line
    checkpoint = ckpt.latest_checkpoint(killed)
    assert checkpoint is not None and (checkpoint / "model.safetensors").exists()

    assert main(["--resume", str(killed)]) == 0
    resumed = ckpt.read_json_lines(killed / "metrics.jsonl")
    uninterrupted = ckpt.read_json_lines(reference / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5, 6]
    assert not list((killed / "checkpoints").glob(".step-*"))  # temp folders of a torn write are cleaned up
    assert comparable(resumed) == comparable(uninterrupted)
    assert any(r.get("loss") for r in uninterrupted)  # the comparison covers real updates
    summary = json.loads((killed / "summary.json").read_text())
    reference_summary = json.loads((reference / "summary.json").read_text())
    assert summary["accuracy_after"] == reference_summary["accuracy_after"]
    assert summary["response_tokens_used"] == reference_summary["response_tokens_used"]
