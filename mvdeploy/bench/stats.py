"""Latency statistics from timed samples (milliseconds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NOISY_CV = 0.10  # coefficient of variation above which a result is flagged as noisy


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    cv: float  # std / mean
    noisy: bool

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(samples_ms, noisy_cv: float = NOISY_CV) -> LatencyStats:
    """min, percentiles (linear interpolation), mean, sample std and CV of a latency sample."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples to summarise")
    if not np.isfinite(x).all() or (x < 0).any():
        raise ValueError("latency samples must be finite and non-negative")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    return LatencyStats(runs=int(x.size), min=float(x.min()), p50=p50, p90=p90, p99=p99,
                        mean=mean, std=std, cv=cv, noisy=cv > noisy_cv)


def drift(medians: list[float]) -> float:
    """Spread of per-repetition medians relative to their median: how much the machine moved
    between interleaved repetitions (0 with a single repetition)."""
    if len(medians) < 2:
        return 0.0
    m = float(np.median(medians))
    return (max(medians) - min(medians)) / m if m > 0 else 0.0
