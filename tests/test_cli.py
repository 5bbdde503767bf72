"""The installed `storyteller` command, end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

STORYTELLER = Path(sys.executable).parent / "storyteller"  # the console script installed with this interpreter


def run(*args, **kw):
    return subprocess.run([str(STORYTELLER), *args], capture_output=True, text=True, **kw)


def test_train_writes_checkpoint_and_provenance(storyteller_home):
    result = run("train", "judge", "--steps", "2", "--set", "eval_size=32", "--set", "num_workers=0")
    assert result.returncode == 0, result.stderr
    assert (storyteller_home / "judge.safetensors").exists()
    provenance = json.loads((storyteller_home / "judge.json").read_text(encoding="utf-8"))
    assert provenance["steps"] == 2 and provenance["name"] == "judge"
    assert "wrote" in result.stdout and "2 steps" in result.stdout


def test_bad_requests_are_clear_errors():
    result = run("train", "judge", "--set", "lr")
    assert result.returncode == 2 and "--set expects KEY=VALUE" in result.stderr
    result = run("train", "unicorn")
    assert result.returncode == 2 and "no recipe named 'unicorn'; known recipes: dit, judge, miniclip, prior, unet" in result.stderr
    result = run("train", "judge", "--set", "steps=two")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert "recipe 'judge': field 'steps' is 'two'; it must be int" in result.stderr
    for key in ("profile", "out"):  # named like train_model's own arguments: refused, not a TypeError
        result = run("train", "unet", "--set", f"{key}=gpu")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "recipe 'unet'" in result.stderr and key in result.stderr
    result = run("train", "miniclip", "--steps", "1", env={**os.environ, "WORLD_SIZE": "2"})  # as under torchrun
    assert result.returncode == 2 and "mini-CLIP training runs in one process" in result.stderr, result.stderr


def test_list_shows_shipped_provenance():
    result = run("list")
    assert result.returncode == 0, result.stderr
    assert "judge" in result.stdout and "miniclip" in result.stdout and "steps in" in result.stdout


def test_tell_keeps_the_models_within_the_gpus_budget(tmp_path, monkeypatch):
    "`tell` gives its manager `gpu_budget()`: on a GPU a model that does not fit beside another evicts it (no OOM)."
    from storyteller.cli import main
    from storyteller.integration.manager import ModelManager

    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: writer, type: writer}\n  - {name: describer, type: describer}\n"
                      "  - {name: illustrator, type: illustrator, options: {steps: 2}}\n")
    sizes = ModelManager.from_config(config)
    budget = max(sizes.estimate(name) for name in sizes.specs)  # room for one model at a time
    monkeypatch.setattr("storyteller.integration.memory.gpu_budget", lambda: budget)  # as on a GPU of that size
    made, original = [], ModelManager.from_config
    monkeypatch.setattr(ModelManager, "from_config",
                        lambda config, memory_budget=None: made.append(original(config, memory_budget)) or made[-1])
    assert main(["tell", "--config", str(config), "--prompt", "A story about Luna, a small pink triangle.",
                 "--out", str(tmp_path / "story")]) == 0
    assert [m.memory_budget for m in made] == [budget] and made[0].counts()["evict"] >= 1
