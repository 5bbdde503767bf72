"""README's code runs as written: its Python tour in a fresh interpreter, and its command-line blocks in a shell
(under a step cap, so each training is two steps), offline, with a scratch STORYTELLER_HOME and a scratch copy of the
package, so that `storyteller train NAME --ship` rewrites the copy's checkpoints, never the repository's."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN = ("python", "bash")  # the languages README's blocks are written in; each block of them runs here
SHOWN = ("text",)  # listings that are read, not run
SKIPPED_SECTIONS = {  # blocks these sections hold run elsewhere: CI itself, or on hardware a test machine lacks
    "Quick start": "CI runs these commands on a clean clone (.ci/run)",
    "On several GPUs": "needs a machine with two GPUs",
}


def blocks(language: str) -> list[tuple[str, str]]:
    "README's fenced blocks of `language`, each with the heading of the section it stands in."
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            before = FENCE.sub("", text[:match.start()])  # a `# comment` inside a code block is not a heading
            headings = re.findall(r"^#+ (.+)$", before, re.MULTILINE)
            found.append((headings[-1] if headings else "", match.group(2)))
    return found


def run(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    "Run `args` in `tmp_path`, where a copy of the package shadows the installed one (the console script's too)."
    shutil.copytree(ROOT / "storyteller", tmp_path / "package" / "storyteller")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "STORYTELLER_PROFILE": "cpu",
                   "STORYTELLER_HOME": str(tmp_path / "home"), "MPLBACKEND": "Agg",
                   "PYTHONPATH": os.pathsep.join([str(tmp_path / "package"), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(args, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=1200)


def checkpoints(package: Path) -> dict[str, str]:
    "A digest of each file in `package`'s shipped checkpoints folder."
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((package / "checkpoints").rglob("*"))
            if p.is_file()}


def test_the_readme_has_a_python_tour_and_command_blocks():
    assert blocks("python") and blocks("bash")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert {m.group(1) for m in FENCE.finditer(text)} <= set(RUN + SHOWN), "a block in a language this test does not know"
    assert [section for section, _ in blocks("bash")][0] == "Quick start"  # headings are found outside code blocks


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_block_runs_as_written(index, tmp_path):
    _, code = blocks("python")[index]
    done = run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_each_command_block_runs_as_written(index, tmp_path):
    section, code = blocks("bash")[index]
    if section in SKIPPED_SECTIONS:
        pytest.skip(SKIPPED_SECTIONS[section])
    shipped = checkpoints(ROOT / "storyteller")
    done = run(["bash", "-euo", "pipefail", "-c", code], tmp_path, STORYTELLER_STEP_CAP="2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert checkpoints(ROOT / "storyteller") == shipped, "a README command rewrote the repository's checkpoints"
    if "--ship" in code:  # it rewrote the scratch copy's instead
        assert checkpoints(tmp_path / "package" / "storyteller") != shipped


def test_commands_use_the_scratch_copy_of_the_package(tmp_path):
    "What makes `--ship` safe to run here: the console script imports the copy, not the repository's package."
    done = run(["storyteller", "list"], tmp_path)
    assert done.returncode == 0
    done = run([sys.executable, "-c", "import storyteller; print(storyteller.__file__)"], tmp_path / "again")
    assert done.stdout.startswith(str(tmp_path / "again" / "package")), done.stdout
