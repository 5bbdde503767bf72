"""The book's chapter notebooks, in the book's order, read from `_toc.yml` (the one list the book, the chapter tests and
the gpu-profile run share)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [name for name in re.findall(r"(?:root|file): nbs/(\w+)", (ROOT / "_toc.yml").read_text())
            if (ROOT / "nbs" / f"{name}.ipynb").exists()]
