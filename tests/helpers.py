"""Helpers shared by several test modules."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# extras that are not a format's (a format's packages come from its SPEC)
OTHER_EXTRAS = {"bench": ("matplotlib",), "hub": ("huggingface_hub",), "data": ("sklearn",),
                "dev": ("transformers", "skimage"), "clients": ("mediapipe", "openvino"),
                "aihub": ("qai_hub",)}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


def missing_for(*extras: str) -> str | None:
    """Why a test that needs these extras cannot run here (None: it can): the pip command
    and the packages missing. With the core install alone, such tests are skipped."""
    from mvdeploy.backends import specs

    missing = []
    for extra in extras:
        if extra in OTHER_EXTRAS:
            missing += [m for m in OTHER_EXTRAS[extra] if not _importable(m)]
        for s in (s for s in specs() if s.extra == extra):
            missing += [p.module for p in s.export_needs if not _importable(p.module)]
            if not any(_importable(p.module) for p in s.run_needs):  # any one runs it
                missing.append(s.run_needs[0].module)
    missing = list(dict.fromkeys(missing))
    if not missing:
        return None
    return (f'needs pip install "mvdeploy[{",".join(extras)}]" (missing: '
            f"{', '.join(missing)})")


def needs(*extras: str) -> pytest.MarkDecorator:
    """Mark a test that needs these extras: skipped, with the command, where they are absent."""
    return pytest.mark.needs(*extras)


def skip_module_without(*extras: str) -> None:
    """At the top of a test module whose every test needs these extras."""
    why = missing_for(*extras)
    if why:
        pytest.skip(why, allow_module_level=True)


def perturbed_value(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A distinct, well-scaled random value for the float tensor `name` (activations O(1))."""
    if name.endswith("running_var") or (len(shape) == 1 and name.endswith("weight")):
        return torch.rand(shape, generator=gen) + 0.5  # scales and variances > 0
    if len(shape) == 1:
        return torch.randn(shape, generator=gen) * 0.1  # biases, running means
    fan_in = int(torch.Size(shape[1:]).numel())
    return torch.randn(shape, generator=gen) / fan_in**0.5


def perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer distinct random values (so a mis-mapped key shows).

    On their own such weights make a degenerate model (the same top-1 for every photo); use
    `input_sensitive_` where outputs are compared."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(perturbed_value(name, tuple(t.shape), gen))
    return module


