"""How long each recipe and chapter takes in the gpu profile on a Colab T4: FLOPs counted here, renders timed here.

    python benchmarks/t4_budget.py [--tflops 4] [--render-workers 2] [--count-batch 4] [--json FILE]
    python benchmarks/t4_budget.py --calibrate [--calibrate-steps 5]   # on a GPU: measure the rate instead

No T4 is at hand, so the estimate is arithmetic on two measured quantities and one stated assumption:

- FLOPs, counted with torch's FlopCounterMode on this CPU (exact for the matrix products and convolutions that
  dominate; elementwise work is not counted): one optimiser step of each recipe's gpu config (`fit` or
  `fit_vqgan`, the difference of a 2-step and a 1-step run, so k-means initialisation is left out), counted at
  `--count-batch` images and scaled to the config's batch; one sampling step per picture with guidance; the
  recipe's own evaluation at its configured sizes (scaled from a small run).
- Renders per second: StoryWorld pictures are drawn on the fly by the data loader's workers on the CPU. A Colab
  T4 comes with 2 vCPUs, so this machine's 2 cores with `--render-workers` workers stand in for it (a Colab vCPU
  is a hyperthread, so the real rate may be lower).
- The assumption: a T4 sustains `--tflops` TFLOP/s on these networks under fp16 autocast. Its tensor-core peak is
  65 TFLOP/s, but ResNet-50 training, a well-tuned network, runs at about 400 images/s on a T4 in fp16 -- 5 TFLOP/s
  at 12 GFLOPs per image -- and our networks are narrower (32-256 channels), so the default is 4.

Training time is the larger of compute and rendering (the workers draw the next batches while the GPU trains);
evaluation adds both. A chapter's time counts the recipes it trains and, on a fresh runtime, the ones they need
(mini-CLIP before the U-Net; the VQGAN and mini-CLIP before the DiT), plus the chapter's own live runs and sampling
(chapter 6's character lessons counted as full U-Net training, an overestimate).

`--calibrate` times real training steps of every recipe at its gpu batch on this machine's device (in the mixed
precision `fit` picks there) and prints the TFLOP/s each sustains, the figure to pass as `--tflops`: run it on a
Colab T4 to replace the assumption. Not part of CI.
"""
import argparse
import functools
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

import storyteller.world.data as storyworld_data
from storyteller.core import PROFILES, RecipeConfig, fit
from storyteller.models.diffusion import SAMPLER_SWEEP
from storyteller.models.foundations import clip_step_loss, evaluate_miniclip
from storyteller.models.tokens import evaluate_token_prior
from storyteller.models.vqgan import PerceptualLoss, fit_vqgan, miniclip_perceptual
from storyteller.models.vqvae import evaluate_vqvae, vqvae_loss
from storyteller.recipes import get_recipe, load_shipped, resolve_config
from storyteller.world.data import StoryWorldDataset, storyworld_loader
from storyteller.world.judge import evaluate_judge, judge_loss
from storyteller.world.text import build_tokenizer

GPU = PROFILES["gpu"]


@dataclass
class RecipeCost:
    "What one recipe's gpu run costs: FLOPs and renders of training and of its evaluation."
    name: str
    steps: int
    batch_size: int
    image_size: int
    train_tflop: float  # all training steps
    train_renders: int
    eval_tflop: float
    eval_renders: int


def count_tflop(work) -> float:
    "TFLOPs (10¹²) the matrix products and convolutions of `work()` take."
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops() / 1e12


@contextmanager
def counting_renders():
    "Count the StoryWorld pictures drawn inside the block (the data loader's work on the CPU)."
    drawn, render = [0], storyworld_data.render

    def counted(*args, **kwargs):
        drawn[0] += 1
        return render(*args, **kwargs)

    storyworld_data.render = counted
    try:
        yield drawn
    finally:
        storyworld_data.render = render


def tiny_loader(config: RecipeConfig, n: int):
    "A loader of `n` training items as the recipe's data (its image size and languages)."
    return storyworld_loader("train", batch_size=n, seed=0, image_size=config.data.image_size, lang=config.data.lang)


def step_tflop(run) -> float:
    "TFLOPs of one optimiser step of `run(steps)`: a 2-step run less a 1-step run (one-off work cancels)."
    return count_tflop(lambda: run(2)) - count_tflop(lambda: run(1))


