"""Read nbdev notebooks for Jupyter Book: nbdev directives become myst-nb cell tags.

Registered for `.ipynb` through `nb_custom_formats` in `_config.yml`. The notebooks in `nbs/`
stay the single source: this only changes what the book builder sees, never the files.
It also serves MathJax from a local copy so formulas typeset without a network.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import nbformat
from nbdev.process import extract_directives

# nbdev directive -> myst-nb tag. Directives map on their name; `eval: false` and friends on value; Quarto's
# `code-fold: true` folds a cell's code behind a toggle (regression tests a reader may open, but need not read).
_TAG_FOR = {"hide": "remove-cell", "default_exp": "remove-cell"}
_TAG_FOR_FALSE = {"eval": "skip-execution", "echo": "remove-input", "output": "remove-output"}
_TAG_FOR_TRUE = {"code-fold": "hide-input"}
_DIRECTIVE_LINE = re.compile(r"^\s*#\|")


def _tags_for(directives: dict) -> list[str]:
    "The myst-nb tags that stand for a cell's nbdev directives."
    directives = {name.rstrip(":"): value for name, value in directives.items()}  # Quarto style: `eval: false`
    tags = [_TAG_FOR[d] for d in directives if d in _TAG_FOR]
    for wanted, mapping in (("false", _TAG_FOR_FALSE), ("true", _TAG_FOR_TRUE)):
        for name, tag in mapping.items():
            value = directives.get(name)
            if value is not None and " ".join(value).strip().lower() == wanted:
                tags.append(tag)
    return tags


def _strip_directive_lines(source: str) -> str:
    "Drop the leading `#|` lines nbdev leaves in place (Quarto-style ones such as `#| eval: false`)."
    lines = source.splitlines(keepends=True)
    while lines and _DIRECTIVE_LINE.match(lines[0]):
        lines.pop(0)
    return "".join(lines)


def read_nbdev(text: str, **kwargs) -> nbformat.NotebookNode:
    "Parse a notebook and turn its nbdev markup into book cell tags."
    nb = nbformat.reads(text, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            if "nbdev_export(" in cell.source:
                continue
            directives = extract_directives(cell, remove=True)
            cell.source = _strip_directive_lines(cell.source)
            tags = cell.metadata.setdefault("tags", [])
            tags.extend(t for t in _tags_for(directives) if t not in tags)
        cells.append(cell)
    nb.cells = cells
    return nb


def _mathjax_dir() -> Path:
    "The MathJax 3 build shipped by the `django-static-mathjax` package."
    import mathjax  # the package's import name

    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def _copy_mathjax(app, exception) -> None:
    "Copy MathJax next to the pages so `mathjax_path` resolves offline."
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        if not (target / "tex-chtml.js").exists():
            shutil.copytree(_mathjax_dir(), target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("sre", "*-speech.js", "*-full*.js"))


def _quiet_kernels() -> None:
    "Settings the executing kernels inherit: progress bars that update rarely (each update is a line in the page)."
    os.environ.setdefault("TQDM_MININTERVAL", "60")
    # without ipywidgets tqdm falls back to text bars, which is what a static page wants: drop its warning
    warning = "ignore:IProgress not found"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), warning]))


def library_hash(root: Path) -> str:
    """A hash of what a chapter's outputs depend on besides the notebook: the package's code and checkpoints, and the
    profile and step cap the build runs with."""
    digest = hashlib.sha256(repr([os.environ.get(k) for k in ("STORYTELLER_PROFILE", "STORYTELLER_STEP_CAP")]).encode())
    for path in sorted(p for p in (root / "storyteller").rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _drop_stale_cache(app) -> None:
    """The execution cache keys a notebook on its own code only: when the library changed since the cache was filled,
    empty it, so every chapter runs again on the new library (unchanged notebooks on an unchanged library are reused)."""
    build = Path(app.outdir).parent
    cache, stamp = build / ".jupyter_cache", build / ".library-hash"
    current = library_hash(Path(app.srcdir))
    if not stamp.exists() or stamp.read_text() != current:
        shutil.rmtree(cache, ignore_errors=True)
        build.mkdir(parents=True, exist_ok=True)
        stamp.write_text(current)


def setup(app):
    _quiet_kernels()
    app.connect("builder-inited", _drop_stale_cache)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
