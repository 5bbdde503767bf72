"""The branches our code takes only on a CUDA device, run here by patching: what the Hugging Face loaders are given
(`device_map`, bitsandbytes, the `auto` dtype), the manager's release of GPU memory, `gpu_budget` and
`training_footprint`'s CUDA statistics; and the chapters' offline switch, on in the cpu profile and off in the gpu one.
Nothing here needs a GPU: the fakes record what our code passes and the tests assert on it."""
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from storyteller.integration.adapters import QwenVLAdapter, from_pretrained_kwargs, load_hf
from storyteller.integration.config import OFFLINE_CONFIG
from storyteller.integration.manager import ModelManager
from storyteller.integration.memory import estimate_hf_bytes, gpu_budget
from storyteller.integration.tiny import save_tiny_qwen_vl
from storyteller.models.lora import training_footprint

NBS = Path(__file__).resolve().parents[1] / "nbs"


@pytest.fixture
def cuda(monkeypatch):
    "CUDA present: `torch.cuda.is_available()` is True; returns a setter for native bfloat16 (a T4 has none)."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    native = {"bf16": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native["bf16"] or including_emulation)
    return lambda bf16: native.update(bf16=bf16)


class Placed:
    "A model `from_pretrained` placed by `device_map`: moving it again is the bug (a quantized model cannot be moved)."

    def to(self, *args, **kwargs):
        raise AssertionError("a model placed by device_map was moved with .to()")

    def eval(self):
        self.evaluated = True
        return self


class Loader:
    "A model class whose `from_pretrained` records its arguments."

    calls: list = []

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.calls.append((path, kwargs))
        return Placed()


def test_cuda_loads_are_placed_by_device_map_and_never_moved():
    Loader.calls = []
    model = load_hf(Loader, "some/checkpoint", "cuda:1", "float16")
    assert model.evaluated and Loader.calls == [("some/checkpoint", {"device_map": {"": 1}, "dtype": torch.float16})]
    assert from_pretrained_kwargs("cuda")["device_map"] == {"": 0}


def test_quantized_loads_carry_a_bitsandbytes_config(cuda):
    eight = from_pretrained_kwargs("cuda", quantization="8bit")
    assert eight["dtype"] == torch.float16 and eight["quantization_config"].load_in_8bit  # float16 unless told otherwise
    four = from_pretrained_kwargs("cuda:0", "bfloat16", "4bit")["quantization_config"]
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("bf16, dtype", [(True, "bfloat16"), (False, "float16")])  # an A100; a T4
def test_auto_dtype_is_the_gpus_native_half_precision_in_the_load_and_the_estimate(cuda, monkeypatch, tmp_path, bf16, dtype):
    import transformers

    cuda(bf16)
    path = save_tiny_qwen_vl(tmp_path / "qwen")
    model_class = getattr(transformers, QwenVLAdapter.model_class)
    original, calls = model_class.from_pretrained, []
    monkeypatch.setattr(model_class, "from_pretrained",  # loaded on the CPU, in the dtype it was asked for
                        lambda path, **kwargs: calls.append(kwargs) or original(path, dtype=kwargs["dtype"]))
    qwen = QwenVLAdapter(path, device="cuda", dtype="auto")
    assert calls == [{"device_map": {"": 0}, "dtype": getattr(torch, dtype)}] and qwen.model.dtype == getattr(torch, dtype)
    assert f":{dtype}:" in qwen.fingerprint  # embeddings cached under the dtype the weights have
    spec = SimpleNamespace(path=str(path), device="cuda", dtype="auto", quantization=None, options={})
    assert QwenVLAdapter.estimate_bytes(spec) == estimate_hf_bytes(path, QwenVLAdapter.model_class, dtype)
    assert QwenVLAdapter.estimate_bytes(spec) == sum(t.numel() * t.element_size()
                                                     for t in [*qwen.model.parameters(), *qwen.model.buffers()])


def test_releasing_a_model_collects_it_before_the_cuda_cache_is_emptied(cuda, monkeypatch):
    manager = ModelManager.from_config(OFFLINE_CONFIG)
    model = weakref.ref(manager.get("describer"))
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(model() is None))
    manager.unload("describer")
    assert emptied == [True]  # the model was already gone when the cache was emptied: its memory goes back


def test_eviction_empties_the_cuda_cache(cuda, monkeypatch):
    sizes = {name: ModelManager.from_config(OFFLINE_CONFIG).estimate(name) for name in ("describer", "miniclip")}
    manager = ModelManager.from_config(OFFLINE_CONFIG, memory_budget=max(sizes.values()))  # one at a time
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(manager.loaded()))
    manager.get("describer")
    manager.get("miniclip")
    assert emptied == [[]] and manager.loaded() == ["miniclip"] and manager.counts()["evict"] == 1


def test_gpu_budget_is_a_share_of_the_first_gpus_memory(cuda, monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: asked.append(index) or SimpleNamespace(total_memory=16 * 2**30))
    assert gpu_budget() == int(0.85 * 16 * 2**30) and gpu_budget(0.5) == 8 * 2**30 and asked == [0, 0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_budget() is None  # no budget without CUDA


class OnCuda(nn.Parameter):
    "A CPU parameter that reports a CUDA device: where `training_footprint` only reads the device's type."

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_training_footprint_reads_the_cuda_peak_after_synchronising(monkeypatch):
    calls = []
    for name in ("reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda device, name=name: calls.append((name, device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: calls.append(("peak", device)) or 3 * 2**20)
    model = nn.Linear(4, 2)
    model.weight = OnCuda(model.weight.detach().clone())
    out = training_footprint(model, lambda m, batch: m(batch["x"]).square().mean(), {"x": torch.randn(8, 4)}, steps=2)
    cuda0 = torch.device("cuda", 0)
    assert calls == [("reset_peak_memory_stats", cuda0), *[("synchronize", cuda0)] * 3, ("peak", cuda0)]
    assert out["peak MiB"] == 3.0 and out["gradients MiB"] > 0  # the steps' work is timed only once it has finished


OFFLINE_AT_IMPORT = """
import json, sys
cells = [c for c in json.load(open(sys.argv[1], encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
namespace = {}
for cell in cells[:6]:
    exec(compile("".join(cell["source"]), "cell", "exec"), namespace)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants
        print(json.dumps(constants.HF_HUB_OFFLINE))
        break
else:
    sys.exit("the first cells never import huggingface_hub")
"""


@pytest.mark.parametrize("profile, offline", [("cpu", True), ("gpu", False)])
@pytest.mark.parametrize("notebook", sorted(p.name for p in NBS.glob("*.ipynb") if "HF_HUB_OFFLINE" in p.read_text("utf-8")))
def test_the_chapters_are_offline_in_the_cpu_profile_only(notebook, profile, offline):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(STORYTELLER_PROFILE=profile, STORYTELLER_STEP_CAP="1")  # the cap: no warning for the gpu profile on a CPU
    result = subprocess.run([sys.executable, "-c", OFFLINE_AT_IMPORT, notebook], cwd=NBS, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) is offline  # as huggingface_hub read it, at its import
