"""Each chapter's own tests, in the fast path (`-m "not book"`): `nbdev_test` runs a notebook's cells except those
marked `#| notest` (live training, measured results and timings, which the book build runs) and `#| eval: false`
(the GPU cells). A failing cell fails its chapter with nbdev's traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
from chapters import CHAPTERS, ROOT

NBDEV_TEST = Path(sys.executable).parent / "nbdev_test"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_tests_pass(chapter):
    "One process per chapter, as a reader's kernel; STORYTELLER_HOME is the test's scratch folder (conftest)."
    run = subprocess.run([str(NBDEV_TEST), "--path", f"nbs/{chapter}.ipynb", "--n_workers", "0"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"{chapter}:\n{run.stdout[-3000:]}\n{run.stderr[-8000:]}"


def test_notest_marks_only_cells_that_export_nothing():
    "A `#| notest` cell is skipped by these tests, so it must not define the library."
    import nbformat

    for chapter in CHAPTERS:
        for cell in nbformat.read(ROOT / "nbs" / f"{chapter}.ipynb", as_version=4).cells:
            lines = [line.replace(" ", "") for line in cell.source.splitlines() if line.startswith("#|")]
            assert not ("#|notest" in lines and any(line.startswith("#|export") for line in lines)), \
                f"{chapter}: a #| notest cell exports: {cell.source[:80]!r}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_cell_names_only_what_the_notebook_defines(chapter):
    """The cells these tests skip (`#| notest`, `#| eval: false`) run only in the book build or on a GPU: pyflakes reads
    the whole notebook as one program so a name they use but nothing imports fails here, in seconds."""
    import nbformat
    from pyflakes import api, messages, reporter

    cells = [cell.source for cell in nbformat.read(ROOT / "nbs" / f"{chapter}.ipynb", as_version=4).cells
             if cell.cell_type == "code"]
    program = "\n".join("\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line
                                  for line in source.splitlines()) for source in cells)
    found = []

    class Collect(reporter.Reporter):
        def flake(self, message):
            if isinstance(message, (messages.UndefinedName, messages.ImportStarUsage)):
                found.append(str(message))

    api.check(program, chapter, Collect(None, None))
    assert not found, "\n".join(found)
