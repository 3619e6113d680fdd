"""The one-call Python API, for notebooks and CI: the same path `mvdeploy export` and
`mvdeploy bench` take (the CLI calls these functions).

    import mvdeploy
    result = mvdeploy.export("mobilevit_xxs", weights="apple/mobilevit-xx-small", patch="B",
                             formats=["onnx", "tflite"], out="out/")
    assert result.ok, [f.error or f.report.failures for f in result.formats]
    report = mvdeploy.benchmark(models=["mobilevit_xxs"], runtimes=["onnxruntime"], quick=True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mvdeploy.pipeline.exporter import ExportResult, Step


def export(model: str | None = None, *, weights: str | None = None,
           formats: Sequence[str] | None = None, precision: str | None = None,
           patch: str | None = None, resolution: str | int | None = None,
           out: str | Path | None = None, config: str | Path | None = None,
           settings: Mapping[str, Any] | None = None, force: bool = False,
           threads: int | None = None, progress: Step | None = None,
           warn: Callable[[str], None] | None = None) -> ExportResult:
    """Export, validate and write manifests; returns what happened per format.

    Arguments left as None keep the config file's value (or the default). `settings` takes any
    other config key as "table.key" (e.g. {"onnx.opset": 20, "validate.max_images": 4}).
    Bad settings raise mvdeploy.errors.ConfigError before any work starts.
    """
    from mvdeploy.pipeline.config import load_config
    from mvdeploy.pipeline.exporter import no_progress, run_export

    given = {"model.name": model, "model.weights": weights, "model.patch": patch,
             "model.resolution": None if resolution is None else str(resolution),
             "export.formats": None if formats is None else list(formats),
             "export.out": None if out is None else str(out), "quantize.precision": precision}
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides.update(settings or {})
    return run_export(load_config(config, overrides), force=force, threads=threads,
                      step=progress or no_progress, warn=warn or (lambda text: None))


def benchmark(**options: Any) -> dict:
    """Time a matrix of configurations; returns the report `mvdeploy bench` writes as JSON.

    Takes the options of `mvdeploy bench` as keywords (models, patches, resolutions, runtimes,
    precisions, threads, batches, target, accelerators, peer, weights, out, cache, quick,
    suite, ...); see mvdeploy.bench.session.plan.
    """
    from mvdeploy.bench.session import plan, run

    return run(plan(**options)).report