def fit_step(name: str, config: RecipeConfig, n: int, loss_fn) -> float:
    "TFLOPs of one `fit` step of a fresh model of recipe `name` at `n` items."
    build = get_recipe(name).build
    return step_tflop(lambda steps: fit(build(config), loss_fn, tiny_loader(config, n), steps, progress=False))


def vqgan_step(config: RecipeConfig, n: int, perceptual: PerceptualLoss, critic: bool) -> float:
    "TFLOPs of one VQGAN step at `n` items, with the critic (second half of training) or without (first half)."
    build = get_recipe("vqgan").build
    return step_tflop(lambda steps: fit_vqgan(build(config), perceptual, tiny_loader(config, n), steps,
                                              disc_start=0 if critic else steps, progress=False))


@functools.cache
def shipped_perceptual() -> PerceptualLoss:
    "The perceptual loss on the shipped mini-CLIP's features, the one the vqgan recipe trains with."
    return miniclip_perceptual(load_shipped("miniclip")[0])


def vgg16_random() -> PerceptualLoss:
    "VGG16's perceptual layers with random weights: the same FLOPs as the ImageNet weights, nothing downloaded."
    from torchvision.models import vgg16

    from storyteller.models.vqgan import IMAGENET_MEAN, IMAGENET_STD
    return PerceptualLoss(vgg16(weights=None).features, (3, 8, 15, 22, 29), IMAGENET_MEAN, IMAGENET_STD)


def measured_eval(work, scale: float) -> tuple[float, int]:
    "TFLOPs and renders of `work()`, scaled by `scale` (it ran at 1/scale of the configured size)."
    with counting_renders() as drawn:
        tflop = count_tflop(work)
    return tflop * scale, round(drawn[0] * scale)


def sampling_cost(model) -> tuple[float, float]:
    "TFLOPs per picture of one guided sampling step, and per picture once (text encoding, decoding the latents)."
    captions = ["a red circle in the centre of a meadow"] * 4
    one = count_tflop(lambda: model.generate(captions, steps=1)) / len(captions)
    two = count_tflop(lambda: model.generate(captions, steps=2)) / len(captions)
    return two - one, 2 * one - two


def judge_tflop_per_picture(judge) -> float:
    "TFLOPs of the judge's look at one picture."
    return count_tflop(lambda: judge(torch.rand(16, 3, judge.image_size, judge.image_size))) / 16


def text_to_image_eval(model, config: RecipeConfig, judge) -> tuple[float, int]:
    """TFLOPs and renders of the recipe's evaluation: `eval_prompts` pictures at `eval_steps`, then the sampler
    sweep's settings on `sweep_prompts` each; the judge reads each picture and as many real ones (FID)."""
    per_step, per_picture = sampling_cost(model)
    e = config.eval
    settings = SAMPLER_SWEEP if e.sweep_prompts else ()
    pictures = e.eval_prompts + e.sweep_prompts * len(settings)
    steps = e.eval_prompts * e.eval_steps + e.sweep_prompts * sum(s for _, s in settings)
    tflop = steps * per_step + pictures * (per_picture + 2 * judge_tflop_per_picture(judge))
    return tflop, pictures


def recipe_loss(name: str, config: RecipeConfig):
    "The loss `fit` trains recipe `name` with (the text-to-image models compute their own)."
    if name == "miniclip":
        return clip_step_loss(build_tokenizer(), config.train.hard_negatives, 0)
    return {"judge": judge_loss, "vqvae": vqvae_loss}.get(name, lambda model, batch: model(batch))


def train_step_tflop(name: str, config: RecipeConfig, n: int) -> float:
    "TFLOPs of one training step of recipe `name` at `config`'s batch, counted at `n` items."
    train = config.train
    scale = train.batch_size / n
    if name == "vqgan":
        perceptual = vgg16_random() if train.perceptual == "vgg16" else shipped_perceptual()
        before, after = (vqgan_step(config, n, perceptual, critic) * scale for critic in (False, True))
        return (before * train.disc_start + after * (train.steps - train.disc_start)) / train.steps
    return fit_step(name, config, n, recipe_loss(name, config)) * scale


