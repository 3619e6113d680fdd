"""What to measure: a matrix of configurations from flags or a suite file (TOML).

A configuration is one model x patch sizes x resolution x runtime x precision x threads x batch
on one target. Combinations a runtime cannot do (int8 in eager PyTorch, Core ML on Linux's cpu
target, ...) are dropped with the reason, so a matrix never fails for being a matrix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mvdeploy.backends import all_recipes, spec
from mvdeploy.backends import runtimes as registry_runtimes
from mvdeploy.errors import ConfigError
from mvdeploy.models import (
    PATCH_PRESETS,
    check_attention_memory,
    format_patch_sizes,
    get_model_cfg,
    parse_patch_sizes,
)
from mvdeploy.models.mobilevit import parse_resolution

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# the PyTorch model itself, eager or compiled: runtimes that time no exported artifact
EAGER_RUNTIMES: dict[str, tuple[str, ...]] = {"torch": ("cpu", "cuda"),
                                              "torch-compile": ("cpu", "cuda")}
OPT_IN_RUNTIMES = ("torch-compile",)  # compiles in every worker: only when asked for
ACCELERATORS: dict[str, tuple[str, ...]] = {  # target -> accelerator choices (first: default)
    "cpu": ("cpu",),
    "cuda": ("cuda", "tensorrt"),  # tensorrt: onnxruntime's TensorRT provider
    "android": ("xnnpack", "gpu", "cpu"),  # benchmark_model flags
    "apple": ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"),  # Core ML compute units
    "aihub": ("all", "npu", "gpu", "cpu"),  # AI Hub's --compute_unit (all: its best choice)
}
# bump when mvdeploy exports different artifacts for the same settings, so bench caches made
# before are not timed as if they were today's (2: per-format graph forms, fused ONNX attention;
# 3: int8-static keeps the groups its search picks float)
ARTIFACT_REVISION = 3
IMPLS = ("mvdeploy", "transformers")  # transformers: the peer baseline, exported plainly


def runtime_formats() -> dict[str, str | None]:
    """Runtime -> the export format it runs (None: the PyTorch model itself)."""
    return {**dict.fromkeys(EAGER_RUNTIMES), **{r: s.name for r, s in registry_runtimes().items()}}


def target_runtimes(target: str) -> tuple[str, ...]:
    """The runtimes that can time on `target` (the formats' own say where they run)."""
    eager = [r for r, targets in EAGER_RUNTIMES.items() if target in targets]
    exported = [r.name for s in registry_runtimes().values() for r in s.runtimes
                if target in r.targets]
    return tuple(dict.fromkeys([*eager, *exported]))


def peer_runtimes() -> tuple[str, ...]:
    """Where the transformers peer exists: eager PyTorch and formats with a plain export."""
    return ("torch", *(r for r, s in registry_runtimes().items() if s.peer))


@dataclass(frozen=True)
class BenchConfig:
    model: str
    patch: str  # canonical text, e.g. "2,2,2" or "8,4,2"
    resolution: tuple[int, int]
    runtime: str
    precision: str = "fp32"
    threads: int = 1
    batch: int = 1
    target: str = "cpu"
    accelerator: str = "cpu"
    impl: str = "mvdeploy"
    hub_device: str | None = None  # target aihub: the AI Hub device's name ("Samsung Galaxy S24")

    @property
    def preset(self) -> str:
        """A or B where the patch sizes are a preset, else the sizes."""
        sizes = parse_patch_sizes(self.patch)
        return next((k for k, v in PATCH_PRESETS.items() if v == sizes), self.patch)

    @property
    def format(self) -> str | None:
        return runtime_formats()[self.runtime]

    @property
    def key(self) -> str:
        """Stable, readable identity: what --compare matches on."""
        h, w = self.resolution
        return (f"{self.model}|{self.patch}|{h}x{w}|{self.runtime}|{self.precision}|"
                f"t{self.threads}|b{self.batch}|{self.target}|{self.accelerator}|{self.impl}"
                + (f"|{self.hub_device}" if self.hub_device else ""))

    @property
    def label(self) -> str:
        h, w = self.resolution
        peer = " (transformers)" if self.impl == "transformers" else ""
        return (f"{self.model} {self.preset} {h}x{w} {self.runtime}{peer} {self.precision} "
                f"t{self.threads} b{self.batch}"
                + (f" {self.accelerator}" if self.target != "cpu" else "")
                + (f" on {self.hub_device}" if self.hub_device else ""))

    @classmethod
    def from_row(cls, row: dict) -> BenchConfig:
        """Back from a results row (to_dict plus figures)."""
        names = [f.name for f in fields(cls)]  # fields added later default when absent
        return cls(**{**{k: row[k] for k in names if k in row},
                      "resolution": tuple(row["resolution"])})

    def artifact_key(self, weights_digest: str) -> str:
        """Cache key of the artifact this configuration times (threads etc. do not matter)."""
        data = {"model": self.model, "patch": self.patch, "resolution": self.resolution,
                "format": self.format, "precision": self.precision, "batch": self.batch,
                "impl": self.impl, "weights": weights_digest}
        if self.impl == "mvdeploy":  # the peer's plain export does not change with mvdeploy
            data["revision"] = ARTIFACT_REVISION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["resolution"] = list(self.resolution)
        out["preset"] = self.preset
        out["key"] = self.key
        return out


@dataclass(frozen=True)
class Timing:
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 2.0
    repetitions: int = 3  # interleaved rounds; samples are pooled across them
    timeout_s: float = 600.0  # per configuration and round

    def check(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 or self.repetitions < 1:
            raise ConfigError("timing: warmup >= 0, min_runs >= 1, min_seconds >= 0 and "
                              "repetitions >= 1 are needed")


QUICK = Timing(warmup=2, min_runs=5, min_seconds=0.0, repetitions=1)


@dataclass
class Matrix:
    configs: list[BenchConfig]
    skipped: list[dict] = field(default_factory=list)  # config + reason, never run


def _supported(cfg: BenchConfig) -> str | None:
    """Why a combination cannot run, or None."""
    if cfg.runtime not in target_runtimes(cfg.target):
        return (f"{cfg.runtime} does not run on target {cfg.target} (it runs "
                f"{', '.join(target_runtimes(cfg.target))})")
    if cfg.accelerator not in ACCELERATORS[cfg.target]:
        return f"accelerator {cfg.accelerator} is not one of {cfg.target}'s"
    fmt = cfg.format
    if fmt is None:
        allowed = ("fp32", "fp16") if cfg.target == "cuda" else ("fp32",)
        if cfg.precision not in allowed:
            return f"{cfg.runtime} on {cfg.target} times {' and '.join(allowed)} only"
        if cfg.target == "cuda" and cfg.accelerator != "cuda":
            return f"{cfg.runtime} runs on cuda; {cfg.accelerator} is onnxruntime's provider"
    elif cfg.precision not in spec(fmt).recipes:
        return f"{fmt} has no {cfg.precision} recipe"
    if cfg.impl == "transformers":
        if parse_patch_sizes(cfg.patch) != PATCH_PRESETS["A"]:
            return "transformers' MobileViT has one patch size for all stages (preset A only)"
        if cfg.precision != "fp32" or cfg.runtime not in peer_runtimes():
            return ("the peer baseline is plain fp32 export: "
                    f"{', '.join(peer_runtimes())}")
    if cfg.target == "android" and cfg.batch != 1:
        return "benchmark_model times batch 1"
    if cfg.target == "aihub" and cfg.impl != "mvdeploy":
        return "the aihub target profiles mvdeploy's artifacts"
    return None


def _canonical_patch(spec: str) -> str:
    try:
        return format_patch_sizes(parse_patch_sizes(spec)).split(" ")[0]
    except ConfigError as exc:
        raise ConfigError(f"--patch {spec!r}: {exc}") from None


def build_matrix(*, models: Sequence[str], patches: Sequence[str], resolutions: Sequence[str],
                 runtimes: Sequence[str], precisions: Sequence[str], threads: Sequence[int],
                 batches: Sequence[int] = (1,), target: str = "cpu",
                 accelerators: Sequence[str] = (), peer: bool = False,
                 devices: Sequence[str] = ()) -> Matrix:
    """Every combination, checked; unsupported ones go to `skipped` with their reason."""
    if target not in ACCELERATORS:
        raise ConfigError(f"unknown target {target!r}: choose one of {', '.join(ACCELERATORS)}")
    for name in models:
        get_model_cfg(name)
    known_runtimes = runtime_formats()
    for runtime in runtimes:
        if runtime not in known_runtimes:
            raise ConfigError(f"unknown runtime {runtime!r}: choose from "
                              f"{', '.join(known_runtimes)}")
    known = set(all_recipes())
    for precision in precisions:
        if precision not in known:
            raise ConfigError(f"unknown precision {precision!r}: choose from "
                              f"{', '.join(sorted(known))}")
    if any(t < 1 for t in threads) or any(b < 1 for b in batches):
        raise ConfigError("--threads and --batch must be at least 1")
    accelerators = list(accelerators) or [ACCELERATORS[target][0]]
    for accelerator in accelerators:
        if accelerator not in ACCELERATORS[target]:
            raise ConfigError(f"--accelerator {accelerator!r} is not available on {target}: "
                              f"choose from {', '.join(ACCELERATORS[target])}")
    if not all((models, patches, resolutions, runtimes, precisions, threads, batches)):
        raise ConfigError("the matrix is empty: every dimension needs at least one value")
    if target == "aihub" and not devices:
        raise ConfigError('--target aihub needs --device NAME, e.g. --device "Samsung Galaxy '
                          'S24" (repeat for several; AI Hub\'s device list names them)')
    if devices and target != "aihub":
        raise ConfigError(f"--device names an AI Hub device: it needs --target aihub, not "
                          f"{target}")
    hub_devices: list[str | None] = list(dict.fromkeys(devices)) or [None]
    models, runtimes, precisions, threads, batches = (
        list(dict.fromkeys(v)) for v in (models, runtimes, precisions, threads, batches))
    sizes = list(dict.fromkeys(parse_resolution(r) for r in resolutions))
    canonical = list(dict.fromkeys(_canonical_patch(p) for p in patches))
    for (height, width), patch in itertools.product(sizes, canonical):
        check_attention_memory(height, width, parse_patch_sizes(patch))
    matrix = Matrix([])
    impls = ["mvdeploy", "transformers"] if peer else ["mvdeploy"]
    for combo in itertools.product(models, canonical, sizes, runtimes, precisions, threads,
                                   batches, accelerators, impls, hub_devices):
        model, patch, size, runtime, precision, t, b, accelerator, impl, device = combo
        cfg = BenchConfig(model, patch, size, runtime, precision, t, b, target, accelerator,
                          impl, device)
        reason = _supported(cfg)
        if reason is None:
            matrix.configs.append(cfg)
        elif impl == "mvdeploy":  # the peer simply does not exist for most combinations
            matrix.skipped.append({**cfg.to_dict(), "reason": reason})
    if not matrix.configs:
        reasons = sorted({s["reason"] for s in matrix.skipped})
        raise ConfigError("no configuration in this matrix can run: " + "; ".join(reasons))
    return matrix


# [suite] key -> the types its values may have (lists of them, except the scalars)
_SUITE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "models": (str,), "patches": (str, int, list), "resolutions": (str, int, list),
    "runtimes": (str,), "precisions": (str,), "threads": (int,), "batches": (int,),
    "target": (str,), "accelerators": (str,), "peer": (bool,), "devices": (str,)}
_SCALARS = ("name", "target", "peer")
SUITE_KEYS = {"name", "models", "patches", "resolutions", "runtimes", "precisions", "threads",
              "batches", "target", "accelerators", "peer", "devices"}
TIMING_KEYS = {"warmup", "min_runs", "min_seconds", "repetitions", "timeout_s"}


def load_suite(path: str | Path) -> tuple[dict[str, Any], Timing]:
    """[suite] (matrix dimensions, lists) and [timing] tables of a suite file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"suite file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read suite file {path}: {exc}") from None
    unknown = set(data) - {"suite", "timing"}
    suite, timing = data.get("suite", {}), data.get("timing", {})
    bad = (unknown | (set(suite) - SUITE_KEYS) | (set(timing) - TIMING_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown table or key {', '.join(sorted(bad))}; [suite] "
                          f"takes {', '.join(sorted(SUITE_KEYS))}; [timing] takes "
                          f"{', '.join(sorted(TIMING_KEYS))}")
    for key, kinds in _SUITE_TYPES.items():  # TOML types, checked: one line, not a crash
        if key not in suite:
            continue
        value = suite[key]
        if key not in _SCALARS and not isinstance(value, list):
            value = [value]  # one value where a list may stand
        items = [value] if key in _SCALARS else value
        if not all(isinstance(v, kinds) and (bool in kinds or not isinstance(v, bool))
                   for v in items):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{path} [suite] {key}: expected {names}"
                              f"{'' if key in _SCALARS else ' (or a list of them)'}, "
                              f"got {suite[key]!r}")
        suite[key] = value
    for key in ("resolutions", "patches"):  # numbers are fine in TOML: 256, or [2, 2, 2]
        if key in suite:
            suite[key] = [",".join(map(str, v)) if isinstance(v, list) else str(v)
                          for v in suite[key]]
    try:
        parsed = Timing(**timing)
    except TypeError as exc:
        raise ConfigError(f"{path} [timing]: {exc}") from None
    parsed.check()
    return suite, parsed


def with_timing(timing: Timing, **overrides: Any) -> Timing:
    changed = replace(timing, **{k: v for k, v in overrides.items() if v is not None})
    changed.check()
    return changed
