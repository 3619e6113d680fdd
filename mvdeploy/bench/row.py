"""One results row: a configuration and what measuring it gave. The runner builds these,
results.json stores `to_dict()`, and `load_report` reads rows back through `from_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mvdeploy.bench.matrix import BenchConfig

STATUSES = ("ok", "failed", "unavailable", "interrupted")


@dataclass(frozen=True)
class BenchRow:
    config: BenchConfig
    status: str  # one of STATUSES
    error: str | None = None  # why, when not ok
    artifact: str | None = None
    size_mb: float | None = None
    fidelity: dict | None = None  # status / snr_db / top1_agreement / degenerate (manifest)
    gmacs: float | None = None
    rounds: int | None = None
    latency_ms: dict | None = None  # min, p50, p90, p99, mean, std, cv, noisy, runs
    round_p50_ms: list[float] | None = None
    drift: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    peak_rss_mb: float | None = None
    torch_imported: bool | None = None  # the worker process had torch loaded
    throughput_ips: float | None = None
    gflops: float | None = None
    peak_gflops: float | None = None
    peak_fraction: float | None = None
    # where it ran when that is not this machine: an Android device's serial, manufacturer,
    # model, SoC, Android version, SDK and ABI (bench.android.device_info), or an AI Hub
    # device's name, OS, chipset, compute units per layer and job URL (bench.aihub)
    device: dict | None = None
    # --validate-on-device: the device's outputs against PyTorch's (passed, snr_db, failures)
    device_fidelity: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        figures = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "config"}
        return {**self.config.to_dict(), **figures}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> BenchRow:
        """Back from results.json; KeyError / TypeError / ValueError when it is not a row."""
        if row["status"] not in STATUSES:
            raise ValueError(f"status {row['status']!r} is not one of {', '.join(STATUSES)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"config"}
        return cls(config=BenchConfig.from_row(row),
                   **{k: v for k, v in row.items() if k in names})