def recipe_cost(name: str, n: int, judge, **overrides) -> RecipeCost:
    "Count recipe `name`'s gpu run: its training steps (counted at `n` items) and its evaluation."
    config = resolve_config(get_recipe(name), GPU, **overrides)
    model, size, train = get_recipe(name).build(config), config.data.image_size, config.train
    evaluations = {
        "judge": lambda k: evaluate_judge(model, "test", k, size),
        "miniclip": lambda k: evaluate_miniclip(model, k, "en", size),
        "vqvae": lambda k: evaluate_vqvae(model, k, size, judge=judge),
        "vqgan": lambda k: evaluate_vqvae(model, k, size, judge=judge),
        "prior": lambda k: evaluate_token_prior(model, k, judge=judge, guidance_scale=config.eval.guidance_scale)}
    if name in evaluations:
        size_of_eval = config.eval.eval_prompts if name == "prior" else config.eval.eval_size
        eval_tflop, eval_renders = measured_eval(lambda: evaluations[name](32), size_of_eval / 32)
    else:
        eval_tflop, eval_renders = text_to_image_eval(model, config, judge)
    return RecipeCost(name, train.steps, train.batch_size, size, train_step_tflop(name, config, n) * train.steps,
                      train.steps * train.batch_size, eval_tflop, eval_renders)


def renders_per_second(image_size: int, workers: int, batches: int = 12, batch_size: int = 128) -> float:
    "StoryWorld training items a `workers`-process data loader delivers per second at `image_size` (after warm-up)."
    loader = iter(storyworld_loader("train", batch_size=batch_size, image_size=image_size, num_workers=workers,
                                    lang="both"))
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def hf_forward_tflop(parts: dict[str, tuple[int, int]]) -> dict[str, float]:
    "Forward TFLOPs per example of each Transformer part, 2 · parameters · tokens (the rule of Kaplan et al. 2020)."
    return {name: 2 * params * tokens / 1e12 for name, (params, tokens) in parts.items()}


def published_parameters() -> dict[str, dict[str, int]]:
    "Parameters of CLIP ViT-B/32's and BLIP-2 OPT-2.7B's parts, from their published configs built on the meta device."
    import transformers

    from storyteller.integration.memory import published_configs

    configs, count = published_configs(), lambda module: sum(p.numel() for p in module.parameters())
    with torch.device("meta"):
        clip = transformers.CLIPModel(configs["openai/clip-vit-base-patch32"])
        blip2 = transformers.Blip2ForConditionalGeneration(configs["Salesforce/blip2-opt-2.7b"])
    return {"clip": {"vision": count(clip.vision_model), "text": count(clip.text_model)},
            "blip2": {"vision": count(blip2.vision_model), "qformer": count(blip2.qformer),
                      "language": count(blip2.language_model)}}


def lora_chapter_tflop(params: dict) -> dict[str, float]:
    """Chapter 6's Hugging Face training in the gpu profile. LoRA trains no base weights, so a step costs the forward
    pass plus the backward pass's gradients of the activations, twice the forward, wherever an adapter lies
    upstream; a frozen part with no adapter costs its forward only."""
    clip = hf_forward_tflop({"vision": (params["clip"]["vision"], 50), "text": (params["clip"]["text"], 20)})
    blip = hf_forward_tflop({"vision": (params["blip2"]["vision"], 257), "qformer": (params["blip2"]["qformer"], 32),
                             "language": (params["blip2"]["language"], 52)})
    language_only = blip["vision"] + blip["qformer"] + 2 * blip["language"]  # LM q, v (Q-Former's q, v too: same)
    everywhere = 2 * sum(blip.values())  # all-linear reaches the vision tower
    return {"CLIP ViT-B/32 + LoRA (300 steps of 64)": 300 * 64 * 2 * sum(clip.values()),
            "BLIP-2 OPT-2.7B + LoRA, 3 variants (40 steps of 8 each)": 40 * 8 * (2 * language_only + everywhere)}


