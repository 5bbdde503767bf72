"""Two characters in one picture, on more scenes than chapter 6 can afford: each way of drawing Pip and Luna together
against the one-caption baseline, with the shipped U-Net and the shipped character adapters.

    pip install -e ".[dev]"
    python benchmarks/regions.py [--n 96] [--seed 2] [--steps 20] [--guidance 3]

The scenes are `duo_scenes` with a seed the book does not use; every method starts from the same noise and samples
with DDIM at the storyteller's settings. The judge reads each picture; a character counts when the actor at its
position has its shape, colour and size. The ratio column is each method's share of whole scenes (both characters
right) over the one-caption baseline's. Not part of CI: about six minutes on 2 CPU cores at the defaults.
"""
import argparse

import torch

from storyteller.integration.adapters import CharacterIllustrator
from storyteller.models.characters import (
    CharacterLook,
    Region,
    adapter_weights,
    duo_scenes,
    generate_regions,
    recognised_characters,
    solo_caption,
)
from storyteller.recipes import load_shipped
from storyteller.world.scenes import Actor, Scene
from storyteller.world.text import caption

PIP, LUNA = CharacterLook("Pip", "star", "orange", "big"), CharacterLook("Luna", "triangle", "pink", "small")


def unnamed(scene: Scene) -> Scene:
    "The scene with its actors' names left out: what look words alone say."
    return Scene(scene.background, tuple(Actor(a.shape, a.colour, a.size, a.position) for a in scene.actors))


METHODS = {  # each picture as a list of regions; one region over the whole picture is ordinary sampling
    "one caption, looks (baseline)": lambda s: [Region(caption(unnamed(s)), "centre")],
    "regions, looks, no adapters (the storyteller)": lambda s: [
        Region(caption(unnamed(Scene(s.background, (a,)))), a.position) for a in s.actors],
    "regions, looks, each character's adapter": lambda s: [
        Region(caption(unnamed(Scene(s.background, (a,)))), a.position, a.name) for a in s.actors],
    "regions, names and looks, each character's adapter": lambda s: [
        Region(caption(Scene(s.background, (a,))), a.position, a.name) for a in s.actors],
    "regions, names, each character's adapter": lambda s: [
        Region(solo_caption(a.name, a.position, s.background), a.position, a.name) for a in s.actors],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)

    judge = load_shipped("judge")[0]
    artist = CharacterIllustrator()
    weights = {c.name: adapter_weights(artist.model.denoiser, artist.learn_character(c, progress=False)) for c in (PIP, LUNA)}
    scenes = duo_scenes(PIP, LUNA, args.n, seed=args.seed)
    print(f"{args.n} scenes of Pip and Luna (duo seed {args.seed}), DDIM-{args.steps}, guidance {args.guidance:g}")
    print(f"{'method':52s}{'Pip':>7s}{'Luna':>7s}{'both':>7s}{'ratio':>8s}")
    baseline = None
    for label, plan in METHODS.items():
        images = generate_regions(artist.model, [plan(s) for s in scenes], weights, steps=args.steps,
                                       guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0))
        scores = recognised_characters(judge, images, scenes)
        baseline = baseline or max(scores["together"], 1 / args.n)  # a zero baseline counts as one picture
        print(f"{label:52s}{scores['Pip']:7.1%}{scores['Luna']:7.1%}{scores['together']:7.1%}"
              f"{scores['together'] / baseline:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
