"""Compare an artifact's outputs with PyTorch's on the same inputs, with stated tolerances."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mvdeploy.backends import BackendUnavailable, Runner, get_backend
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME

SNR_CAP_DB = 300.0  # identical outputs: report this instead of infinity (JSON has no inf)


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None  # on logits
    min_snr_db: float | None = None

    def failures(self, label: str, m: Metrics, output: str = OUTPUT_NAME) -> list[str]:
        out = []
        if self.max_abs is not None and not m.max_abs <= self.max_abs:
            out.append(f"{output} on {label}: max abs diff {m.max_abs:.3g} > {self.max_abs:g}")
        if self.min_snr_db is not None and not m.snr_db >= self.min_snr_db:
            out.append(f"{output} on {label}: SNR {m.snr_db:.1f} dB < {self.min_snr_db:g} dB")
        return out


@dataclass(frozen=True)
class Metrics:
    samples: int
    max_abs: float
    rel_l2: float
    snr_db: float
    cosine: float
    top1_agreement: float
    top5_agreement: float  # share of inputs whose reference top-1 is in the artifact's top 5


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, classes] scores, stable for large logits."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    """Metrics of `candidate` against `reference`, both [N, classes]."""
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = candidate.astype(np.float64).reshape(len(candidate), -1)
    err = out - ref
    signal, noise = float((ref**2).sum()), float((err**2).sum())
    snr = SNR_CAP_DB if noise == 0 else min(SNR_CAP_DB, 10 * math.log10(max(signal, 1e-30) / noise))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = float(np.mean((ref * out).sum(axis=1) / np.maximum(norms, 1e-30)))
    return Metrics(
        samples=len(ref),
        max_abs=float(np.abs(err).max()),
        rel_l2=float(np.sqrt(noise) / max(np.sqrt(signal), 1e-30)),
        snr_db=round(snr, 2),
        cosine=cosine,
        top1_agreement=float(np.mean(ref.argmax(1) == out.argmax(1))),
        top5_agreement=float(np.mean([r in top for r, top in zip(
            ref.argmax(1), np.argsort(-out, axis=1)[:, :5], strict=True)])),
    )


def run_batched(runner: Runner, x: np.ndarray, batch: int | None) -> np.ndarray:
    """Feed N inputs to an artifact with a fixed batch size, padding the last chunk."""
    if not batch:
        return runner(x)
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(runner(chunk)[: batch - pad])
    return np.concatenate(outs)


@dataclass
class ValidationReport:
    backend: str
    precision: str
    status: str  # "passed", "failed", or "structural" (numbers could not be checked here)
    tolerance: Tolerance
    metrics: dict[str, Metrics] = field(default_factory=dict)  # input set -> metrics
    failures: list[str] = field(default_factory=list)
    structure: dict = field(default_factory=dict)
    note: str = ""
    accuracy: dict[str, dict] = field(default_factory=dict)  # labelled set -> top-1 accuracies

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return asdict(self)


def check_structure(desc: dict, *, input_shape: list, output_shape: list,
                    max_rank: int | None,
                    output_names: tuple[str, ...] = (OUTPUT_NAME,)) -> list[str]:
    """Names and shapes a user's code relies on, and rank limits of the target runtime."""
    failures = []
    inputs = {i["name"]: i for i in desc.get("inputs", [])}
    outputs = {o["name"]: o for o in desc.get("outputs", [])}

    def same(shape: list, expected: list) -> bool:  # None / str = symbolic (dynamic) dim
        return len(shape) == len(expected) and all(
            e is None or s == e for s, e in zip(shape, expected, strict=True))

    if INPUT_NAME not in inputs:
        failures.append(f"input '{INPUT_NAME}' missing (found {', '.join(inputs) or 'none'})")
    elif not same(inputs[INPUT_NAME]["shape"], input_shape):
        failures.append(f"input '{INPUT_NAME}' has shape {inputs[INPUT_NAME]['shape']}, "
                        f"expected {input_shape}")
    for name in output_names:  # a classifier's label and dictionary have no shape
        if name not in outputs:
            failures.append(f"output '{name}' missing (found {', '.join(outputs) or 'none'})")
        elif outputs[name]["shape"] and not same(outputs[name]["shape"], output_shape):
            failures.append(f"output '{name}' has shape {outputs[name]['shape']}, "
                            f"expected {output_shape}")
    if max_rank is not None and desc.get("max_rank", 0) > max_rank:
        failures.append(f"holds a rank-{desc['max_rank']} tensor; this runtime allows at most "
                        f"rank {max_rank} (use fold='rank4')")
    return failures


def validate(fmt: str, artifact: Path, *, inputs: dict[str, np.ndarray],
             references: dict[str, np.ndarray], precision: str, input_shape: list,
             output_shape: list, batch: int | None, max_rank: int | None = None,
             tolerance: Tolerance, threads: int | None = None,
             targets: dict[str, np.ndarray] | None = None,
             outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> ValidationReport:
    """Structure first, then numbers on every input set (photos, random) where it can run."""
    backend = get_backend(fmt)
    report = ValidationReport(backend=fmt, precision=precision, status="passed",
                              tolerance=tolerance, structure=backend.describe(artifact))
    report.failures += check_structure(report.structure, input_shape=input_shape,
                                       output_shape=output_shape, max_rank=max_rank,
                                       output_names=outputs)
    try:
        runner = backend.load(artifact, threads=threads)
    except BackendUnavailable as exc:
        report.status = "structural"
        report.note = f"{exc}: checked structurally only (inputs, outputs, ops, ranks)"
        if report.failures:
            report.status = "failed"
        return report
    for label, x in inputs.items():
        got = run_batched(runner, x, batch)
        report.metrics[label] = metrics = compare(references[label], got)
        report.failures += tolerance.failures(label, metrics, outputs[-1])
        if targets and label in targets:
            truth = targets[label]
            report.accuracy[label] = {
                "images": len(truth),
                "reference_top1": float(np.mean(references[label].argmax(1) == truth)),
                "artifact_top1": float(np.mean(got.argmax(1) == truth)),
            }
    report.status = "failed" if report.failures else "passed"
    return report
