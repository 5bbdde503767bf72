"""Guidance scale against accuracy for a shipped text-to-image model, on prompts the book never shows: can sampling
alone lift it, or is the limit in the model?

    pip install -e ".[dev]"
    python benchmarks/guidance.py dit [--scales 1.5 3 5 8] [--n 96] [--world 7] [--steps 20]

Every scale samples the same held-out one-actor prompts (`scene_prompts` of another world seed, all three caption
templates) from the same noise with DDIM; the shipped judge reads the pictures. The ratio column is each scale's
shape accuracy over guidance 3's, the book's setting. Not part of CI: about two minutes for the DiT at the
defaults on 2 CPU cores.
"""
import argparse

from storyteller.models.diffusion import evaluate_text_to_image
from storyteller.recipes import load_shipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["dit", "unet"])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.5, 3.0, 5.0, 8.0])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--world", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    judge, model = load_shipped("judge")[0], load_shipped(args.model)[0]
    rows = {scale: evaluate_text_to_image(model, args.n, world=args.world, steps=args.steps, guidance_scale=scale,
                                          judge=judge) for scale in sorted({3.0, *args.scales})}
    print(f"{args.model}: {args.n} one-actor prompts of world {args.world}, DDIM-{args.steps}")
    print(f"{'guidance':>8s}{'shape':>8s}{'colour':>8s}{'scene':>8s}{'FID':>8s}{'ratio':>8s}")
    for scale, r in rows.items():
        print(f"{scale:8g}{r['shape']:8.1%}{r['colour']:8.1%}{r['scene']:8.1%}{r['fid']:8.0f}"
              f"{r['shape'] / max(rows[3.0]['shape'], 1e-9):7.2f}x")


if __name__ == "__main__":
    main()
