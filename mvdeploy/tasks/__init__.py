"""Tasks: one module per task (what its predictions are, how they are scored and compared).

A task module provides what the pipeline and the readers ask of it:
  compare(reference, candidate) -> Metrics   an artifact's outputs against PyTorch's
  softmax(scores)                            scores -> what an app reads (probabilities)
  labelled_reference(folder, model, h, w, preprocessing) -> LabelledReference
                                              PyTorch's predictions on a labelled folder,
                                              which validation scores artifacts against
  predictions(scores, output_kind, labels, top, frame) -> [per image: what `predict` reports;
                                              PIL Image values are written beside the photo]
  open_labelled(folder, labels, num_classes, limit) / evaluate(run, items, ...) -> scores
                                              what `mvdeploy eval` reads and how it scores
  HEADLINE                                    the accuracy key a labelled folder is judged by
A model's head says which task it serves (MobileViTCfg.task); the manifest records it, so
readers pick the task without loading the model. Adding a task is a module here, one line in
TASKS, and its head in mvdeploy.models.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mvdeploy.errors import ConfigError

TASKS = {"classification": "mvdeploy.tasks.classification",  # task -> its module
         "segmentation": "mvdeploy.tasks.segmentation"}
DEFAULT_TASK = "classification"


def get_task(name: str = DEFAULT_TASK) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
