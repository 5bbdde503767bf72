"""Checkpoints: round trip, atomic files, and errors that name the file; training on several processes as on one."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from storyteller.core import CheckpointError, fit, load_checkpoint, read_provenance, save_checkpoint
from storyteller.recipes import get_recipe, load_from, load_shipped, train_model


def small():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)).eval()


def test_round_trip_keeps_every_tensor(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # moves the batch-norm running statistics away from their init
    save_checkpoint(model, tmp_path / "m.safetensors", {"name": "m", "steps": 1})
    twin = load_checkpoint(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), tmp_path / "m.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_corrupt_truncated_and_mismatched_files_name_the_file(tmp_path):
    model = nn.Linear(4, 3)
    path = save_checkpoint(model, tmp_path / "lin.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    for name in ("cut", "junk"):
        with pytest.raises(CheckpointError, match=f"{name}.safetensors"):
            load_checkpoint(nn.Linear(4, 3), tmp_path / f"{name}.safetensors")
    with pytest.raises(CheckpointError, match="lin.safetensors: cannot load into Linear"):
        load_checkpoint(nn.Linear(5, 3), path)
    (tmp_path / "lin.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CheckpointError, match="lin.json: provenance file is not valid JSON"):
        read_provenance(path)


def test_train_model_records_provenance(tmp_path):
    model, prov = train_model("judge", out=tmp_path / "judge.safetensors", steps=2, eval_size=32, num_workers=0)
    on_disk = json.loads((tmp_path / "judge.json").read_text(encoding="utf-8"))
    assert on_disk["steps"] == 2 and on_disk["config"]["train"]["steps"] == 2
    assert {"wall_time_s", "hardware", "versions", "git_commit", "metrics", "created"} <= set(on_disk)
    assert set(on_disk["metrics"]) >= {"background", "shape", "colour", "size", "position"}
    again, _ = load_from("judge", tmp_path / "judge.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.cpu().eval()(x)[0], again.cpu()(x)[0])


def test_shipped_checkpoint_with_wrong_config_is_reported(tmp_path, monkeypatch):
    import storyteller.recipes as recipes

    model, prov = train_model("judge", out=tmp_path / "judge.safetensors", steps=1, eval_size=16, num_workers=0)
    prov["config"]["model"]["width"] = 8  # the weights no longer fit the model this config builds
    (tmp_path / "judge.json").write_text(json.dumps(prov), encoding="utf-8")
    monkeypatch.setattr(recipes, "SHIPPED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="judge.safetensors: cannot load into AttributeJudge"):
        load_shipped("judge")


def test_fit_rejects_a_diverging_loss():
    data = [torch.ones(2)]
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(nn.Linear(2, 1), lambda m, b: m(b).sum() * float("nan"), data, steps=2, progress=False)


def test_a_config_that_cannot_build_the_model_names_the_provenance_file(tmp_path, monkeypatch):
    import storyteller.recipes as recipes

    train_model("judge", out=tmp_path / "judge.safetensors", steps=1, eval_size=16, num_workers=0)
    prov = json.loads((tmp_path / "judge.json").read_text(encoding="utf-8"))
    prov["config"]["model"]["width"] = "wide"
    (tmp_path / "judge.json").write_text(json.dumps(prov), encoding="utf-8")
    monkeypatch.setattr(recipes, "SHIPPED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"judge\.json: its config cannot build 'judge'.*'width' is 'wide'"):
        load_shipped("judge")


def test_shipped_files_are_readable_by_everyone(tmp_path):
    path = save_checkpoint(nn.Linear(2, 2), tmp_path / "w.safetensors", {"name": "w"})
    assert path.stat().st_mode & 0o044 == 0o044 and path.with_suffix(".json").stat().st_mode & 0o044 == 0o044


def launch(*args: str, processes: int, tmp_path) -> subprocess.CompletedProcess:
    "Run `args` in `processes` processes under `torchrun` on the CPU (or plainly, for one), from `tmp_path`."
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (runner + ["--no-python"] + list(args)) if processes > 1 else list(args)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_fit_on_two_processes_trains_as_one_with_the_same_global_batch(tmp_path):
    "Each process takes half of every batch: the logged losses and the weights are the single process's."
    script = str(Path(__file__).with_name("fit_processes.py"))
    one, two = (launch(sys.executable, script, processes=n, tmp_path=tmp_path) for n in (1, 2))
    alone, shared = (json.loads(run.stdout.strip().splitlines()[-1]) for run in (one, two))
    assert (alone["processes"], shared["processes"]) == (1, 2)
    torch.testing.assert_close(shared["losses"], alone["losses"], rtol=1e-5, atol=0)
    torch.testing.assert_close(shared["weight"], alone["weight"], rtol=1e-5, atol=1e-6)
    assert len(re.findall(r"regression:\s+0%", two.stderr)) == 1  # one progress bar (tqdm may print its 100% line twice)


def test_storyteller_train_on_two_processes_writes_one_checkpoint(tmp_path):
    command = shutil.which("storyteller")
    assert command, "the storyteller command is installed with the package"
    out = tmp_path / "judge.safetensors"
    done = launch(command, "train", "judge", "--steps", "2", "--set", "batch_size=8", "--set", "eval_size=16",
                  "--set", "num_workers=0", "--out", str(out), processes=2, tmp_path=tmp_path)
    assert done.stdout.count("wrote ") == 1 and len(re.findall(r"judge:\s+0%", done.stderr)) == 1
    model, provenance = load_from("judge", out)
    assert provenance["steps"] == 2 and provenance["config"]["train"]["batch_size"] == 8  # the global batch


SMALL_TEXT_TO_IMAGE = ("batch_size=4", "warmup=0", "eval_prompts=8", "eval_steps=2", "sweep_prompts=0", "num_workers=0")


@pytest.mark.parametrize("name", ["unet", "dit", "prior"])
def test_text_to_image_on_two_processes_trains_as_one_with_the_same_global_batch(name, tmp_path):
    """The model's call is its loss, so DistributedDataParallel averages the gradients, and the loss draws its noise for
    the global batch: two processes log the single process's losses, and the main one writes the checkpoint."""
    script = str(Path(__file__).with_name("train_processes.py"))
    fields = get_recipe(name).config_type.field_names()
    small = [s for s in (*SMALL_TEXT_TO_IMAGE, "likelihood_pictures=8") if s.partition("=")[0] in fields]
    runs = {n: launch(sys.executable, script, name, str(tmp_path / str(n) / f"{name}.safetensors"), "steps=3",
                      *small, processes=n, tmp_path=tmp_path) for n in (1, 2)}
    alone, shared = (json.loads(runs[n].stdout.strip().splitlines()[-1]) for n in (1, 2))
    assert (alone["processes"], shared["processes"]) == (1, 2) and len(alone["losses"]) == 3
    torch.testing.assert_close(shared["losses"], alone["losses"], rtol=1e-5, atol=0)
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == [f"{name}.json", f"{name}.safetensors"]


def test_a_fresh_gpu_profile_home_trains_the_prerequisite_then_unet_on_two_processes(storyteller_home, tmp_path,
                                                                                    monkeypatch):
    "The main process trains the missing mini-CLIP alone while the other waits; then both train the U-Net."
    monkeypatch.setenv("STORYTELLER_PROFILE", "gpu")
    monkeypatch.setenv("STORYTELLER_STEP_CAP", "2")
    sets = [arg for setting in SMALL_TEXT_TO_IMAGE for arg in ("--set", setting)]
    done = launch(shutil.which("storyteller"), "train", "unet", *sets, processes=2, tmp_path=tmp_path)
    assert sorted(p.name for p in storyteller_home.iterdir()) == ["miniclip.json", "miniclip.safetensors", "unet.json",
                                                                  "unet.safetensors"]
    assert done.stdout.count("wrote ") == 2  # mini-CLIP's process, then the main one's U-Net
    provenance = read_provenance(storyteller_home / "unet.safetensors")
    assert provenance["profile"] == "gpu" and provenance["built_on"]["miniclip"]["steps"] == 2
