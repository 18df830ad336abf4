"""notebooks/make_notebooks.py is the one source of the notebooks: what is stored is what it builds.

Nothing is executed here (nbval runs the notebooks); this checks their cells against the builder.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat

BUILDER = Path(__file__).resolve().parents[1] / "notebooks" / "make_notebooks.py"


def builder():
    spec = importlib.util.spec_from_file_location("make_notebooks", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stored_notebooks_are_what_the_builder_makes():
    proc = subprocess.run([sys.executable, str(BUILDER), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_keeping_outputs_rebuilds_every_stored_notebook_byte_for_byte():
    mk = builder()
    for name, cells in mk.NOTEBOOKS.items():
        path = mk.HERE / f"{name}.ipynb"
        stored = nbformat.read(path, as_version=4)
        rebuilt = mk.keep_outputs(mk.build(name, cells), stored)
        assert nbformat.writes(rebuilt) + "\n" == path.read_text(), name


def test_the_check_sees_a_hand_edit_and_an_edit_drops_that_cell_output():
    mk = builder()
    name = "01-quickstart"
    stored = nbformat.read(mk.HERE / f"{name}.ipynb", as_version=4)
    edited = next(i for i, c in enumerate(stored.cells) if c.cell_type == "code" and c.outputs)
    stored.cells[edited].source += "\nprint('edited by hand')"
    assert mk.differences(mk.build(name, mk.NOTEBOOKS[name]), stored) == [f"cell {edited} ({stored.cells[edited].id})"]
    rebuilt = mk.keep_outputs(mk.build(name, mk.NOTEBOOKS[name]), stored)
    assert rebuilt.cells[edited].outputs == []  # its stored output belongs to another source
    assert any(c.get("outputs") for c in rebuilt.cells)
