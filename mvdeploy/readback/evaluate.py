"""Accuracy of exported artifacts on a labelled folder (`mvdeploy eval`), streamed in batches
so memory stays flat, with each artifact's embedded preprocessing and labels. What a labelled
folder is and how predictions are scored is the artifact's task's (mvdeploy.tasks): one
sub-folder per class for classification, PASCAL VOC's JPEGImages/ + SegmentationClass/ for
segmentation (mIoU, pixel accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mvdeploy.data import Preprocessing
from mvdeploy.errors import ConfigError
from mvdeploy.tasks import DEFAULT_TASK, get_task
from mvdeploy.tasks.classification import torch_runner


def evaluate_artifacts(artifacts: list[str | Path], data: str | Path, *,
                       limit: int | None = None, weights: str | None = None,
                       threads: int | None = None, task: str | None = None,
                       progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Top-1/top-5 (classification) or mIoU and pixel accuracy (segmentation) of each
    artifact on `data`, with its embedded preprocessing and labels; with `weights`, also the
    PyTorch model's scores and the artifact's agreement with it. `task`, when given, must be
    the artifacts' own (a check that the folder is read as the user meant).

    An artifact that cannot run here (e.g. a Core ML program with an op the reference executor
    does not implement) gets an "error" entry instead.
    """
    from mvdeploy.backends import BackendUnavailable, get_backend, refused_by_runtime
    from mvdeploy.native_output import redirect_native_output
    from mvdeploy.readback.inspect import inspect_artifact
    from mvdeploy.readback.predict import artifact_preprocessing, embedded_metadata

    results: list[dict] = []
    references: dict[tuple, object] = {}
    for artifact in artifacts:
        info = inspect_artifact(artifact)
        meta = embedded_metadata(info)
        found_task = meta.get("task", DEFAULT_TASK)
        if task is not None and task != found_task:
            raise ConfigError(f"{info['file']} is a {found_task} model, not {task}: drop "
                              f"--task or pass --task {found_task}")
        scorer = get_task(found_task)
        prep = artifact_preprocessing(meta)
        height, width = meta["resolution"]
        labels = meta.get("labels")
        num_classes = int(meta.get("num_classes") or len(labels or []))
        images = scorer.open_labelled(data, labels, num_classes, limit)
        row: dict = {"artifact": info["file"], "format": info["format"],
                     "precision": info["precision"], "task": found_task, "data": str(data)}
        batch = info["inputs"][0]["shape"][0]
        report = (lambda done, total, f=info["file"]: progress(f, done, total)) if progress \
            else None
        with redirect_native_output(), \
                refused_by_runtime(Path(info["file"]), info["format"]):  # one line, exit 2
            try:  # runtimes log delegate creation on first use
                run = get_backend(info["format"]).load(Path(info["file"]), threads=threads)
            except BackendUnavailable as exc:
                results.append({**row, "error": str(exc)})
                continue
            predictions = scorer.evaluate(run, images, num_classes, height, width, prep,
                                          batch=batch if isinstance(batch, int) else None,
                                          progress=report)
        row.update(predictions.accuracy(), unreadable=len(predictions.unreadable),
                   unreadable_files=[str(p) for p in predictions.unreadable[:10]])
        if weights:
            # same model, input and folder-to-class mapping: the same reference predictions
            key = (meta["model"], str(meta["patch_sizes"]), height, width, prep,
                   tuple(labels or ()), num_classes)
            if key not in references:
                references[key] = _reference_predictions(meta, weights, scorer, images, prep,
                                                         threads)
            reference = references[key]
            row["reference"] = {k: v for k, v in reference.accuracy().items() if k != "images"}
            row["agreement"] = predictions.agreement(reference)
        results.append(row)
    return results


def _reference_predictions(meta: dict, weights: str, scorer, images, prep: Preprocessing,
                           threads: int | None):
    import torch

    from mvdeploy.models import create_model

    if threads:
        torch.set_num_threads(threads)
    model = create_model(meta["model"], patch_sizes=[tuple(p) for p in meta["patch_sizes"]],
                         weights=weights)
    if model.num_classes != int(meta["num_classes"]):
        raise ConfigError(f"{weights} has {model.num_classes} classes but the artifact has "
                          f"{meta['num_classes']}: pass the checkpoint it was exported from")
    height, width = meta["resolution"]
    return scorer.evaluate(torch_runner(model), images, model.num_classes, height, width, prep)
