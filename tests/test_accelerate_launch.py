"""The README's launch commands, run for real: `accelerate launch` with each shipped config, two CPU processes.

Each test runs the accelerate CLI itself — `accelerate launch --config_file examples/trl/accelerate/<name>.yaml
--num_processes 2 --mixed_precision no examples/trl/grpo_nat.py …` — for two steps of the short task, and
checks that the run finished, that accelerate really used the config's back-end (DDP over gloo, DeepSpeed,
FSDP2), on both ranks, and that NAT was active (its `nat/kept_fraction` was logged, neither 0 nor 1).
`--mixed_precision no` overrides the configs' bf16 (a GPU setting). accelerate enables FSDP only on GPU-like
devices, so the FSDP2 run goes through `tests/fsdp_on_cpu.py`, which opens the gloo group and lets
accelerate's own FSDP2 preparation run on the CPU (see its docstring); everything after that is the real path.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the TRL integration needs `pip install \"minnat[trl]\"`")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "examples" / "trl" / "accelerate"
EXAMPLE = ["examples/trl/grpo_nat.py", "--task", "arithmetic", "--steps", "2", "--prompts-per-step", "2",
           "--group-size", "4", "--max-new-tokens", "32", "--temperature", "1.5"]
EXPECTED = {"ddp": ("MULTI_CPU", False), "zero3": ("DEEPSPEED", False), "fsdp2": ("FSDP", True)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_with_the_shipped_config_trains_with_nat(tmp_path, name):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "the accelerate CLI comes with TRL: `pip install \"minnat[trl]\"`"
    out = tmp_path / "run"
    script = ["tests/fsdp_on_cpu.py"] if name == "fsdp2" else []
    command = [accelerate, "launch", "--config_file", str(CONFIGS / f"{name}.yaml"), "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(free_port()), *script, *EXAMPLE,
               "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=REPO)  # ZeRO-3: the first run compiles DeepSpeed's CPU op
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    distributed, fsdp2 = EXPECTED[name]
    assert (summary["distributed"], summary["processes"], summary["fsdp2"]) == (distributed, 2, fsdp2), summary
    assert summary["steps"] == 2 and summary["method"] == "rpc"
    assert 0.0 < summary["mean_kept_fraction"] < 1.0, summary  # NAT's metric, logged by both steps
