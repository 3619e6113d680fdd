"""Shared fixtures. Hugging Face checkpoints are built from configs (no download) once per
session, with every tensor perturbed so that a mis-mapped key cannot go unnoticed, and then made
input-sensitive (BatchNorm statistics from real photos) so that fidelity checks can fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvdeploy.models import MODEL_CFGS
from tests.helpers import input_sensitive_


def hf_config(name: str, num_labels: int = 1000):
    from transformers import MobileViTConfig

    cfg = MODEL_CFGS[name]
    return MobileViTConfig(
        hidden_sizes=list(cfg.hidden_sizes),
        neck_hidden_sizes=list(cfg.channels),
        expand_ratio=cfg.expand_ratio,
        num_labels=num_labels,
        id2label={i: f"class_{i}" for i in range(num_labels)},
    )


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """name -> (HF model in eval mode, directory written by save_pretrained); built on demand."""
    from transformers import MobileViTForImageClassification

    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str):
        if name not in cache:
            model = MobileViTForImageClassification(hf_config(name))
            input_sensitive_(model, model.classifier, seed=len(cache),
                             forward=lambda m, x: m(x).logits).eval()
            directory = tmp_path_factory.mktemp(f"hf_{name}")
            model.save_pretrained(directory)
            cache[name] = (model, directory)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def hf_xxs_export(hf_checkpoint, tmp_path_factory):
    """XXS, patch B, 64x64 from the input-sensitive Hugging Face checkpoint (1000 labels), to
    ONNX, TFLite and (with its extra) ExecuTorch: one export that several test modules read."""
    import importlib.util

    from mvdeploy.config import load_config
    from mvdeploy.exporter import run_export

    _, directory = hf_checkpoint("mobilevit_xxs")
    formats = ["onnx", "tflite"]
    if importlib.util.find_spec("executorch") is not None:
        formats.append("executorch")
    cfg = load_config(overrides={"model.weights": str(directory), "model.patch": "B",
                                 "model.resolution": "64", "export.formats": formats,
                                 "export.out": str(tmp_path_factory.mktemp("hf_xxs_export"))})
    return run_export(cfg)


@pytest.fixture(scope="session")
def held_out_digits(tmp_path_factory) -> Path:
    """The trained fixture's held-out digits as CLASS/*.png folders (445 images)."""
    from mvdeploy.fixtures import write_digits

    return write_digits(tmp_path_factory.mktemp("digits") / "held-out", "held-out")
