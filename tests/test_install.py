"""The chapters' Colab install cell: it installs the library from SOURCE, and the wheel it installs works (shipped
checkpoints, the command); a SOURCE that cannot be installed is an error that says what to do instead."""
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_LINE = 'SOURCE = "git+https://github.com/storyteller-course/storyteller"'


def install_cell(chapter: str) -> str:
    cells = json.loads((ROOT / "nbs" / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    found = ["".join(c["source"]) for c in cells if '"google.colab" in sys.modules' in "".join(c["source"])]
    assert len(found) == 1, f"{chapter}: expected one install cell"
    return found[0]


def test_every_chapter_has_the_same_install_cell():
    chapters = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    plain = install_cell("00_storyworld")
    assert SOURCE_LINE in plain
    for chapter in chapters:
        assert install_cell(chapter) in (plain, plain.replace('"-q", SOURCE]', '"-q", SOURCE, "bitsandbytes"]')), chapter


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment that sees the running environment's packages (torch…, pip) but not its editable
    storyteller, and a fresh wheel. The running environment may itself be a virtualenv, whose packages
    `--system-site-packages` would not see (it means the base interpreter's): a path file lists this environment's
    site-packages instead, and as plain paths their own path files (the editable finder among them) stay unread."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(ROOT)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    (Path(own) / "running-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, next((root / "dist").glob("storyteller-*.whl"))


def run_in(python: Path, code: str) -> subprocess.CompletedProcess:
    "Run `code` as on Colab (a google.colab module) and without this environment's editable storyteller."
    prelude = ("import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
               "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([str(python), "-c", prelude + code], capture_output=True, text=True, env=env, cwd="/",
                          timeout=600)


def test_the_install_cell_installs_a_wheel_that_works(venv):
    python, wheel = venv
    cell = install_cell("00_storyworld").replace(SOURCE_LINE, f'SOURCE = "{wheel}"')
    check = ("import storyteller, storyteller.recipes as recipes; print(storyteller.__file__)\n"
             "model, provenance = recipes.load_shipped('judge'); print(provenance['steps'])\n")
    done = run_in(python, cell + "\n" + check)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = Path(done.stdout.splitlines()[0])
    assert str(python.parents[1]) in str(installed), f"imported {installed}, not the installed wheel"
    assert int(done.stdout.splitlines()[1]) > 0  # the shipped judge came with the wheel
    command = subprocess.run([str(python.parent / "storyteller"), "list"], capture_output=True, text=True, cwd="/")
    assert command.returncode == 0 and "judge" in command.stdout, command.stderr[-2000:]


def test_a_source_that_cannot_be_installed_says_what_to_do(venv, tmp_path):
    python, _ = venv
    cell = install_cell("00_storyworld").replace(SOURCE_LINE, f'SOURCE = "{tmp_path / "missing.whl"}"')
    done = run_in(python, "import importlib.util; importlib.util.find_spec = lambda name: None\n" + cell)
    assert done.returncode != 0 and "pip wheel --no-deps ." in done.stderr and "set SOURCE to its path" in done.stderr