def seeded_state(keys: list[tuple[str, tuple[int, ...], str]], seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    """The state dict `perturb_` would give a module with these (name, shape, dtype) entries,
    without the module: rebuilds a foreign checkpoint from its recorded key list."""
    gen = torch.Generator().manual_seed(seed)
    return {name: perturbed_value(name, shape, gen) if dtype.startswith("float")
            else torch.zeros(shape, dtype=getattr(torch, dtype)) for name, shape, dtype in keys}


def recorded_timm_state(path: Path, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The state dict tests/data/record_timm_reference.py recorded in `path` (drawn with
    `seed`) and timm's logits for the bundled photos."""
    data = np.load(path)
    keys = [(str(n), tuple(int(d) for d in s.split(",") if d), str(t)) for n, s, t in
            zip(data["key_names"], data["key_shapes"], data["key_dtypes"], strict=True)]
    state = seeded_state(keys, seed=seed)
    state.update({n.removeprefix("state/"): torch.from_numpy(data[n])
                  for n in data.files if n.startswith("state/")})
    return state, data["logits"]


def input_sensitive_(module: torch.nn.Module, head: torch.nn.Linear, seed: int = 0,
                     forward=None) -> torch.nn.Module:
    """perturb_, then BatchNorm statistics and head scale from real photos (see
    mvdeploy.models.init), so outputs differ from photo to photo."""
    from mvdeploy.models.init import calibrate_

    return calibrate_(perturb_(module, seed), head, forward=forward)


# the preprocessor_config.json of Apple's MobileViT checkpoints on the Hub
APPLE_PREPROCESSOR = {"crop_size": 256, "do_center_crop": True, "do_flip_channel_order": True,
                      "do_resize": True, "feature_extractor_type": "MobileViTFeatureExtractor",
                      "resample": 2, "size": 288}


# apple/mobilevitv2-1.0-imagenet1k-256's preprocessor_config.json on the Hub (commit 96540f7,
# "Update preprocessor_config.json (#1)"): the same preprocessing as v1, in the dict form
APPLE_V2_PREPROCESSOR = {"crop_size": {"height": 256, "width": 256}, "do_center_crop": True,
                         "do_flip_channel_order": True, "do_rescale": True, "do_resize": True,
                         "image_processor_type": "MobileViTImageProcessor", "resample": 2,
                         "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 288}}


def lay_out_hub_cache(cache: Path, repo: str, files: dict[str, Path | dict],
                      revision: str = "main", commit: str = "0" * 39 + "1") -> Path:
    """Write the standard huggingface_hub cache layout (refs/<revision> -> snapshots/<commit>)
    as `hf download` leaves it, without the network."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    for name, source in files.items():
        if isinstance(source, dict):
            (snapshot / name).write_text(json.dumps(source))
        else:
            shutil.copy(source, snapshot / name)
    return snapshot


def export_with_fixture(config: str, out: Path) -> Path:
    """export_configs/<config>.toml exported with the trained fixture, at its own 64x64."""
    from mvdeploy.cli import run
    from mvdeploy.fixtures import checkpoint_dir

    repo = Path(__file__).resolve().parents[1]
    assert run(["export", str(repo / "export_configs" / f"{config}.toml"),
                "--set", f"model.weights={checkpoint_dir()}", "--set", "model.resolution=64",
                "--set", f"export.out={out}"]) == 0
    return out


def eval_top1(model: Path, data: Path, capsys) -> float:
    """`mvdeploy eval MODEL --data DATA --json`'s top-1 accuracy, as a user reads it."""
    from mvdeploy.cli import run

    capsys.readouterr()
    assert run(["eval", str(model), "--data", str(data), "--json"]) == 0
    printed = capsys.readouterr().out
    (row,) = json.loads(printed[: printed.rindex("]") + 1])
    assert row["images"] > 0
    return row["top1"]


def once_across_workers(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)` once per test run, even when pytest-xdist's workers each ask: the first
    builds under a lock in the folder the workers share, the others read its pickled result.
    For session fixtures several test files use (an export takes minutes on 2 cores)."""
    import pickle

    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    done = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if done.is_file():
            return pickle.loads(done.read_bytes())
        folder = root / name
        folder.mkdir()
        result = build(folder)
        done.write_bytes(pickle.dumps(result))
        return result


def extended(*values) -> Any:
    """A parametrize case of the `extended` tier, which CI skips (tests/conftest.py)."""
    return pytest.param(*values, marks=pytest.mark.extended)


def export_hub_id_to_every_format(model: str, repo: str, cache: Path, out: Path,
                                  *flags: str) -> dict:
    """`mvdeploy export --model MODEL --weights REPO` to ONNX, TFLite, Core ML (fp32, numbers
    from the reference executor) and ExecuTorch, offline from the hub cache `cache`, as a user
    runs it; every format must pass with an input-sensitive reference. Returns format -> row."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mvdeploy.cli", "export", "--model", model, "--weights", repo,
         "-f", "onnx,tflite,coreml,executorch", "--coreml-precision", "fp32", "-o", str(out),
         "--json", *flags], capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    report = {f["format"]: f for f in json.loads(done.stdout)["formats"]}
    assert set(report) == {"onnx", "tflite", "coreml", "executorch"}
    for fmt, row in report.items():
        assert row["status"] == "passed" and not row["degenerate"], (fmt, row)
    assert report["coreml"]["snr_db"] > 60  # checked on numbers, not structurally only
    return report


# mediapipe 1.2.3: a task (ImageClassifier, ImageSegmenter) closed or garbage-collected while the
# test process goes on can deadlock in its serial dispatcher (close() waits on a future nothing
# completes), so the tasks tests make, and the snippets' namespaces holding them, go in here
# and live until the process ends
MEDIAPIPE_KEEP_ALIVE: list = []


def run_python_snippet(tflite: Path) -> dict:
    """The MediaPipe Python snippet `mvdeploy snippet --client mediapipe-python` writes for
    `tflite`, run as a user would (from the artifact's folder): its namespace."""
    from mvdeploy.readback.snippets import load_manifest, snippet

    language, code = snippet(load_manifest(tflite), "mediapipe-python")
    assert language == "python"
    namespace: dict = {}
    cwd = Path.cwd()
    os.chdir(tflite.parent)
    try:
        exec(compile(code, "mediapipe_snippet.py", "exec"), namespace)
    finally:
        os.chdir(cwd)
    MEDIAPIPE_KEEP_ALIVE.append(namespace)
    return namespace
