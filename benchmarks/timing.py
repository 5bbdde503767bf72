"""What the benchmark scripts share: the median wall time of a step after warm-up, synchronised on CUDA."""
import statistics
import time
from typing import Callable

import torch


def median_seconds(step: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    "Median seconds of `repeats` calls of `step` after `warmup` untimed ones; CUDA work is waited for."
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_seconds(step_a: Callable[[], object], step_b: Callable[[], object], device: torch.device,
                          repeats: int, warmup: int = 2) -> tuple[float, float]:
    "Median seconds of `step_a` and of `step_b`, timed in alternation so that drifts in machine speed hit both alike."
    a, b = [], []
    for i in range(warmup + repeats):
        ta = median_seconds(step_a, device, 1, warmup=0)
        tb = median_seconds(step_b, device, 1, warmup=0)
        if i >= warmup:
            a.append(ta)
            b.append(tb)
    return statistics.median(a), statistics.median(b)
