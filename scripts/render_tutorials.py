"""Execute the tutorials and write each notebook with its outputs, so plots show on GitHub.

    python scripts/render_tutorials.py            # every tutorials/NN_*.py
    python scripts/render_tutorials.py 03 04      # only these

The jupytext percent script `tutorials/NN_*.py` is the source; this script reads it, runs it top to
bottom in a fresh python3 kernel with tutorials/ as the working directory (as a reader's Jupyter
would), and writes `tutorials/NN_*.ipynb` with the outputs. The cells stay exactly the script's, so
`jupytext --sync` and the tests' sync check agree with what is committed.

A rendered page must read cleanly: any output written to stderr (a warning, a progress bar) is an
error here, named with its cell, so the noise gets fixed at its source instead of committed.
Per-cell execution timestamps are dropped so that re-rendering an unchanged tutorial changes
nothing but what it computes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def stderr_outputs(notebook) -> list[str]:
    """'cell N: first line' for every stderr stream in the executed notebook."""
    found = []
    for number, cell in enumerate(notebook.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append(f"cell {number}: {output['text'].strip().splitlines()[0][:160]}")
    return found


def render(script: Path, timeout: int = 600) -> Path:
    """Run the tutorial `script` and write its notebook with outputs; returns the notebook's path."""
    notebook = jupytext.read(script)
    notebook.metadata["kernelspec"] = KERNELSPEC
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()
    noise = stderr_outputs(notebook)
    if noise:
        raise SystemExit(f"{script.name} wrote to stderr; fix it at the source before committing:\n  "
                         + "\n  ".join(noise))
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    target = script.with_suffix(".ipynb")
    nbformat.write(notebook, target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/render_tutorials.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", help="tutorial numbers such as 01 03 (default: all)")
    args = parser.parse_args(argv)
    scripts = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    if args.numbers:
        scripts = [script for script in scripts if script.name[:2] in args.numbers]
        if not scripts:
            parser.error(f"no tutorial numbered {' '.join(args.numbers)} in {TUTORIALS}")
    for script in scripts:
        start = time.perf_counter()
        target = render(script)
        print(f"{target.relative_to(TUTORIALS.parent)}: executed in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