# What each chapter runs in the gpu profile (fresh runtime): the recipes it trains, the ones those need, its live
# runs (recipe, overrides, steps) and its sampling (recipe, pictures, steps); from reading the notebooks' cells.
CHAPTERS = {
    "00 StoryWorld": dict(trains=["judge"], needs=[], live=[("judge", {}, 300)], sampling=[]),
    "01 Foundations": dict(trains=["miniclip"], needs=[], live=[("miniclip", {"hard_negatives": False}, 300)],
                           sampling=[]),
    "02 VQ-VAE": dict(trains=["vqvae"], needs=[], live=[("vqvae", dict(ch=16, z_dim=32, code_dim=16), 900)],
                      sampling=[]),
    "03 VQGAN": dict(trains=["vqgan"], needs=["vqvae"],
                     live=[("vqgan", dict(ch=16, z_dim=32, code_dim=16, disc_start=150), 300)], sampling=[]),
    "04 Diffusion": dict(trains=["unet"], needs=["miniclip"], live=[("unet", dict(ch=16), 300)],
                         sampling=[("unet", 256, 50), ("unet", 256, 25), ("unet", 24, 50), ("unet", 160, 10)]),
    "05 DiT": dict(trains=["dit"], needs=["miniclip", "vqgan", "unet"], live=[("dit", dict(dim=64, depth=2), 300)],
                   sampling=[("dit", 512, 50), ("dit", 24, 50), ("dit", 256, 25), ("unet", 256, 50), ("unet", 256, 25)]),
    "05b Tokens": dict(trains=["prior"], needs=["miniclip", "vqgan"], live=[("prior", dict(dim=64, depth=2), 300)],
                       sampling=[]),
    "06 LoRA": dict(trains=[], needs=["miniclip", "unet"], live=[("unet", {"batch_size": 32}, 800)],
                    sampling=[("unet", 896, 50), ("unet", 768, 50)]),
}


def chapter_minutes(chapter: dict, costs: dict[str, RecipeCost], steps: dict, sampling: dict, rates: dict,
                    tflops: float, extra_tflop: float = 0.0) -> tuple[float, float]:
    "Minutes of the chapter's own work, and of it plus the recipes it needs, on a T4 at `tflops`."
    def training(name: str) -> float:
        c = costs[name]
        drawn = rates["draw", c.image_size] + c.train_renders / rates["drawn"]
        return max(c.train_tflop / tflops, drawn) + c.eval_tflop / tflops + c.eval_renders / rates[c.image_size]

    own = sum(training(name) for name in chapter["trains"]) + extra_tflop / tflops
    for name, overrides, n_steps in chapter["live"]:
        tflop, items, size = steps[name, tuple(sorted(overrides.items()))]
        own += max(tflop * n_steps / tflops, items * n_steps / rates[size])
    for name, pictures, n_steps in chapter["sampling"]:
        per_step, per_picture = sampling[name]
        own += pictures * (n_steps * per_step + per_picture) / tflops
    needs = sum(training(name) for name in chapter["needs"])
    return own / 60, (own + needs) / 60


def seconds_per_step(name: str, config: RecipeConfig, steps: int) -> float:
    "Seconds of one training step of a fresh recipe-`name` model at the config's batch on this machine's device."
    build, batch = get_recipe(name).build, next(iter(tiny_loader(config, config.train.batch_size)))
    if name == "vqgan":
        perceptual = shipped_perceptual()
        run = lambda k: fit_vqgan(build(config), perceptual, [batch], k, disc_start=0, progress=False)
    else:
        run = lambda k: fit(build(config), recipe_loss(name, config), [batch], k, progress=False)
    timed = []
    for k in (1, 1 + steps):  # the difference leaves out building, moving and the first step's warm-up
        start = time.perf_counter()
        run(k)
        timed.append(time.perf_counter() - start)
    return (timed[1] - timed[0]) / steps


