"""Compare an artifact's outputs with PyTorch's on the same inputs, with stated tolerances.

Tolerances scale with the reference: float32 allows a max abs difference of `max_rel` times
the largest reference value, float16 and quantised artifacts a minimum SNR (a ratio). And a
comparison only means something when the reference itself depends on its input: a model that
gives (nearly) the same output for every input is flagged `degenerate`, because any artifact
that reproduces that constant "agrees" with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from mvdeploy.backends import BackendUnavailable, get_backend, spec
from mvdeploy.runner import run_batched
from mvdeploy.tasks import get_task
from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:  # the tolerances below read classification's metrics, the only task so far
    from mvdeploy.tasks.classification import Metrics

# Reference outputs whose spread across inputs (RMS distance from their mean over RMS size) is
# below this are "degenerate": randomly initialised MobileViTs measure 1e-7 to 1e-3, mvdeploy's
# input-sensitive seeded weights about 0.85 and the trained fixture 0.97-0.99 (export matrix).
MIN_REFERENCE_SPREAD = 0.01
DEGENERATE_WARNING = ("the reference model gives nearly the same output for every input: "
                      "fidelity metrics are not meaningful")


@dataclass(frozen=True)
class Tolerance:
    max_rel: float | None = None  # max abs diff / max abs reference value
    min_snr_db: float | None = None
    min_top1_agreement: float | None = None  # share of inputs keeping PyTorch's top-1
    max_top1_drop: float | None = None  # accuracy points below PyTorch's on labelled images

    def failures(self, label: str, m: Metrics, output: str = OUTPUT_NAME) -> list[str]:
        out = []
        if self.min_top1_agreement is not None and not (
                m.top1_agreement_decisive >= self.min_top1_agreement):
            out.append(f"{output} on {label}: top-1 agreement {m.top1_agreement_decisive:.0%} "
                       f"on the {m.decisive} inputs that are not near ties < "
                       f"{self.min_top1_agreement:.0%}")
        if self.max_rel is not None and not m.max_rel <= self.max_rel:
            out.append(f"{output} on {label}: max abs diff {m.max_abs:.3g} is {m.max_rel:.3g} of "
                       f"the largest reference value, above {self.max_rel:g}")
        if self.min_snr_db is not None and not m.snr_db >= self.min_snr_db:
            out.append(f"{output} on {label}: SNR {m.snr_db:.1f} dB < {self.min_snr_db:g} dB")
        return out


@dataclass(frozen=True)
class ReferenceSpread:
    """How much the reference outputs vary across the validation inputs."""

    inputs: int
    spread: float  # RMS distance from the mean output / RMS output
    top1_classes: int  # distinct top-1 classes among the inputs (their pixels: segmentation)

    @property
    def degenerate(self) -> bool:
        return self.spread < MIN_REFERENCE_SPREAD or (self.inputs > 1 and self.top1_classes < 2)


def reference_spread(references: dict[str, np.ndarray]) -> ReferenceSpread:
    ref = np.concatenate([r.reshape(len(r), -1) for r in references.values()]).astype(np.float64)
    size = float(np.sqrt((ref**2).sum(1).mean()))
    deviation = float(np.sqrt(((ref - ref.mean(0)) ** 2).sum(1).mean()))
    # top-1 over the class axis: one class per input, or per pixel of a segmentation mask
    top1 = np.concatenate([r.argmax(1).reshape(-1) for r in references.values()])
    return ReferenceSpread(inputs=len(ref), spread=deviation / max(size, 1e-30),
                           top1_classes=len(set(top1.tolist())))


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
    accuracy: dict[str, dict] = field(default_factory=dict)  # labelled set -> accuracies
    reference: ReferenceSpread | None = None
    runtime: str = ""  # what computed the numbers, where a format has more than one way
    gated: list[str] = field(default_factory=list)  # input sets held to the tolerance

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def degenerate(self) -> bool:
        return self.reference is not None and self.reference.degenerate

    def to_dict(self) -> dict:
        return {**asdict(self), "degenerate": self.degenerate,
                "warnings": [DEGENERATE_WARNING] if self.degenerate else []}


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
                        f"rank {max_rank} (use --fold nhwc or rank4)")
    return failures


def validate(fmt: str, artifact: Path, *, inputs: dict[str, np.ndarray],
             references: dict[str, np.ndarray], precision: str, input_shape: list,
             output_shape: list, batch: int | None, max_rank: int | None = None,
             tolerance: Tolerance, threads: int | None = None,
             labelled=None, task: ModuleType | None = None,
             outputs: tuple[str, ...] = (OUTPUT_NAME,),
             gated: tuple[str, ...] | None = None) -> ValidationReport:
    """Structure and the recipe's evidence first, then numbers on every input set (photos,
    random) where it can run, then accuracy on a labelled folder (streamed) when one is given.
    `gated`: the input sets held to the tolerance (default all); the others are reported.
    `task`: the model's task module (mvdeploy.tasks), which compares outputs; `labelled`: its
    LabelledReference."""
    task = task or get_task()
    backend = get_backend(fmt)
    report = ValidationReport(backend=fmt, precision=precision, status="passed",
                              tolerance=tolerance, structure=backend.describe(artifact),
                              reference=reference_spread(references))
    report.failures += check_structure(report.structure, input_shape=input_shape,
                                       output_shape=output_shape, max_rank=max_rank,
                                       output_names=outputs)
    missing = spec(fmt).evidence_failure(precision, report.structure)
    if missing:
        report.failures.append(missing)
    try:
        runner = backend.load(artifact, threads=threads)
    except BackendUnavailable as exc:
        report.status = "structural"
        report.note = f"{exc}: checked structurally only (inputs, outputs, ops, ranks)"
        if report.failures:
            report.status = "failed"
        return report
    report.runtime, report.note = runner.runtime, runner.note
    report.gated = [label for label in inputs if gated is None or label in gated]
    for label, x in inputs.items():
        got = run_batched(runner, x, batch)
        report.metrics[label] = metrics = task.compare(references[label], got)
        if gated is None or label in gated:
            report.failures += tolerance.failures(label, metrics, outputs[-1])
    if labelled is not None:
        report.accuracy["labelled"] = accuracy = labelled.score(runner, batch)
        headline = labelled.headline  # top1, or miou for segmentation
        drop = 100 * (accuracy[f"reference_{headline}"] - accuracy[f"artifact_{headline}"])
        if tolerance.max_top1_drop is not None and drop > tolerance.max_top1_drop:
            report.failures.append(f"{headline} on labelled images {drop:.2f} points below "
                                   f"PyTorch's, more than {tolerance.max_top1_drop:g}")
    report.status = "failed" if report.failures else "passed"
    return report
