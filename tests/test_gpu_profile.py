"""Every chapter executes in the `gpu` profile on this machine, as on a Colab GPU but with STORYTELLER_STEP_CAP=2:
64-px shapes, gpu configs and the gpu-only cells (those the book build skips with `#| eval: false`) all run, with
tiny random-weight stand-ins for the hub checkpoints in an offline Hugging Face cache and random VGG16 weights where
torchvision would download them. Each chapter's kernel first makes the stand-in accelerator of `standin.py` its device
(bf16 autocast in training included), so the chapter's own cells mix devices only where CUDA would let them; on a
machine with CUDA they meet the real device instead (benchmarks/gpu_check.py runs this there). The cells
that check the book's numbers run too; their `claim`s on measured numbers are waived under the step cap (two steps
measure nothing), their plain asserts are not. Models trained by one chapter are found by the next, as in a reader's
session.

Opt in: `python -m pytest -m gpu_smoke tests/test_gpu_profile.py -s` (each chapter's wall time is printed)."""
import hashlib
import json
import os
import time
from pathlib import Path

import nbformat
import pytest
import torch
from chapters import CHAPTERS
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SNAPSHOT = "0" * 40  # the commit the fake cache says each stand-in was downloaded at
TIMES: dict[str, float] = {}


def checkpoints(home: Path) -> dict[str, str]:
    "A digest of each checkpoint the reader's session has written to `home`."
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.glob("*.safetensors"))}


def hub_standins(cache: Path) -> None:
    "Tiny models of the real classes under the hub ids the gpu cells name, laid out as the Hugging Face cache does."
    from storyteller.integration.config import GPU_CONFIG
    from storyteller.integration.tiny import (
        save_tiny_blip2,
        save_tiny_blip2_retrieval,
        save_tiny_clip,
        save_tiny_llava,
        save_tiny_qwen_vl,
    )
    from storyteller.models.lora import BLIP2_OPT, CLIP_BASE

    savers = {CLIP_BASE: save_tiny_clip, BLIP2_OPT: save_tiny_blip2, "Salesforce/blip2-itm-vit-g": save_tiny_blip2_retrieval,
              "llava-hf/llava-1.5-7b-hf": save_tiny_llava, "Qwen/Qwen2-VL-2B-Instruct": lambda d: save_tiny_qwen_vl(d, "2")}
    named = {m["path"] for m in GPU_CONFIG["models"] if m.get("path")}
    named |= {m["options"]["retrieval_path"] for m in GPU_CONFIG["models"] if "retrieval_path" in m.get("options", {})}
    assert named <= set(savers), f"no stand-in for {named - set(savers)}"
    for hub_id, save in savers.items():
        repo = cache / f"models--{hub_id.replace('/', '--')}"
        save(repo / "snapshots" / SNAPSHOT)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(SNAPSHOT)


@pytest.fixture(scope="module")
def gpu_smoke_env(tmp_path_factory):
    "The environment every chapter's kernel inherits: gpu profile, step cap 2, scratch home, offline stand-ins."
    from torchvision.models import vgg16

    root = tmp_path_factory.mktemp("gpu-smoke")
    hub_standins(root / "hf-hub")
    weights = root / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"  # torchvision's file name for VGG16
    weights.parent.mkdir(parents=True)
    torch.save(vgg16().state_dict(), weights)
    env = {"STORYTELLER_PROFILE": "gpu", "STORYTELLER_STEP_CAP": "2", "STORYTELLER_HOME": str(root / "home"),
           "HF_HUB_CACHE": str(root / "hf-hub"), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(root / "torch")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    print("\n".join(f"{name}: {seconds / 60:.1f} min" for name, seconds in TIMES.items()))


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_in_the_gpu_profile(gpu_smoke_env, chapter):
    nb = nbformat.read(ROOT / "nbs" / f"{chapter}.ipynb", as_version=4)
    if not torch.cuda.is_available():  # on a GPU the chapter meets the real device
        nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                                                     "import standin\nstandin.install()"))
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,  # report every failing cell
                            resources={"metadata": {"path": str(ROOT / "nbs")}})
    home = Path(gpu_smoke_env["STORYTELLER_HOME"])
    before, start = checkpoints(home), time.perf_counter()
    client.execute()
    TIMES[chapter] = time.perf_counter() - start
    failures = [f"cell {cell.get('id')} ({cell.source.splitlines()[0][:60]!r}): {out.ename}: {out.evalue[:300]}"
                for cell in nb.cells if cell.cell_type == "code"
                for out in cell.get("outputs", []) if out.output_type == "error"]
    print("\n  ".join([f"{chapter}: {TIMES[chapter] / 60:.1f} min in the gpu profile, step cap 2", *failures]))
    retrained = [name for name, digest in before.items() if checkpoints(home).get(name) != digest]
    if os.environ.get("STORYTELLER_SMOKE_LOG"):  # benchmarks/gpu_check.py reads each chapter's outcome as it comes
        with open(os.environ["STORYTELLER_SMOKE_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"chapter": chapter, "minutes": round(TIMES[chapter] / 60, 2), "failures": failures,
                                  "retrained": retrained}) + "\n")
    assert not failures, f"{chapter} in the gpu profile:\n" + "\n".join(failures)
    assert not retrained, f"{chapter} retrained what an earlier chapter trained (a later chapter must reuse it): {retrained}"
