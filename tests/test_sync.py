"""The package is exactly what nbdev_export makes of the notebooks."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_export_leaves_no_diff(tmp_path):
    before = {p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "storyteller").rglob("*.py")}
    backup = tmp_path / "storyteller"
    shutil.copytree(ROOT / "storyteller", backup)
    try:
        subprocess.run([str(Path(sys.executable).parent / "nbdev_export")], cwd=ROOT, check=True, capture_output=True)
        after = {p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "storyteller").rglob("*.py")}
    finally:  # leave the tree as we found it, whatever the export did
        for p in (ROOT / "storyteller").rglob("*.py"):
            if p.relative_to(ROOT) not in before:
                p.unlink()
        for rel, data in before.items():
            (ROOT / rel).write_bytes(data)
    changed = sorted(str(p) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"nbdev_export changes {changed}: export the notebooks and commit the result"


def test_notebooks_are_committed_clean():
    import json

    for nb in (ROOT / "nbs").glob("*.ipynb"):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{nb.name}: cells {dirty} have outputs; run nbdev_clean"
