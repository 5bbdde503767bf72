"""Every sampling, training, adapter and application path with its models on an accelerator, on a machine without one:
`standin.StandInDevice` puts the models on a stand-in device whose tensors hold CPU data, so that mixing them with
CPU tensors fails as it does on a GPU, while the numbers stay real and can be compared with the CPU's."""
import contextlib
import dataclasses
import importlib
import random

import pytest
import torch
from standin import DEVICE, OnDevice, StandInDevice

from storyteller.core import fit, get_profile, seed_everything
from storyteller.integration.config import parse_config
from storyteller.integration.coordinator import TaskCoordinator
from storyteller.integration.manager import ModelManager
from storyteller.integration.tiny import save_tiny_clip, tiny_hf_config
from storyteller.models.characters import CharacterLook, Region, adapter_weights, generate_regions, teach_character
from storyteller.models.diffusion import DDIM
from storyteller.models.lora import (
    clip_retrieval,
    hf_loss,
    inject_lora,
    merge_lora,
    processor_loader,
    save_adapter,
    storyworld_pairs,
    training_footprint,
    unmerge_lora,
)
from storyteller.recipes import get_recipe, load_shipped, needed_models
from storyteller.world.scenes import render, sample_scene

CAPTIONS = ["a big orange star on the left of a meadow", "Luna the small pink triangle in the centre of the sea"]
IMAGES = [render(sample_scene(random.Random(i), 1), 32) for i in range(2)]
seeded = lambda: torch.Generator().manual_seed(0)


@contextlib.contextmanager
def training_device():
    "`StandInDevice`, with `get_device` and accelerate's `Accelerator` choosing it for training, as they choose CUDA on a GPU."
    import accelerate

    with pytest.MonkeyPatch.context() as patch, StandInDevice():
        patch.setattr(accelerate.Accelerator, "device", property(lambda self: DEVICE))
        for name in ("storyteller.world.judge", "storyteller.models.foundations", "storyteller.models.vqvae",
                     "storyteller.models.vqgan", "storyteller.models.diffusion", "storyteller.models.dit",
                     "storyteller.models.characters", "storyteller.core", "storyteller.recipes"):
            module = importlib.import_module(name)
            if hasattr(module, "get_device"):
                patch.setattr(module, "get_device", lambda prefer=None: DEVICE)
        yield


def on(model: torch.nn.Module) -> set[str]:
    "The device types of a model's parameters and buffers."
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def test_the_stand_in_device_fails_where_cuda_fails():
    with StandInDevice():
        x = torch.ones(2, 3, device=DEVICE)
        assert isinstance(x, OnDevice) and x.device == DEVICE
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(2, 3)                           # a CPU tensor beside a device tensor
        with pytest.raises(RuntimeError, match="same device"):
            x * torch.full((2, 1), 2.0)                    # the sampler bug: per-sample coefficients built on the CPU
        with pytest.raises(RuntimeError, match="indices"):
            torch.arange(5.0)[torch.tensor([0, 1], device=DEVICE)]
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(2, generator=seeded(), device=DEVICE)
        for draw in (lambda: torch.multinomial(x[0], 2, generator=seeded()), lambda: x.clone().uniform_(generator=seeded()),
                     lambda: x.clone().normal_(generator=seeded()), lambda: torch.bernoulli(x / 2, generator=seeded()),
                     lambda: torch.normal(x, 1.0, generator=seeded())):
            with pytest.raises(RuntimeError, match="generator"):  # a CPU generator for a device tensor's random numbers
                draw()
        assert torch.randperm(3, generator=seeded()).device.type == "cpu"  # on the CPU it is the right generator
        assert (x * torch.tensor(2.0)).sum().item() == 12  # CPU scalars mix, as on CUDA
        assert type(x.cpu()) is torch.Tensor and x[torch.tensor([0])].device == DEVICE
        assert torch.tensor([1, 2], device=DEVICE).tolist() == [1, 2]


@pytest.mark.parametrize("recipe", ["unet", "dit"])
@pytest.mark.parametrize("sampler", [{"sampler": "ddim"}, {"sampler": DDIM(eta=1.0)}, {"sampler": "ddpm"}])
def test_sampling_on_a_device_draws_what_the_cpu_draws(recipe, sampler):
    model = load_shipped(recipe)[0]
    on_cpu = model.generate(CAPTIONS, steps=4, generator=seeded(), **sampler)
    with StandInDevice():
        model.to(DEVICE)
        drawn = model.generate(CAPTIONS, steps=4, generator=seeded(), **sampler)
    torch.testing.assert_close(drawn, on_cpu, atol=1e-5, rtol=0)


