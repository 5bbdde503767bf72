"""Warm-start ablation of a shipped text-to-image model: continue it for a few hundred steps with one change, then
measure it on prompts the book never shows (another world seed), one- and two-actor, beside the unchanged control.

    python benchmarks/warm_start.py unet --change none snr text miniclip --steps 500

Changes: `none` (the control: just more steps), `snr` (min-SNR-5 loss), `text` (fine-tune the text encoder with the
denoising loss), `miniclip` (swap in the shipped chapter-1 text encoder, frozen). Not part of CI: each arm takes
about 20 minutes on 2 CPU cores at 500 steps.
"""
import argparse
import json

from storyteller.core import fit, seed_everything
from storyteller.models.diffusion import ema_model, evaluate_text_to_image
from storyteller.recipes import load_shipped
from storyteller.world.data import storyworld_loader


def continued(name: str, change: str, steps: int, lr: float):
    "The shipped model `name`, trained `steps` more steps (with an EMA) after applying `change`."
    seed_everything(0)
    model, _ = load_shipped(name)
    if change == "snr":
        model.snr_gamma = 5.0
    elif change == "text":
        model.train_text = True
        model.text_encoder.requires_grad_(True)
    elif change == "miniclip":
        model.text_encoder.load_state_dict(load_shipped("miniclip")[0].text_encoder.state_dict())
    trainable = model.trainable()
    averaged = ema_model(trainable, 0.999)
    loader = storyworld_loader("train", batch_size=64, seed=1, lang="both")
    fit(model, lambda m, batch: m(batch), loader, steps, lr=lr, warmup=min(50, steps), desc=change,
        on_step=lambda step, batch: averaged.update_parameters(trainable))
    trainable.load_state_dict(averaged.module.state_dict())
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=["unet", "dit"])
    parser.add_argument("--change", nargs="+", default=["none", "snr", "text", "miniclip"],
                        choices=["none", "snr", "text", "miniclip"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--world", type=int, default=7, help="world seed of the held-out prompts")
    args = parser.parse_args(argv)
    judge = load_shipped("judge")[0]
    print(f"{'change':10s} {'1: shape':>9s} {'1: whole':>9s} {'2: shape':>9s} {'2: colour':>9s} {'2: size':>9s} {'2: whole':>9s}")
    for change in args.change:
        model = continued(args.name, change, args.steps, args.lr)
        one, two = (evaluate_text_to_image(model, args.prompts, n_actors=k, world=args.world, steps=20, judge=judge)
                    for k in (1, 2))
        row = [one["shape"], one["scene"], two["shape"], two["colour"], two["size"], two["scene"]]
        print(f"{change:10s} " + " ".join(f"{v:9.1%}" for v in row), flush=True)
        print(json.dumps({"change": change, "one": one, "two": two}))


if __name__ == "__main__":
    main()
