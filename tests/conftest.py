"""Shared fixtures. Hugging Face checkpoints are built from configs (no download) once per
session, with every tensor perturbed so that a mis-mapped key cannot go unnoticed, and then made
input-sensitive (BatchNorm statistics from real photos) so that fidelity checks can fail."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from mvdeploy.models import MODEL_CFGS
from tests.helpers import input_sensitive_, missing_for, once_across_workers

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: a worker sees what a serial run does
    # xdist sets COLUMNS=80, where a plain pipe has none (the CLI's tables would wrap)
    os.environ.pop("COLUMNS", None)
    # a worker's own temporary folder: the bench's machine lock (mvdeploy/bench/locks.py) is a
    # file there, and the other worker's bench is not "another bench" the tests talk about
    _worker = os.environ["PYTEST_XDIST_WORKER"]
    _worker_tmp = Path(tempfile.gettempdir()) / f"mvdeploy-tests-{_worker}"
    _worker_tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(_worker_tmp)
    tempfile.tempdir = None  # recomputed from TMPDIR
    # two workers on two cores: a second OpenMP thread per worker only waits for a core
    torch.set_num_threads(1)

EXTENDED_RUN = "MVDEPLOY_EXTENDED=1 python -m pytest -m extended"


def pytest_collection_modifyitems(config, items):
    """`extended` tests repeat a path CI already proves at another size, preset or recipe
    (CI has 30 minutes on 2 cores): skipped, with the command that runs them, unless
    MVDEPLOY_EXTENDED=1. `needs(extras)` tests are skipped, naming the pip command, where an
    extra is not installed (the fast suite passes with the core install alone)."""
    extended = os.environ.get("MVDEPLOY_EXTENDED") == "1"
    skip = pytest.mark.skip(reason=f"extended (CI time): {EXTENDED_RUN}")
    for item in items:
        if item.get_closest_marker("extended") and not extended:
            item.add_marker(skip)
        extras = [e for mark in item.iter_markers("needs") for e in mark.args]
        why = missing_for(*extras) if extras else None
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


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
            # the seed follows the name, not the order of requests, so a test sees the same
            # weights in a full run, alone, or in a pytest-xdist worker
            input_sensitive_(model, model.classifier, seed=list(MODEL_CFGS).index(name),
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

    from mvdeploy.pipeline.config import load_config
    from mvdeploy.pipeline.exporter import run_export

    _, directory = hf_checkpoint("mobilevit_xxs")
    formats = ["onnx", "tflite"]
    if importlib.util.find_spec("executorch") is not None:
        formats.append("executorch")

    def build(out: Path):
        return run_export(load_config(overrides={
            "model.weights": str(directory), "model.patch": "B", "model.resolution": "64",
            "export.formats": formats, "export.out": str(out)}))

    return once_across_workers(tmp_path_factory, "hf_xxs_export", build)


@pytest.fixture
def with_fake_format(monkeypatch):
    """tests/fake_format.py registered as format "fake" by one registry line."""
    from mvdeploy import backends

    monkeypatch.setitem(backends.FORMATS, "fake", "tests.fake_format")


@pytest.fixture(scope="session")
def held_out_digits(tmp_path_factory) -> Path:
    """The trained fixture's held-out digits as CLASS/*.png folders (445 images)."""
    from mvdeploy.fixtures import write_digits

    return write_digits(tmp_path_factory.mktemp("digits") / "held-out", "held-out")
