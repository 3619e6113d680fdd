"""This machine's measured peak: a float32 GEMM at a given thread count.

Run once per thread count and session, in its own pinned process like the configurations
(`python -m mvdeploy.bench.roofline THREADS`), it gives the denominator for "fraction of
peak": how far each runtime's achieved GFLOP/s is from what the hardware did on the easiest
dense work there is.
"""

from __future__ import annotations

import json
import sys
import time

SIZE = 2048  # 17.2 GFLOP per multiply: large enough to reach peak, ~0.1 s on 2 cores


def measure(threads: int, seconds: float = 1.5) -> dict:
    import torch

    from mvdeploy.bench.worker import _pin

    _pin(threads)
    torch.set_num_threads(threads)
    a = torch.randn(SIZE, SIZE)
    b = torch.randn(SIZE, SIZE)
    flop = 2 * SIZE**3
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    began = time.perf_counter()
    runs = 0
    while runs < 3 or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return {"threads": threads, "gflops": flop / best / 1e9, "size": SIZE, "dtype": "float32",
            "runs": runs, "library": "torch.mm"}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]))))
