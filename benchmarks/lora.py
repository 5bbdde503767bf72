"""Our LoRA against peft's on the same Hugging Face CLIP: inference unmerged and merged, a training step, and merged
inference against the base model.

    pip install -e ".[dev]"
    python benchmarks/lora.py [--width 256] [--depth 4] [--batch 64] [--rank 8] [--repeats 5] [--device cpu|cuda]

One random-weight `CLIPModel` (image 32×32, patch 8, StoryWorld's tokenizer) is copied three times: the base model,
ours with `inject_lora` and peft's `get_peft_model`, both adapting q_proj and v_proj of every layer with the same
rank, alpha and adapter weights (checked equal first). Times are medians of `--repeats` runs after two warm-up
runs, the two sides of a row timed in alternation; inference runs under `torch.no_grad()`, a training step is
forward, CLIP loss, backward and an AdamW step. The ratio column is the first over the second: below 1 is faster
for the first. Not part of CI.
"""
import argparse
import copy
import sys
import tempfile

import torch
from timing import paired_median_seconds
from torch import nn

from storyteller.integration.tiny import save_tiny_clip
from storyteller.models.lora import (
    PEFT_PREFIX,
    inject_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    processor_loader,
    storyworld_pairs,
)


def main(argv=None) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPModel, CLIPProcessor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    folder = save_tiny_clip(tempfile.mkdtemp(), width=args.width, depth=args.depth)
    processor = CLIPProcessor.from_pretrained(folder)
    batch = next(iter(processor_loader(storyworld_pairs("train", args.batch), processor, args.batch)))
    batch = {k: v.to(device) for k, v in batch.items()}
    base = CLIPModel.from_pretrained(folder).to(device).eval()
    ours = copy.deepcopy(base)
    inject_lora(ours, ["q_proj", "v_proj"], r=args.rank, alpha=2 * args.rank)
    for layer in lora_layers(ours).values():
        nn.init.normal_(layer.lora_B.weight, std=0.02)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                            target_modules=["q_proj", "v_proj"]))
    theirs.load_state_dict({PEFT_PREFIX + k.replace(".weight", ".default.weight"): v
                            for k, v in lora_state_dict(ours).items()}, strict=False)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        gap = (ours(**batch).logits_per_image - theirs(**batch).logits_per_image).abs().max().item()
    if gap > 1e-5:
        print(f"ours and peft disagree by {gap:.2e}: not the same function", file=sys.stderr)
        return 1

    def infer(model):
        def run():
            with torch.no_grad():
                model(**batch)
        return run

    def train_step(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        def run():
            model(**batch, return_loss=True).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return run

    time_pair = lambda a, b: paired_median_seconds(a, b, device, args.repeats)
    rows = [("inference, adapter unmerged", "peft", *time_pair(infer(ours), infer(theirs)))]
    ours.train(), theirs.train()
    rows.append(("training step", "peft", *time_pair(train_step(ours), train_step(theirs))))
    ours.eval(), theirs.eval()
    merge_lora(ours)
    theirs.merge_adapter()
    rows += [("inference, adapter merged", "peft", *time_pair(infer(ours), infer(theirs))),
             ("inference, merged vs the base model", "base model", *time_pair(infer(ours), infer(base)))]
    print(f"CLIP width {args.width}, depth {args.depth}, LoRA r={args.rank} on q_proj and v_proj, batch {args.batch}, "
          f"{device.type}, {torch.get_num_threads()} threads; ours and peft agree to {gap:.1e}")
    print("| measurement | ours, ms | against | reference, ms | ratio |")
    print("|---|---|---|---|---|")
    for name, other, a, b in rows:
        print(f"| {name} | {1e3 * a:.1f} | {other} | {1e3 * b:.1f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