def test_the_token_prior_draws_on_a_device_what_it_draws_on_the_cpu():
    "Its codes come from a CPU generator's uniform numbers, whatever device the logits are on (chapter 5b)."
    model = load_shipped("prior")[0]
    on_cpu = model.generate(CAPTIONS, generator=seeded(), top_k=50)
    with StandInDevice():
        model.to(DEVICE)
        drawn = model.generate(CAPTIONS, generator=seeded(), top_k=50)
    torch.testing.assert_close(drawn, on_cpu, atol=1e-5, rtol=0)


SMALL = {"steps": 2, "batch_size": 4, "eval_size": 8, "eval_prompts": 4, "eval_steps": 2, "sweep_prompts": 0,
         "disc_start": 1, "likelihood_pictures": 8, "num_workers": 0}


@pytest.mark.parametrize("name", ["judge", "miniclip", "vqvae", "vqgan", "unet", "dit", "prior"])
def test_every_recipe_trains_and_evaluates_on_a_device_as_on_the_cpu(name):
    "Two steps of each recipe and its evaluation: on the device, the metrics are the CPU's (same seed, same data)."
    recipe, profile = get_recipe(name), get_profile("cpu")
    config = recipe.config(profile).override(**{k: v for k, v in SMALL.items() if k in recipe.config_type.field_names()})

    def train() -> tuple[torch.nn.Module, dict]:
        models, _ = needed_models(recipe, config, profile)  # the shipped models it builds on and the judge, on the device
        seed_everything(0)
        model = recipe.build(config)
        return model, recipe.train(model, config, progress=False, **models)

    _, on_cpu = train()
    with training_device():
        model, metrics = train()
    assert on(model) == {DEVICE.type}
    timeless = lambda scores: {k: v for k, v in scores.items() if k != "seconds"}
    # the stand-in runs some ops through other kernels than the CPU's, which round differently; VQGAN's adaptive weight
    # (a ratio of two gradient norms) grows that to 0.2% in two steps, the others stay within 1e-4
    assert metrics.keys() == on_cpu.keys() and timeless(metrics) == pytest.approx(timeless(on_cpu), rel=1e-2, abs=1e-6)


def test_character_adapters_train_swap_and_draw_regions_on_a_device(tmp_path):
    regions = [[Region(CAPTIONS[0], "left", "Pip"), Region(CAPTIONS[1], "centre")]]
    draw = lambda model, folder: generate_regions(model, regions, {"Pip": adapter_weights(model.denoiser, folder)},
                                                       steps=3, generator=seeded())
    unet = load_shipped("unet")[0]
    with training_device():
        history = teach_character(unet, CharacterLook("Pip", "star", "orange", "big"), steps=2, batch_size=4,
                                       n_examples=4, progress=False)
        assert on(unet) == {DEVICE.type} and len(history.losses) == 2
        folder = save_adapter(unet.denoiser, tmp_path / "pip")
        drawn = draw(unet, folder)
        merge_lora(unet.denoiser)
        unmerge_lora(unet.denoiser)
    on_cpu = draw(load_shipped("unet")[0], folder)  # the adapter it trained, on the CPU
    torch.testing.assert_close(drawn, on_cpu, atol=1e-5, rtol=0)


