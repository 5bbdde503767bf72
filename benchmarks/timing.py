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
