"""Build the executed course book with warnings as errors, then check what a reader sees.

Building the book (`--all`, from scratch) executes every chapter notebook once: a failing
assertion in any chapter fails this test. Deselect it with `-m "not book"` for a quick run.
"""
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    "Build the book once for this module: cpu profile, a scratch STORYTELLER_HOME, the current interpreter's tools."
    env = {**os.environ, "STORYTELLER_PROFILE": "cpu", "STORYTELLER_HOME": str(tmp_path_factory.mktemp("home"))}
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    # --all: Sphinx otherwise re-reads only notebooks whose source changed; the execution cache then reuses a chapter's
    # outputs only while the library and the profile are unchanged (_ext/nbdev_reader.py)
    result = subprocess.run([str(jupyter_book), "build", ".", "--all", "-W", "-n", "--keep-going"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return HTML


def test_the_execution_cache_is_dropped_when_the_library_changes(tmp_path, monkeypatch):
    "Cached chapter outputs are reused only while the library (code, checkpoints) and the profile stay the same."
    sys.path.insert(0, str(ROOT / "_ext"))
    from nbdev_reader import _drop_stale_cache

    (tmp_path / "storyteller").mkdir()
    (tmp_path / "storyteller" / "core.py").write_text("x = 1")
    app = type("App", (), {"srcdir": str(tmp_path), "outdir": str(tmp_path / "_build" / "html")})()
    cache = tmp_path / "_build" / ".jupyter_cache"
    fill = lambda: (cache.mkdir(parents=True, exist_ok=True), (cache / "global.db").write_text("outputs"))
    fill(); _drop_stale_cache(app)
    assert not cache.exists()  # no stamp yet: nothing is known about what filled the cache
    fill(); _drop_stale_cache(app)
    assert cache.exists()  # same library: the outputs are reused
    (tmp_path / "storyteller" / "core.py").write_text("x = 2")
    _drop_stale_cache(app)
    assert not cache.exists()  # the library changed: every chapter runs again
    fill(); monkeypatch.setenv("STORYTELLER_PROFILE", "gpu"); _drop_stale_cache(app)
    assert not cache.exists()  # so did the profile


def test_reader_maps_nbdev_and_quarto_directives_to_book_tags():
    "What a page shows of a cell follows its directives: removed, input removed, not run, or folded behind a toggle."
    import nbformat
    sys.path.insert(0, str(ROOT / "_ext"))
    from nbdev_reader import read_nbdev

    sources = ["#| hide\nx = 1", "#| echo: false\nx = 2", "#| eval: false\nx = 3", "#| code-fold: true\nx = 4",
               "#| code-fold: false\nx = 5", "x = 6"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    cells = read_nbdev(nbformat.writes(nb)).cells
    assert [c.metadata.get("tags", []) for c in cells] == [["remove-cell"], ["remove-input"], ["skip-execution"],
                                                           ["hide-input"], [], []]
    assert [c.source for c in cells] == [f"x = {i}" for i in range(1, 7)]  # no directive line reaches the page


@pytest.mark.book
def test_book_builds_and_every_chapter_executes(book):
    for name in CHAPTERS:
        page = (book / "nbs" / f"{name}.html").read_text(encoding="utf-8")
        assert "cell_output" in page, f"{name}: no executed output"


@pytest.mark.book
def test_no_nbdev_markup_and_hidden_cells_are_gone(book):
    for name in CHAPTERS:
        page = (book / "nbs" / f"{name}.html").read_text(encoding="utf-8")
        assert "#|" not in page and "#| export" not in page, f"{name}: nbdev directive visible"
        assert "nbdev_export" not in page, f"{name}: export cell visible"
        assert "from fastcore.test import" not in page, f"{name}: a #| hide cell is visible"


@pytest.mark.book
def test_folded_cells_are_behind_a_toggle(book):
    "Every chapter folds its Colab install cell (`#| code-fold: true`): the page keeps the code, behind a toggle."
    for name in CHAPTERS:
        page = (book / "nbs" / f"{name}.html").read_text(encoding="utf-8")
        assert "tag_hide-input" in page and "google.colab" in page, f"{name}: no folded cell"


@pytest.mark.book
def test_every_chapter_has_colab_and_repository_buttons(book):
    for name in CHAPTERS:
        page = (book / "nbs" / f"{name}.html").read_text(encoding="utf-8")
        colab = f"colab.research.google.com/github/storyteller-course/storyteller/blob/main/nbs/{name}.ipynb"
        assert colab in page, f"{name}: no Colab launch button"
        assert 'href="https://github.com/storyteller-course/storyteller"' in page, f"{name}: no repository button"


@pytest.mark.book
def test_citations_and_offline_math(book):
    page = (book / "nbs" / "01_foundations.html").read_text(encoding="utf-8")
    assert "bibliography.html#id" in page or 'href="bibliography.html' in page  # citations link to the bibliography
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-chtml\.js', page), "MathJax is not served locally"
    assert (book / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert "cdn.jsdelivr.net/npm/mathjax" not in page
    bib = (book / "nbs" / "bibliography.html").read_text(encoding="utf-8")
    assert "learning transferable visual models" in bib.lower()


@pytest.mark.book
def test_eval_false_cells_are_shown_but_not_run(book):
    page = (book / "nbs" / "01_foundations.html").read_text(encoding="utf-8")
    cells = page.split('<div class="cell ')
    [cell] = [c for c in cells if "clip_gpu_provenance" in c]
    assert "cell_output" not in cell


@pytest.mark.book
def test_results_tables_render_as_tables(book):
    for name, row in (("00d_judge", "background"), ("00d_judge", "64×64"), ("01_foundations", "text→image R@1"),
                      ("02_vqvae", "codebook usage"), ("02_vqvae", "EMA + k-means + restart"),
                      ("03_vqgan", "edge sharpness"), ("04_diffusion", "ddpm-1000"), ("05_dit", "latent DiT"),
                      ("06_lora", "all-linear"), ("06b_characters", "Pip")):
        page = html.unescape((book / "nbs" / f"{name}.html").read_text(encoding="utf-8"))
        assert re.search(rf"<td[^>]*>\s*(<p>)?{re.escape(row)}", page), f"{name}: results table not rendered as a table"
