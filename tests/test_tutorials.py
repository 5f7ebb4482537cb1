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
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
EXPECTED = ["01_horvitz_thompson", "02_grpo_from_scratch", "03_urs_and_rpc", "04_training_with_nat", "05_scaling_up",
            "06_nat_in_trl", "07_why_the_weights_matter"]
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


def test_every_tutorial_import_comes_with_the_readmes_first_command():
    """The README's first command (`pip install torch==2.13.0 -r requirements.txt`) alone must provide every
    module a tutorial imports: requirements.txt's line, resolved through the installed packages' declared
    dependencies (extras included as named), must reach the distribution of each top-level import."""
    import ast
    import importlib.metadata as metadata
    import re

    requirement_lines = [line.strip() for line in (TUTORIALS.parent / "requirements.txt").read_text().splitlines()
                         if line.strip() and not line.startswith("#")]
    match = re.fullmatch(r"-e \.\[([a-z,]+)\]", requirement_lines[0]) if len(requirement_lines) == 1 else None
    assert match, f"requirements.txt should be one line `-e .[extras]`; got {requirement_lines}"
    wanted = [("minnat", set(match.group(1).split(","))), ("torch", set())]  # torch==2.13.0: on the command line
    reached, queue = set(), list(wanted)
    while queue:
        name, extras = queue.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in reached:
            continue
        reached.add(key)
        for requirement in metadata.requires(name) or []:
            spec, _, marker = requirement.partition(";")
            needed_extras = set(re.findall(r'extra\s*==\s*["\']([^"\']+)', marker))
            if needed_extras and not needed_extras & extras:
                continue
            match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", spec)
            if not match or "python_version" in marker or "sys_platform" in marker:
                continue
            try:
                metadata.distribution(match.group(1))
            except metadata.PackageNotFoundError:
                continue  # an optional dependency not installed here: nothing a tutorial can import from it
            queue.append((match.group(1), {e.strip() for e in (match.group(3) or "").split(",") if e.strip()}))
    providers = metadata.packages_distributions()

    def module_level_imports(path: Path) -> list[str]:
        """Absolute imports a module runs when imported (its top level, including try blocks; not functions)."""
        names, body = [], list(ast.parse(path.read_text()).body)
        while body:
            node = body.pop()
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
            elif isinstance(node, (ast.Try, ast.If)):
                body += node.body
        return names

    missing, seen = {}, set()
    for script in SCRIPTS:
        queue = module_level_imports(script)
        while queue:
            name = queue.pop()
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or name in seen:
                continue
            seen.add(name)
            if top == "minnat":  # follow minnat's own modules: minnat.integrations.trl needs the trl extra
                parts = TUTORIALS.parent.joinpath(*name.split("."))
                for path in (parts.with_suffix(".py"), parts / "__init__.py"):
                    if path.is_file():
                        queue += module_level_imports(path)
                continue
            if list((TUTORIALS.parent / "examples").glob(f"**/{top}.py")):
                continue  # an example script the tutorial puts on sys.path
            distributions = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
            if not distributions & reached:
                missing.setdefault(script.name, set()).add(top)
    assert not missing, f"tutorial imports that the README's first command does not install: {missing}"
