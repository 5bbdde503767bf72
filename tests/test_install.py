"""The chapters' Colab install cell and the package's requirements: the cell installs the library with its `colab`
extra (the versions CI ran, bitsandbytes, what the chapters' tests import) from SOURCE whenever storyteller or
bitsandbytes is missing, and the wheel it installs works (shipped checkpoints, the command); a SOURCE that cannot be
installed is an error that says what to do instead; the extra's pins are the versions installed where the tests run,
so they stay what CI ran; the requirement floors hold here."""
import importlib
import importlib.machinery
import importlib.util
import json
import os
import shlex
import site
import subprocess
import sys
import types
import warnings
import zipfile
from configparser import ConfigParser
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SOURCE_LINE = 'SOURCE = "git+https://github.com/storyteller-course/storyteller"'
COLAB_COMMAND = [sys.executable, "-m", "pip", "install", "-q",
                 "storyteller[colab] @ git+https://github.com/storyteller-course/storyteller"]


def settings(key: str) -> str:
    "A value of settings.ini, which setup.py builds the package's metadata from."
    config = ConfigParser(delimiters=["="])
    config.read(ROOT / "settings.ini", encoding="utf-8")
    return config["DEFAULT"].get(key, "")


def install_cell(chapter: str) -> str:
    "The Colab install cell of `chapter`, which every chapter begins with."
    cells = json.loads((ROOT / "nbs" / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    found = ["".join(c["source"]) for c in cells if '"google.colab" in sys.modules' in "".join(c["source"])]
    assert len(found) == 1, f"{chapter}: expected one install cell"
    return found[0]


def test_every_chapter_has_the_same_install_cell():
    chapters = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    cell = install_cell("00_storyworld")
    assert SOURCE_LINE in cell
    assert [c for c in chapters if install_cell(c) != cell] == []


def test_the_colab_pins_are_the_versions_installed_here():
    pins = [Requirement(line) for line in shlex.split(settings("colab_requirements"))]
    assert {"transformers", "accelerate", "peft", "pytest", "diffusers"} <= {r.name for r in pins}
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin}: the colab extra pins exact versions"
        assert version(pin.name) == spec.version, (f"{pin.name} {version(pin.name)} ran here, but settings.ini's "
                                                   f"colab_requirements pins {spec.version}")


def test_the_requirement_floors_hold_here():
    assert sys.version_info >= tuple(map(int, settings("min_python").split(".")))
    floors = {r.name: r.specifier for r in map(Requirement, shlex.split(settings("requirements")))}
    for name, specifier in floors.items():
        assert specifier.contains(version(name), prereleases=True), f"{name}{specifier}, but {version(name)} is here"
    assert "2.5.1" not in floors["torch"]  # transformers turns torch below 2.6 off (utils/import_utils.py)


def run_cell(monkeypatch, missing: set[str], loaded: tuple[str, ...] = (), cell: str | None = None,
             colab: bool = True) -> list[list[str]]:
    """Run the install cell in this process, on Colab unless `colab` is false, with the modules in `missing` not
    found and those in `loaded` already imported; the pip commands it would run, recorded, not run."""
    commands = []
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for name in ("transformers", "huggingface_hub", "accelerate"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        if name in loaded:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *_: None if name in missing else importlib.machinery.ModuleSpec(name, None))
    monkeypatch.setattr(subprocess, "run",
                        lambda args, **_: commands.append(args) or subprocess.CompletedProcess(args, 0))
    exec(compile(cell or install_cell("00_storyworld"), "install cell", "exec"), {})
    return commands


@pytest.mark.parametrize("missing", [{"storyteller"}, {"bitsandbytes"}, {"storyteller", "bitsandbytes"}])
def test_on_colab_the_cell_installs_the_colab_extra_when_a_module_is_missing(monkeypatch, missing):
    invalidated = []
    monkeypatch.setattr(importlib, "invalidate_caches", lambda: invalidated.append(True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was imported before: no restart needed
        assert run_cell(monkeypatch, missing) == [COLAB_COMMAND]
    assert invalidated


def test_the_cell_installs_nothing_when_all_is_present_or_off_colab(monkeypatch):
    assert run_cell(monkeypatch, set()) == []
    assert run_cell(monkeypatch, {"storyteller", "bitsandbytes"}, colab=False) == []


def test_a_wheel_path_is_installed_as_a_file_url(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cell = install_cell("00_storyworld").replace(SOURCE_LINE, 'SOURCE = "storyteller-0.1.0-py3-none-any.whl"')
    wheel = (tmp_path / "storyteller-0.1.0-py3-none-any.whl").as_uri()
    assert run_cell(monkeypatch, {"storyteller"}, cell=cell)[0][-1] == f"storyteller[colab] @ {wheel}"


def test_modules_imported_before_the_install_ask_for_a_restart(monkeypatch):
    with pytest.warns(UserWarning, match=r"imported transformers, accelerate before .*restart the runtime"):
        run_cell(monkeypatch, {"bitsandbytes"}, loaded=("transformers", "accelerate"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment that sees the running environment's packages (torch…, pip) but not its editable
    storyteller, and a fresh wheel. The running environment may itself be a virtualenv, whose packages
    `--system-site-packages` would not see (it means the base interpreter's): a path file lists this environment's
    site-packages instead, and as plain paths their own path files (the editable finder among them) stay unread.
    A CPU machine has no bitsandbytes, which the colab extra asks for on Linux: its metadata stands in for it."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(ROOT)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip())
    (own / "running-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    if importlib.util.find_spec("bitsandbytes") is None:
        (own / "bitsandbytes-0.46.1.dist-info").mkdir()
        (own / "bitsandbytes-0.46.1.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.46.1\n")
    return python, next((root / "dist").glob("storyteller-*.whl"))


def run_in(python: Path, code: str) -> subprocess.CompletedProcess:
    "Run `code` as on Colab (a google.colab module) and without this environment's editable storyteller."
    prelude = ("import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
               "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([str(python), "-c", prelude + code], capture_output=True, text=True, env=env, cwd="/",
                          timeout=600)


def test_the_wheel_declares_the_floors_and_extras(venv):
    _, wheel = venv
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    assert metadata["Requires-Python"] == ">=" + settings("min_python")
    assert f"Programming Language :: Python :: {settings('min_python')}" in metadata.get_all("Classifier")
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]

    def extra(name: str) -> dict[str, str]:
        "The requirements the wheel adds for extra `name` on Linux, by package."
        on = {"platform_system": "Linux", "extra": name}
        return {r.name: str(r.specifier) for r in requires if r.marker and r.marker.evaluate(on)}

    assert extra("gpu") == {"bitsandbytes": ">=0.46.1"} and extra("colab")["bitsandbytes"] == ">=0.46.1"
    assert extra("colab")["transformers"] == "==" + version("transformers")
    # the dev extra installs the same pins, so a fresh clone's CI (and a contributor's virtualenv) runs the versions
    # Colab gets, whatever newer ones the index offers
    pins = {r.name: str(r.specifier) for r in map(Requirement, shlex.split(settings("colab_requirements")))}
    assert {name: extra("dev").get(name) for name in pins} == pins


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
