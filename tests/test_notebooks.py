"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient), so none can rot.

The kernel is this Python (jupyter_client starts `python -m ipykernel_launcher` with sys.executable) with the
notebook's folder as working directory, as Jupyter opens it; builds and exports go to a temporary folder through
TINYKD_NOTEBOOK_RUNS, so a test run writes nothing into the repository. The quickstart's runs folder starts as a
copy of the session's CLI smoke build, so its `tinykd.build` finds every stage done (a fresh build through
`tinykd.build` is tests/test_api.py's, and the CLI build is shared with other tests).
"""

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("quickstart.ipynb", "report_mlperf.ipynb", "distill_your_model.ipynb")


def test_the_notebooks_are_there_stored_without_outputs_and_described():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"
        assert f"({name})" in readme, f"notebooks/README.md: describe {name}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch, request):
    if name == "quickstart.ipynb":
        shutil.copytree(request.getfixturevalue("smoke_cli_build").runs, tmp_path / "runs")
    # The kernel inherits this environment: the checkout first on its path, the runs folder in tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("TINYKD_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = set(REPO.iterdir()) | set(NOTEBOOKS.iterdir())
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on a failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), f"{name}: no plot was shown inline"
    assert (tmp_path / "runs").is_dir() or name == "report_mlperf.ipynb"  # the one that writes no file
    assert set(REPO.iterdir()) | set(NOTEBOOKS.iterdir()) == before, "a notebook wrote into the repository"