def test_lora_on_a_hugging_face_clip_trains_on_a_device(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    source = save_tiny_clip(tmp_path / "clip")
    clip, processor = CLIPModel.from_pretrained(source), CLIPProcessor.from_pretrained(source)
    inject_lora(clip, ["q_proj", "v_proj"], r=4, alpha=8)
    loader = processor_loader(storyworld_pairs("train", 8), processor, 4)
    with training_device():
        fit(clip, hf_loss, loader, 2, progress=False)
        batch = {k: v.to(DEVICE) for k, v in next(iter(loader)).items()}
        assert on(clip) == {DEVICE.type} and set(clip_retrieval(clip, batch))
        assert training_footprint(clip, hf_loss, batch, steps=1)["gradients MiB"] > 0


def device_manager(config: dict, device: torch.device) -> ModelManager:
    "A manager over `config` with every model that takes a device on `device`."
    return ModelManager([dataclasses.replace(s, device=str(device)) if s.type != "writer" else s
                         for s in parse_config(config)])


def every_task(coordinator: TaskCoordinator, name: str) -> list:
    "What model `name` gives for each capability it has, on the same inputs."
    from storyteller.integration.adapters import Capability

    model, does = coordinator.manager.get(name), coordinator.manager.capabilities(name)
    out = []
    if Capability.IMAGE_EMBEDDING in does:
        out.append(model.similarity(IMAGES, CAPTIONS))
    if Capability.CAPTIONING in does:
        out.append(model.caption(IMAGES, "short", "en"))
    if Capability.VQA in does:
        out.append(model.answer_question(IMAGES, ["What colour is it?", "Where is it?"]))
    if Capability.TEXT_GENERATION in does:
        out.append(model.generate_text(["Tell a story about Pip."]))
    if Capability.STREAMING in does:
        out.append("".join(model.stream_text("Describe it.", IMAGES[0])))
    return out


@pytest.mark.parametrize("name", ["clip", "blip2", "llava", "qwen2-vl", "qwen2.5-vl"])
def test_every_hugging_face_capability_runs_on_a_device_as_on_the_cpu(name, tmp_path):
    config = tiny_hf_config(tmp_path)
    expected = every_task(TaskCoordinator(device_manager(config, torch.device("cpu"))), name)
    with StandInDevice():
        coordinator = TaskCoordinator(device_manager(config, DEVICE))
        got = every_task(coordinator, name)
        assert on(coordinator.manager.get(name).model) == {DEVICE.type}
    for mine, cpu in zip(got, expected, strict=True):
        if torch.is_tensor(cpu):
            torch.testing.assert_close(mine, cpu, atol=1e-5, rtol=0)  # similarities, to rounding
        else:
            assert mine == cpu  # texts, exactly


def test_the_storyteller_tells_a_story_on_a_device(tmp_path):
    from storyteller.app import APP_CONFIG, StorytellerAI
    from storyteller.story import load_story

    def tell(device: torch.device):
        teller = StorytellerAI(TaskCoordinator(device_manager(APP_CONFIG, device)))
        teller.create_story("Pip and Luna")
        for name, look in (("Pip", "a big orange star"), ("Luna", "a small pink triangle")):
            teller.add_character(name, look)
            teller.teach_character(name, progress=False)
        teller.write_story()
        teller.continue_story("Then Pip and Luna went to the sea.")
        for i in range(len(teller.current.scenes)):
            teller.ask(i, teller.suggest_question(i))
        teller.add_character("Max", image=IMAGES[0])
        teller.visualise_character("Pip")
        return load_story(teller.save(tmp_path / device.type))

    on_cpu = tell(torch.device("cpu"))
    with StandInDevice():
        story = tell(DEVICE)
    from storyteller.story import story_record
    assert story_record(story) == story_record(on_cpu)  # every text, name, question and answer, exactly
    pictures = lambda s: [c.image for c in s.characters.values()] + [scene.image for scene in s.scenes]
    for mine, cpu in zip(pictures(story), pictures(on_cpu), strict=True):
        assert (mine is None) == (cpu is None)
        if cpu is not None:  # the same picture, to rounding: float sums in another order may tip a value by one
            diff = (torch.tensor(list(mine.tobytes())) - torch.tensor(list(cpu.tobytes()))).abs()
            assert mine.size == cpu.size and diff.max() <= 1 and (diff > 0).float().mean() < 0.01


MIXED_PRECISION_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
import standin
if {on_device!r}:
    standin.install()  # before the modules that import get_device
from storyteller.core import default_mixed_precision, get_profile, seed_everything
from storyteller.recipes import get_recipe, needed_models

assert default_mixed_precision() == {precision!r}
for name in ("vqgan", "unet"):  # the GAN's two accelerators, and a recipe trained through forward
    recipe, profile = get_recipe(name), get_profile("cpu")
    small = {{k: v for k, v in {small!r}.items() if k in recipe.config_type.field_names()}}
    config = recipe.config(profile).override(**small)
    models, _ = needed_models(recipe, config, profile)
    seed_everything(0)
    model = recipe.build(config)
    metrics = recipe.train(model, config, progress=False, **models)
    assert {{p.dtype for p in model.parameters()}} == {{torch.float32}}, name    # the master weights stay float32
    assert model.forward.__func__ is type(model).forward, name   # accelerate's autocast wrapper is gone after training
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in metrics.items() if k != "seconds"), (name, metrics)
    print(name, "ok")
"""


@pytest.mark.parametrize(("precision", "on_device"), [("bf16", True), ("fp16", False)])
def test_recipes_train_under_the_mixed_precision_a_gpu_gets(precision, on_device):
    """fit's autocast path, on CPU kernels where they exist: bf16 (Ampere on) on the stand-in device; fp16 (a T4) on the
    CPU, since accelerate refuses fp16 on a device without autocast. Accelerate fixes the precision once a process, so
    each runs in a subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = MIXED_PRECISION_RUN.format(tests=str(Path(__file__).parent), precision=precision, small=SMALL, on_device=on_device)
    environment = {**os.environ, "ACCELERATE_MIXED_PRECISION": precision}  # as `accelerate launch --mixed_precision` sets it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=environment)
    assert done.returncode == 0 and done.stdout.split() == ["vqgan", "ok", "unet", "ok"], done.stderr[-3000:]
