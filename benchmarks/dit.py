"""Our DiT against diffusers' DiTTransformer2DModel at an equal configuration: training-step time and sampling throughput.

    pip install -e ".[dev]"   # diffusers is a dev dependency (parity tests)
    python benchmarks/dit.py [--dim 192] [--depth 6] [--heads 4] [--size 8] [--patch 1] [--channels 32]
                             [--batch 64] [--repeats 5] [--device cpu|cuda]

Both models run in this one process with the same width, depth, heads, patch size, input size and
channels, adaLN-Zero conditioning on the timestep plus one conditioning vector (ours: a projected
pooled caption, no cross-attention; diffusers': a class-label embedding). A training step is forward,
MSE loss, backward and an AdamW step; sampling throughput is forward passes under `torch.no_grad()`
at four times the batch, in latents per second. Times are medians of `--repeats` runs after two
warm-up runs. On CUDA both also run in bf16 autocast, and the table adds the training step's model
FLOPs utilisation (MFU: 6·N·tokens FLOPs per step over the GPU's dense bf16 peak, which
`--peak-tflops` sets). The ratio column is ours / theirs: below 1 is better. Not part of CI.
"""
import argparse
import contextlib
import sys

import torch
import torch.nn.functional as F
from timing import median_seconds

from storyteller.models.dit import DiT


def main(argv=None) -> int:
    from diffusers import DiTTransformer2DModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("dim", 192), ("depth", 6), ("heads", 4), ("size", 8), ("patch", 1), ("channels", 32),
                          ("batch", 64), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    args = parser.parse_args(argv)
    if args.dim % args.heads:
        parser.error("--dim must be divisible by --heads")
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = DiT(args.size, args.patch, args.channels, args.dim, args.depth, args.heads, context_dim=args.dim,
               cross_attention=False).to(device)
    theirs = DiTTransformer2DModel(num_attention_heads=args.heads, attention_head_dim=args.dim // args.heads,
                                   in_channels=args.channels, num_layers=args.depth, sample_size=args.size,
                                   patch_size=args.patch, num_embeds_ada_norm=1000).to(device)
    n_params = {"storyteller": sum(p.numel() for p in ours.parameters()),
                "diffusers": sum(p.numel() for p in theirs.parameters())}
    tokens = (args.size // args.patch) ** 2

    def inputs(batch):
        x = torch.randn(batch, args.channels, args.size, args.size, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        return x, t, torch.randn(batch, 1, args.dim, device=device), torch.randint(0, 1000, (batch,), device=device)

    def forward(name, x, t, pooled, labels):
        if name == "storyteller":
            return ours(x, t, pooled)
        return theirs(x, timestep=t, class_labels=labels).sample

    def measure(name, autocast):
        model = ours if name == "storyteller" else theirs
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_batch, sample_batch = inputs(args.batch), inputs(4 * args.batch)
        context = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

        def train_step():
            with context():
                loss = F.mse_loss(forward(name, *train_batch).float(), train_batch[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def sample_step():
            with context():
                forward(name, *sample_batch)

        step = median_seconds(train_step, device, args.repeats)
        sample = median_seconds(sample_step, device, args.repeats)
        return step, 4 * args.batch / sample

    rows = [("float32", False)] + ([("bf16 autocast", True)] if device.type == "cuda" else [])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"DiT width {args.dim}, depth {args.depth}, {args.heads} heads, {tokens} tokens of patch {args.patch} over "
          f"{args.channels}×{args.size}×{args.size} latents, batch {args.batch}, on {where}")
    print(f"parameters: storyteller {n_params['storyteller']:,}, diffusers {n_params['diffusers']:,}\n")
    header = "| precision | measure | storyteller | diffusers | ratio |"
    print(header + "\n|---|---|---|---|---|")
    for label, autocast in rows:
        results = {name: measure(name, autocast) for name in ("storyteller", "diffusers")}
        (a_step, a_rate), (b_step, b_rate) = results["storyteller"], results["diffusers"]
        print(f"| {label} | training step (ms) | {a_step * 1e3:.1f} | {b_step * 1e3:.1f} | {a_step / b_step:.2f}× |")
        print(f"| {label} | sampling (latents/s) | {a_rate:,.0f} | {b_rate:,.0f} | {b_rate / a_rate:.2f}× |")
        if autocast:
            mfu = {name: 6 * n_params[name] * tokens * args.batch / results[name][0] / (args.peak_tflops * 1e12)
                   for name in results}
            print(f"| {label} | training MFU | {mfu['storyteller']:.1%} | {mfu['diffusers']:.1%} | |")
    print("\nratio = ours / theirs for times and theirs / ours for throughputs: below 1 is better for us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
