"""Reading load of each chapter page as the book shows it: words of prose, visible code lines, folded and removed
code lines, and the longest run of visible code between two pieces of prose.

    python benchmarks/pages.py [NOTEBOOK ...]     # default: every notebook in nbs/; prints a Markdown table

The notebooks are read through the book's own reader (`_ext/nbdev_reader.py`), so a cell counts as folded or removed
exactly when the page folds or removes it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
from nbdev_reader import read_nbdev  # noqa: E402

FOLDED = {"hide-input", "hide-cell"}
REMOVED = {"remove-cell", "remove-input"}


@dataclass
class PageStats:
    "What a reader of one chapter page reads: prose words and code lines (blank lines not counted)."
    prose_words: int = 0
    visible_code: int = 0
    folded_code: int = 0
    removed_code: int = 0
    longest_code_run: int = 0


def code_lines(source: str) -> int:
    "Non-blank lines of a cell."
    return sum(1 for line in source.splitlines() if line.strip())


def page_stats(notebook: Path) -> PageStats:
    "The reading load of `notebook`'s page."
    stats, run = PageStats(), 0
    for cell in read_nbdev(notebook.read_text(encoding="utf-8")).cells:
        if cell.cell_type == "markdown":
            stats.prose_words += len(cell.source.split())
            run = 0
            continue
        lines, tags = code_lines(cell.source), set(cell.metadata.get("tags", []))
        if tags & REMOVED:
            stats.removed_code += lines
        elif tags & FOLDED:
            stats.folded_code += lines
        else:
            stats.visible_code += lines
            run += lines
            stats.longest_code_run = max(stats.longest_code_run, run)
    return stats


def table(notebooks: list[Path]) -> str:
    "A Markdown table of `page_stats` for each notebook."
    names = [f.name for f in fields(PageStats)]
    rows = ["| page | " + " | ".join(n.replace("_", " ") for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for nb in notebooks:
        stats = page_stats(nb)
        rows.append(f"| {nb.stem} | " + " | ".join(str(getattr(stats, n)) for n in names) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    print(table(args.notebooks or sorted((ROOT / "nbs").glob("*.ipynb"))))


if __name__ == "__main__":
    main()