def calibrate(steps: int, count_batch: int) -> None:
    "Print each recipe's training rate on this machine's device: TFLOP per step (counted) over seconds per step."
    from storyteller.core import get_device

    print(f"| recipe (gpu config) | TFLOP per step | s per step on {get_device()} | TFLOP/s |\n|---|---|---|---|")
    for name in ("judge", "miniclip", "vqvae", "vqgan", "unet", "dit", "prior"):
        config = resolve_config(get_recipe(name), GPU)
        tflop = train_step_tflop(name, config.override(disc_start=0) if name == "vqgan" else config, count_batch)
        seconds = seconds_per_step(name, config, steps)
        print(f"| {name} | {tflop:.3f} | {seconds:.3f} | {tflop / seconds:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=4.0, help="TFLOP/s a T4 sustains on these networks (fp16)")
    parser.add_argument("--render-workers", type=int, default=2, help="data-loader workers (a Colab T4 has 2 vCPUs)")
    parser.add_argument("--count-batch", type=int, default=4, help="items per step while counting FLOPs")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--calibrate", action="store_true", help="measure the training rate on this device instead")
    parser.add_argument("--calibrate-steps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.calibrate:
        calibrate(args.calibrate_steps, args.count_batch)
        return 0
    from storyteller.world.data import SPLIT_SIZES, drawn_pictures

    judge = load_shipped("judge")[0]
    torch.manual_seed(0)
    rates = {size: renders_per_second(size, args.render_workers) for size in (32, 64)}
    for size in (32, 64):
        start = time.perf_counter()
        drawn_pictures("train", SPLIT_SIZES["train"], size)
        rates["draw", size] = time.perf_counter() - start
    data = StoryWorldDataset("train", image_size=64, lang="both", drawn=True)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=128, shuffle=True, num_workers=args.render_workers))
    next(loader)
    start = time.perf_counter()
    for _ in range(40):
        next(loader)
    rates["drawn"] = 40 * 128 / (time.perf_counter() - start)

    costs = {name: recipe_cost(name, args.count_batch * (2 if name == "miniclip" else 1), judge)
             for name in ("judge", "miniclip", "vqvae", "vqgan", "unet", "dit", "prior")}
    steps = {}
    for chapter in CHAPTERS.values():
        for name, overrides, _ in chapter["live"]:
            config = resolve_config(get_recipe(name), GPU, **overrides)
            steps[name, tuple(sorted(overrides.items()))] = (
                train_step_tflop(name, config, args.count_batch), config.train.batch_size, config.data.image_size)
    sampling = {}
    for name in ("unet", "dit"):
        config = resolve_config(get_recipe(name), GPU)
        sampling[name] = sampling_cost(get_recipe(name).build(config))
    lora = lora_chapter_tflop(published_parameters())

    t = args.tflops
    print(f"Renders per second with {args.render_workers} workers: {rates[32]:,.0f} at 32 px, {rates[64]:,.0f} at 64 px; "
          f"drawn up front: {rates['draw', 32]:.0f} s (32 px) and {rates['draw', 64]:.0f} s (64 px) for the 50,000 "
          f"training scenes, then {rates['drawn']:,.0f} items/s.\nAssumed T4 rate: {t:g} TFLOP/s.\n")
    print("| recipe (gpu) | steps × batch | TFLOP per step | training: compute min | training: drawing min "
          "| evaluation min |\n|---|---|---|---|---|---|")
    for c in costs.values():
        drawing = (rates["draw", c.image_size] + c.train_renders / rates["drawn"]) / 60
        print(f"| {c.name} | {c.steps:,} × {c.batch_size} at {c.image_size} px | {c.train_tflop / c.steps:.3f} | "
              f"{c.train_tflop / t / 60:.1f} | {drawing:.1f} | "
              f"{(c.eval_tflop / t + c.eval_renders / rates[c.image_size]) / 60:.1f} |")
    print("\nSampling, TFLOP per picture-step with guidance: " +
          ", ".join(f"{name} {per_step * 1e3:.2f} G" for name, (per_step, _) in sampling.items()))
    print("Chapter 6's Hugging Face training: " + "; ".join(f"{k}: {v:,.0f} TFLOP" for k, v in lora.items()))
    print("\n| chapter (gpu) | its own work, min | with what it needs on a fresh runtime, min |\n|---|---|---|")
    table = {}
    for title, chapter in CHAPTERS.items():
        extra = sum(lora.values()) if title.startswith("06") else 0.0
        table[title] = chapter_minutes(chapter, costs, steps, sampling, rates, t, extra)
        print(f"| {title} | {table[title][0]:.1f} | {table[title][1]:.1f} |")
    print("\nChapters 7, 7b and 8 run the Hugging Face models for inference only (a few captions, answers and one "
          "story); their time is the download and loading of the checkpoints, which FLOPs do not measure.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tflops": t, "renders_per_s": {str(k): v for k, v in rates.items()},
                       "recipes": {k: asdict(v) for k, v in costs.items()}, "chapters": table}, f, indent=1)
    over = [title for title, (own, _) in table.items() if own > 20]
    print(f"\nOver 20 minutes of their own work: {', '.join(over) or 'none'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
