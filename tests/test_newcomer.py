"""What a newcomer meets first: failed starts that leave nothing behind, an honest CLI, packaging,
thread choice on a busy machine, and GSM8K failing fast offline."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minnat import models
from minnat.tasks import get_task
from minnat.train import main, method_label, parse_args

REPO = Path(__file__).resolve().parent.parent


def tiny_args(out, *extra):
    return ["--task", "arithmetic", "--steps", "1", "--batch-size", "8", "--group-size", "4",
            "--max-new-tokens", "40", "--num-eval", "4", "--eval-batch-size", "4", "--out", str(out), *extra]


def test_failed_start_leaves_nothing_that_blocks_the_corrected_retry(tmp_path, capsys):
    out = tmp_path / "X"
    assert main(tiny_args(out, "--model", "/nonexistent")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists(), "a failed start must not leave its output folder behind"
    assert main(tiny_args(out)) == 0, "the corrected command on the same --out must run"
    assert (out / "summary.json").exists()


def test_failed_start_without_out_leaves_no_orphan_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_args("unused") if a not in ("--out", "unused")]
    assert main(args + ["--model", "/nonexistent"]) == 2
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"orphan run folders: {list(runs.iterdir())}"


def test_failed_overwrite_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out)) == 0
    before = (out / "summary.json").read_text()
    assert main(tiny_args(out, "--overwrite", "--model", "/nonexistent")) == 2
    assert (out / "summary.json").read_text() == before, "--overwrite must not delete a run it cannot replace"


def test_resuming_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out)) == 0
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "--steps" in printed
    assert "held-out greedy accuracy" not in printed, "the old summary must not be reprinted as if it ran"
    assert main(["--resume", str(out), "--steps", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in text.split(" --")[1:]:
        assert option.count("default") <= 1, f"a default is stated twice: --{option}"


def test_full_is_labelled_without_a_budget():
    assert method_label("full", 0.5) == "full"
    assert method_label("rpc", 0.5) == "rpc ρ=0.5"
    assert method_label("urs", 0.25, ascii=True) == "urs-0.25"


def test_default_run_folder_of_full_has_no_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_args("unused") if a not in ("--out", "unused")]
    assert main(args + ["--method", "full"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.endswith("-full-seed0"), folder.name


def test_auto_threads_leave_cores_to_a_busy_machine(monkeypatch):
    monkeypatch.setattr(models.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(models.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(models.os, "getloadavg", lambda: (1.9, 1.0, 1.0))
    threads, reason = models.choose_cpu_threads(0)
    assert threads == 1 and "busy" in reason
    monkeypatch.setattr(models.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert models.choose_cpu_threads(0)[0] == 2
    assert models.choose_cpu_threads(3)[0] == 3


def test_offline_gsm8k_fails_within_seconds_with_its_sentence(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_seconds=3.0: False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="--data-path"):
        get_task("gsm8k")
    assert time.perf_counter() - start < 5


def test_package_installs_and_runs_from_any_folder(tmp_path):
    """`pip install .` builds a wheel holding the embedded models, and the CLIs run outside the repo."""
    source, wheel_dir = tmp_path / "source", tmp_path / "wheel"
    source.mkdir()  # build from a copy, so that setuptools' build/ and egg-info stay out of the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "minnat", source / "minnat", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(source)], check=True, cwd=tmp_path, capture_output=True)
    import zipfile
    (wheel,) = wheel_dir.glob("minnat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "minnat/train.py" in names and "minnat/assets/tiny-qwen3/model.safetensors" in names
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    for module in ("minnat.train", "minnat.bench"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=outside, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "usage" in result.stdout, result.stderr
