"""Every notebook names the kit's own kernel, ``fedmoe`` (installed into .venv by ``make setup``), so JupyterLab
and papermill run it on the kit's interpreter however the server was started (``python3`` only worked because
the server happened to run from the venv)."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
KERNELSPEC = {"display_name": "fedmoe (.venv)", "language": "python", "name": "fedmoe"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO / "notebooks")))
def test_notebook_kernelspec_is_the_kits_kernel(path):
    kernelspec = json.loads(path.read_text())["metadata"].get("kernelspec")
    assert kernelspec == KERNELSPEC, f"{path.relative_to(REPO)}: kernelspec {kernelspec}"
