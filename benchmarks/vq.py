"""Our `VectorQuantizer` against vector-quantize-pytorch at equal settings: time and peak memory.

    pip install -e ".[dev]"   # vector-quantize-pytorch is a dev dependency (parity tests)
    python benchmarks/vq.py [--vectors 65536] [--codes 1024] [--dim 64] [--repeats 5] [--device cpu|cuda]

Both quantizers run in this one process on the same input and the same starting codebook, with an
EMA codebook (decay 0.99), commitment weight 0.25, no k-means and no dead-code restart, in training
mode (so the EMA update is part of the timed work). One step is forward + backward of
`mean(z_q²) + loss`. Time is the median of `--repeats` steps after two warm-up steps. Peak memory
is what the step adds at its peak: on CUDA from torch's allocator statistics, on the CPU from the
process's peak resident set size (VmHWM, reset through /proc/self/clear_refs before each step).
The ratio column is ours / theirs: below 1 is better. Not part of CI.
"""
import argparse
import ctypes
import sys
from pathlib import Path

import torch
from timing import median_seconds

from storyteller.models.vqvae import VectorQuantizer


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(step, device: torch.device) -> float:
    "Memory `step()` adds at its peak, in MiB."
    if device.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(); torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back so the baseline is the live set
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    base = _rss_kib("VmRSS")
    step()
    return (_rss_kib("VmHWM") - base) / 1024


def main(argv=None) -> int:
    from vector_quantize_pytorch import VectorQuantize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=65536)
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    side = 64
    if args.vectors % (side * side):
        parser.error(f"--vectors must be a multiple of {side * side} (images of {side}×{side} positions)")

    torch.manual_seed(0)
    z = torch.randn(args.vectors // (side * side), args.dim, side, side, device=device)
    ours = VectorQuantizer(args.codes, args.dim, beta=0.25, ema=True, decay=0.99).to(device).train()
    theirs = VectorQuantize(dim=args.dim, codebook_size=args.codes, decay=0.99, commitment_weight=0.25,
                            accept_image_fmap=True).to(device).train()
    with torch.no_grad():
        theirs._codebook.embed.copy_(ours.codebook[None])
        theirs._codebook.embed_avg.copy_(ours.codebook[None])
        theirs.eval(); ours.eval()
        agree = (theirs(z)[1] == ours(z).indices).float().mean().item()
        theirs.train(); ours.train()

    def step_ours():
        x = z.clone().requires_grad_()
        out = ours(x)
        (out.z_q.pow(2).mean() + out.loss).backward()

    def step_theirs():
        x = z.clone().requires_grad_()
        z_q, _, loss = theirs(x)
        (z_q.pow(2).mean() + loss.sum()).backward()

    steps = {"storyteller": step_ours, "vector-quantize-pytorch": step_theirs}
    time_ms = {name: 1000 * median_seconds(step, device, args.repeats) for name, step in steps.items()}
    memory = {name: [] for name in steps}
    for _ in range(3):  # alternate, and keep each one's lowest reading
        for name, step in steps.items():
            memory[name].append(peak_extra_mib(step, device))
    memory = {name: min(values) for name, values in memory.items()}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.vectors:,} vectors, {args.codes:,} codes, dim {args.dim}, EMA on, forward + backward, on {where}")
    print(f"same nearest code for {agree:.2%} of the vectors from the same codebook\n")
    print("| | storyteller | vector-quantize-pytorch | ratio |\n|---|---|---|---|")
    a, b = time_ms["storyteller"], time_ms["vector-quantize-pytorch"]
    print(f"| time per step (ms) | {a:.1f} | {b:.1f} | {a / b:.2f}× |")
    a, b = memory["storyteller"], memory["vector-quantize-pytorch"]
    print(f"| peak extra memory (MiB) | {a:.0f} | {b:.0f} | {a / b:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
