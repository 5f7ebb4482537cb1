"""The tutorials are part of the test suite: each notebook must run top to bottom, offline, on a CPU.

Each `tutorials/NN_*.ipynb` is executed with nbclient (kernel "python3", working directory
tutorials/, as when a reader opens it in Jupyter). A cell that raises — including the
notebooks' own `assert` cells, which state the tutorial's claims — fails the test. The
jupytext percent script `tutorials/NN_*.py` is the source people edit; the .ipynb must hold
the same cells, executed, with their outputs (plots visible on GitHub):
`python scripts/render_tutorials.py NN` regenerates it from the script.

Set MINNAT_SKIP_TUTORIALS=1 to skip the (slow) execution tests locally; the sync checks still run.
"""
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
EXPECTED = ["01_horvitz_thompson", "02_grpo_from_scratch", "03_urs_and_rpc", "04_training_with_nat", "05_scaling_up",
            "06_nat_in_trl"]
CELL_TIMEOUT_SECONDS = 300      # no single cell should come anywhere near this
NOTEBOOK_TIMEOUT_SECONDS = 600  # the whole notebook; they aim for < 90 s on 2 CPU cores
MAX_NOTEBOOK_BYTES = 1_500_000  # executed outputs with a few PNG plots


def cells(notebook):
    """(cell type, source) of every non-empty cell: what "in sync" compares."""
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells if cell.source.strip()]


def test_tutorials_exist_in_pairs():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED, f"expected the tutorials {EXPECTED} in {TUTORIALS}"
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SCRIPTS], \
        "every tutorial needs both its .py (source) and its .ipynb (generated with jupytext)"


@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_sync_with_script(notebook_path):
    script = jupytext.read(notebook_path.with_suffix(".py"))
    notebook = nbformat.read(notebook_path, as_version=4)
    assert cells(notebook) == cells(script), (
        f"{notebook_path.name} is out of sync with {notebook_path.with_suffix('.py').name}; "
        f"run `python scripts/render_tutorials.py {notebook_path.name[:2]}` and commit both.")
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    assert notebook_path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{notebook_path.name} is too large; shrink its plots"


@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_clean_outputs(notebook_path):
    """A reader on GitHub sees every cell's output and at least one plot, and no stderr noise."""
    from scripts.render_tutorials import stderr_outputs

    notebook = nbformat.read(notebook_path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    unexecuted = [number for number, cell in enumerate(code_cells, start=1) if cell.execution_count is None]
    assert not unexecuted, (f"{notebook_path.name}: code cells {unexecuted} have no outputs; run "
                            f"`python scripts/render_tutorials.py {notebook_path.name[:2]}`")
    images = sum("image/png" in output.get("data", {}) for cell in code_cells for output in cell.outputs)
    assert images >= 1, f"{notebook_path.name} shows no plot"
    assert not stderr_outputs(notebook), f"{notebook_path.name} has stderr output: {stderr_outputs(notebook)}"


@pytest.mark.skipif(os.environ.get("MINNAT_SKIP_TUTORIALS") == "1", reason="MINNAT_SKIP_TUTORIALS=1")
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_SECONDS + 60)
@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(notebook_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(notebook_path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{notebook_path.name}: a cell failed\n{error}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{notebook_path.name}: {elapsed:.1f} s")
    assert elapsed < NOTEBOOK_TIMEOUT_SECONDS, f"{notebook_path.name} took {elapsed:.0f} s"
