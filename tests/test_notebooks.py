"""Every notebook in notebooks/ runs top to bottom, and is committed without outputs.

The notebooks are executed with nbclient on a kernel named `python3` that is pinned to this
interpreter (the venv's): a kernelspec written at test time into a temporary JUPYTER_PATH, which
Jupyter searches before the user's and the system's kernelspecs. So the test needs nothing but the
venv, and a `python3` kernelspec installed elsewhere on the machine cannot pick another Python.
Each notebook runs in notebooks/ (its own directory, as in Jupyter), on an in-memory copy: the
file on disk is never rewritten.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT = 300  # seconds per cell
# Notebooks must never write into the repository's models and data (they use temporary directories).
GUARDED = ("data", "models")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def venv_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `python3` kernelspec running this interpreter, first on JUPYTER_PATH for the module."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (antifraud venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter_path))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no debugger warning from frozen modules
        yield KERNEL


def _client(nb: nbformat.NotebookNode, kernel: str) -> NotebookClient:
    return NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )


def _snapshot() -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime) of every file under the guarded directories."""
    files = {}
    for top in GUARDED:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and ".ipynb_checkpoints" not in path.parts:
                stat = path.stat()
                files[str(path.relative_to(ROOT))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _failed_cell(nb: nbformat.NotebookNode) -> int | None:
    """Index (from 0, markdown cells counted) of the first cell with an error output."""
    for index, cell in enumerate(nb.cells):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return index
    return None


def test_the_kernel_is_this_venv(venv_kernel: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys, os\nprint(sys.executable)\nprint(os.getcwd())"))
    _client(nb, venv_kernel).execute()
    text = "".join(out.get("text", "") for out in nb.cells[0].outputs if out.get("name") == "stdout")
    executable, cwd = text.split("\n")[:2]
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(cwd).resolve() == NOTEBOOK_DIR.resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing "
        "(JupyterLab's 'Clear Outputs of All Cells', or the snippet in notebooks/README.md)"
    )
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == KERNEL, f"{path.name}: kernelspec name is {kernel!r}, expected {KERNEL!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, venv_kernel: str) -> None:
    nb = nbformat.read(path, as_version=4)
    before = _snapshot()
    started = time.perf_counter()
    failure = None
    try:
        _client(nb, venv_kernel).execute()
    except CellExecutionError as exc:
        failure = f"{path.name}: cell {_failed_cell(nb)} failed\n{exc}"
    except (CellTimeoutError, DeadKernelError) as exc:
        failure = f"{path.name}: {type(exc).__name__}: {exc}"
    if failure is not None:  # outside the except block: the report is the cell's error, not a chain
        pytest.fail(_ANSI.sub("", failure), pytrace=False)
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    after = _snapshot()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"{path.name} wrote into the repository: {changed}"
