"""What every committed experiment records about itself, and how it is written.

An experiment script's results.json starts with `record_header(...)` — the date, the machine (CPU
model, cores and the load average when it started: were the cores free?), torch's version and the
exact command — and `write_record` writes results.json and the README.md that quotes it into the
output folder, then prints the README.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def describe_machine(load_at_start: float | None = None) -> str:
    """'AMD EPYC, 2 cores, load average 0.12 at the start' (the load average read now unless given)."""
    from minnat.bench_memory import cpu_model

    load = os.getloadavg()[0] if load_at_start is None else load_at_start
    return f"{cpu_model() or platform.machine()}, {os.cpu_count()} cores, load average {load:.2f} at the start"


def record_header(script: str, argv: list[str] | None) -> dict:
    """The fields every results.json begins with; `script` is the path typed, e.g. scripts/x.py."""
    arguments = argv if argv is not None else sys.argv[1:]
    return {"date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
            "command": f"python {script} " + " ".join(arguments)}


def write_record(out: str | Path, results: dict, readme: str) -> None:
    """OUT/results.json and OUT/README.md, then the README on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "README.md").write_text(readme)
    print(readme)
