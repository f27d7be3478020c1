"""notebooks/sampling.ipynb: the same cells as its jupytext pair (notebooks/sampling.py), saved
without outputs, and it runs top to bottom on the CPU against a tiny pipeline: a batch, a second
batch that compiles nothing new, variations and an interpolation shown inline."""

import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parent))
import tiny_pipeline

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def _sources(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_and_its_script_agree_and_hold_no_outputs():
    notebook = nbformat.read(NOTEBOOKS / "sampling.ipynb", as_version=4)
    script = jupytext.read(NOTEBOOKS / "sampling.py")
    assert _sources(notebook) == _sources(script), "run: jupytext --sync notebooks/sampling.py"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_on_a_tiny_pipeline(tmp_path, monkeypatch):
    pipeline = tiny_pipeline.build(tmp_path / "tiny")
    monkeypatch.setenv("UNCLIP_PIPELINE", str(pipeline))
    monkeypatch.setenv("UNCLIP_INSTALL", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOKS / "sampling.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={})
    try:
        client.execute(cwd=str(tmp_path))
    except Exception as error:  # a cell's error: name it, not the kernel's whole traceback
        pytest.fail(f"the notebook failed: {str(error).strip().splitlines()[-1]}")
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "no new programs" in printed, printed
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 4, printed  # two batches, the variations, the interpolation
