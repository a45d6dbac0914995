"""The notebooks' papermill contract: every notebook has one ``parameters`` cell whose every assignment papermill
can read (a comment holding ``=`` makes papermill skip the line), and it takes the parameters
``reproduce/run_notebooks.py`` injects; and every cell carries an id."""

import json
from pathlib import Path

import nbformat
import pytest
from papermill.translators import PythonTranslator

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").rglob("*.ipynb"))
INJECTED = {"scale", "out_dir", "figures_dir"}  # report_dir too, where the notebook writes a report section


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO / "notebooks")))
def test_parameters_cell_is_fully_readable_by_papermill(path):
    cells = [c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}"
    assignments = [line.split("=")[0].strip() for line in cells[0].source.splitlines()
                   if line.strip() and not line.lstrip().startswith("#") and "=" in line.split("#")[0]]
    parsed = [p.name for p in PythonTranslator.inspect(cells[0])]
    assert parsed == assignments, f"{path.name}: papermill reads {parsed}, the cell assigns {assignments}"
    assert INJECTED <= set(parsed)
    source = "".join(c.source for c in nbformat.read(path, 4).cells)
    if "save_section(" in source:
        assert "report_dir" in parsed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO / "notebooks")))
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 requires cell ids (a missing one is a warning on every read, a hard error in later
    nbformat versions); read the file as JSON, since nbformat fills missing ids in memory."""
    cells = json.loads(path.read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids, f"{path.name}: cells {[i for i, x in enumerate(ids) if x is None]} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"
