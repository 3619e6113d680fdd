"""Export to ONNX, TFLite and Core ML: real converters, real runtimes, bundled real photos.

Conversions are shared through session fixtures; most use XXS at 96x64 (non-square, and patch 8
does not divide the 12x8 stride-8 map, so the resize path is exported too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.models import create_model
from mvdeploy.models.weights import save_checkpoint
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import artifact_stem, run_export
from mvdeploy.readback.inspect import inspect_artifact
from tests.helpers import extended, needs

FORMATS = ("onnx", "tflite", "coreml")


class _LazyExports(dict):
    """patch -> ExportResult, exported on first use: CI runs patch B only (its 8x8 patches do
    not divide the 12x8 stride-8 map, so it also proves the resize path); A is extended."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, patch: str):
        out = self.tmp_path_factory.mktemp(f"export_{patch}")
        torch.manual_seed(0)
        weights = save_checkpoint(create_model("mobilevit_xxs", num_classes=10),
                                  out / "weights.safetensors")
        cfg = load_config(overrides={
            "model.name": "mobilevit_xxs", "model.patch": patch, "model.resolution": "96x64",
            "model.weights": str(weights), "export.out": str(out / "artifacts"),
        })
        self[patch] = run_export(cfg)
        return self[patch]


@pytest.fixture(scope="session")
def xxs_export(tmp_path_factory):
    """patch preset -> ExportResult for XXS at 96x64, all three formats, seeded weights."""
    return _LazyExports(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("patch", [extended("A"), "B"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_exports_and_validates(xxs_export, patch, fmt):
    result = xxs_export[patch]
    r = next(r for r in result.formats if r.format == fmt)
    assert r.error is None and r.ok, r.report.failures if r.report else r.error
    assert r.artifact.exists() and r.manifest.exists()
    manifest = json.loads(r.manifest.read_text())
    assert manifest["artifact"]["file"] == r.artifact.name
    assert manifest["model"]["patch_sizes"] == ([[2, 2]] * 3 if patch == "A"
                                                else [[8, 8], [4, 4], [2, 2]])
    assert manifest["model"]["resolution"] == [96, 64]
    assert manifest["preprocessing"]["channel_order"] == "BGR"
    assert len(manifest["artifact"]["sha256"]) == 64 and manifest["artifact"]["size_bytes"] > 0
    assert manifest["validation"]["inputs"]["photos"] == [p.name for p in sample_image_paths()]
    structure = manifest["validation"]["structure"]
    assert [i["name"] for i in structure["inputs"]] == ["pixel_values"]
    assert [o["name"] for o in structure["outputs"]] == ["logits"]
    assert structure["max_rank"] <= 4  # nhwc and rank4 folds: fine for Core ML, ANE, TFLite GPU
    assert manifest["validated"] is True
    # each format's own graph form, recorded (benchmarks/results/graph_forms.md measures them)
    assert manifest["model"]["graph_form"] == {
        "onnx": {"fold": "nhwc", "tokens": "2d", "qkv": "packed"},
        "tflite": {"fold": "nhwc", "tokens": "2d", "qkv": "separate"},
        "coreml": {"fold": "rank4", "tokens": "3d", "qkv": "packed"}}[fmt]
    if fmt == "onnx":  # 3 stages x 2, 4, 3 layers: every attention fused for ORT
        assert manifest["artifact"]["attention"] == "com.microsoft.MultiHeadAttention (9 fused)"
        assert structure["ops"]["MultiHeadAttention"] == 9 and "Softmax" not in structure["ops"]
    for label in ("photos", "random"):
        metrics = manifest["validation"]["metrics"][label]
        if fmt == "coreml":  # fp16 by default: an SNR tolerance
            assert metrics["snr_db"] >= 40 and metrics["top1_agreement"] >= 0.8
        else:
            assert metrics["max_rel"] <= 1e-4 and metrics["top1_agreement"] == 1.0
    if fmt == "coreml" and sys.platform != "darwin":  # numbers from the reference executor
        assert manifest["validation"]["runtime"] == "reference"
        assert "not what a device's CPU, GPU or Neural Engine computes" in \
            manifest["validation"]["note"]
        assert structure["model_type"] == "mlProgram"
        assert {"conv", "layer_norm", "softmax", "matmul"} <= set(structure["ops"])
        assert manifest["degenerate"] is False  # seeded weights tell the photos apart


@pytest.mark.slow
def test_layout_and_no_leftovers(xxs_export):
    result = xxs_export["B"]
    stem = "mobilevit_xxs_B_96x64"
    assert result.program == result.out / f"{stem}.pt2"
    names = sorted(p.name for p in result.out.iterdir())
    assert names == sorted([f"{stem}.pt2", *FORMATS])  # no .partial folders or logs
    assert not (result.out / "onnx" / f"{stem}.onnx.data").exists()  # one self-contained file


@pytest.mark.slow
def test_saved_program_reproduces_pytorch(xxs_export):
    result = xxs_export["B"]
    program = torch.export.load(str(result.program)).module()
    x, _, _ = load_images(sample_image_paths()[:2], 96, 64)
    model = create_model("mobilevit_xxs", patch_sizes="B",
                         weights=str(result.out.parent / "weights.safetensors"))
    with torch.no_grad():
        got = program(pixel_values=torch.from_numpy(x[:1]))["logits"]
        assert torch.allclose(got, model(torch.from_numpy(x[:1])), atol=1e-5)


PLAIN_RUNTIMES = textwrap.dedent("""
    import json, sys
    import numpy as np
    x = np.load(sys.argv[1])
    out = {}
    import onnxruntime as ort
    s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
    out["onnx"] = s.run(["logits"], {"pixel_values": x})[0].tolist()
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=sys.argv[3]).get_signature_runner("serving_default")
    out["tflite"] = runner(pixel_values=x)["logits"].tolist()
    import onnx
    props = {p.key: p.value for p in onnx.load(sys.argv[2]).metadata_props}
    out["onnx_metadata"] = json.loads(props["mvdeploy"])
    from ai_edge_litert import schema_py_generated as schema  # plain flatbuffer reading
    model = schema.Model.GetRootAsModel(open(sys.argv[3], "rb").read(), 0)
    entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    out["tflite_metadata"] = json.loads(bytes(model.Buffers(entries[b"mvdeploy"]).DataAsNumpy()))
    import coremltools as ct
    spec = ct.utils.load_spec(sys.argv[4])
    out["coreml"] = [[f.name for f in spec.description.input],
                     [f.name for f in spec.description.output]]
    assert "mvdeploy" not in sys.modules
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_artifacts_load_in_plain_runtimes_without_mvdeploy(xxs_export, tmp_path):
    result = xxs_export["B"]
    paths = {r.format: r.artifact for r in result.formats}
    x, _, _ = load_images(sample_image_paths()[:1], 96, 64)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_RUNTIMES, str(tmp_path / "x.npy"), str(paths["onnx"]),
         str(paths["tflite"]), str(paths["coreml"])],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    model = create_model("mobilevit_xxs", patch_sizes="B",
                         weights=str(result.out.parent / "weights.safetensors"))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(np.array(out["onnx"]) - ref).max() <= 1e-4
    assert np.abs(np.array(out["tflite"]) - ref).max() <= 1e-4
    assert out["coreml"] == [["pixel_values"], ["logits"]]
    for key in ("onnx_metadata", "tflite_metadata"):
        meta = out[key]
        assert meta["patch_sizes"] == [[8, 8], [4, 4], [2, 2]] and meta["resolution"] == [96, 64]
        assert meta["input"] == "pixel_values" and meta["output"] == "logits"
        assert meta["preprocessing"]["channel_order"] == "BGR"
        assert meta["preprocessing"]["scale"] == pytest.approx(1 / 255)


@pytest.mark.slow
def test_labels_travel_with_onnx_and_tflite(hf_xxs_export):
    result = hf_xxs_export
    assert result.ok
    labels = [f"class_{i}" for i in range(1000)]
    assert (result.out / "tflite" / "labels.txt").read_text().splitlines() == labels
    for r in result.formats:
        if r.format not in ("onnx", "tflite"):
            continue
        info = inspect_artifact(r.artifact)
        meta = info["metadata"]["mvdeploy"]
        assert meta["labels"] == labels
        assert json.loads(r.manifest.read_text())["labels"] == labels


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_every_format(xxs_export, fmt, capsys):
    r = next(r for r in xxs_export["B"].formats if r.format == fmt)
    assert run(["inspect", str(r.artifact), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and info["precision"] == ("fp16" if fmt == "coreml" else "fp32")
    assert [i["name"] for i in info["inputs"]] == ["pixel_values"]
    assert info["outputs"][0]["shape"] == [1, 10]
    assert info["manifest"]["validation"]["status"] == "passed"  # Core ML too: reference executor
    assert sum(info["ops"].values()) > 100 and info["max_rank"] <= 4
    assert run(["inspect", str(r.artifact)]) == 0
    assert "pixel_values" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["bad.onnx", "bad.tflite", "bad.mlpackage", "bad.pt2",
                                  "bad.pte", "model.bin", "missing.onnx", "empty.onnx"])
def test_inspect_rejects_corrupt_or_foreign_files(tmp_path, capsys, name):
    path = tmp_path / name
    if name == "bad.mlpackage":
        path.mkdir()
        (path / "Manifest.json").write_text("{}")
    elif name == "empty.onnx":  # parses as an ONNX model with nothing in it
        path.write_bytes(b"")
    elif name != "missing.onnx":
        path.write_bytes(b"\x08\x01garbage" * 50)
    assert run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvdeploy: error:") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(("name", "patch", "resolution", "formats"),
                         # extended (CI time): the XXS exports prove each format's path, and
                         # test_app's mobilevit_s_B_android takes S through ONNX and TFLite
                         [extended("mobilevit_xs", "B", "256", "coreml"),
                          extended("mobilevit_s", "A", "320x256", "onnx,tflite,coreml")])
@pytest.mark.slow
def test_larger_variants_export(name, patch, resolution, formats, tmp_path):
    cfg = load_config(overrides={"model.name": name, "model.patch": patch,
                                 "model.resolution": resolution, "export.out": str(tmp_path),
                                 "export.formats": formats,
                                 "coreml.compute_precision": "fp32", "validate.max_images": 3})
    result = run_export(cfg)  # Core ML by numbers too: off macOS, the reference executor
    assert result.ok
    assert all(r.report.metrics["photos"].max_rel <= 1e-4 for r in result.formats)
    assert not any(r.report.degenerate for r in result.formats)


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_export_and_force(tmp_path, capsys):
    argv = ["export", "-m", "mobilevit_xxs", "-p", "2x4,2,2", "-r", "64", "-f", "onnx",
            "-o", str(tmp_path), "--json"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["formats"][0]["status"] == "passed"
    artifact = Path(report["formats"][0]["artifact"])
    assert artifact.name == "mobilevit_xxs_2x4-2-2_64x64.onnx"
    before = artifact.stat().st_mtime_ns
    assert run(argv) == 2  # exists: refuse, change nothing
    assert "--force" in capsys.readouterr().err
    assert artifact.stat().st_mtime_ns == before
    table = [a for a in argv if a != "--json"]
    assert run([*table, "--force"]) == 0
    assert artifact.stat().st_mtime_ns != before
    # the gate's figures as counts, with the decisive ones when some photos are near ties
    row = json.loads(json.dumps(report["formats"][0]))
    printed = capsys.readouterr().out
    counts = f"{row['top1_same']}/{row['photos']}"
    assert "top-1 same" in printed and counts in printed and row["photos"] == 6
    if row["decisive"] < row["photos"]:
        assert f"({row['top1_same_decisive']}/{row['decisive']} decisive)" in printed
    # another resolution into the same folder would delete this artifact: refused, even forced
    capsys.readouterr()
    after = artifact.stat().st_mtime_ns
    other = [a if a != "64" else "96" for a in argv]
    assert run([*other, "--force"]) == 2
    assert "--force replaces only the same artifact" in capsys.readouterr().err
    assert artifact.stat().st_mtime_ns == after
    assert not list(tmp_path.glob("*96*.pt2"))  # refused before anything was written


@pytest.mark.slow
def test_failed_validation_keeps_artifact_and_exits_1(tmp_path, capsys):
    argv = ["export", "-m", "mobilevit_xxs", "-r", "64", "-f", "onnx", "-o", str(tmp_path),
            "--set", "validate.fp32_max_rel=1e-15"]
    assert run(argv) == 1
    out = capsys.readouterr().out
    assert "logits on photos: max abs diff" in out and "logits on random" in out
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["validated"] is False and len(manifest["validation"]["failures"]) == 2
    assert (tmp_path / "onnx" / manifest["artifact"]["file"]).exists()


BAD_CONFIGS = [
    ("[model]\npach = 'B'\n", "unknown key 'model.pach'"),
    ("[model]\nresolution = 225\n", "model.resolution: input height 225 is not a multiple of 32"),
    ("[export]\nbatch = 'two'\n", "export.batch must be int"),
    ("[export]\nformats = ['onnx', 'tflite']\ndynamic_batch = true\n", "onnx only"),
    ("[exports]\nformats = ['onnx']\n", "unknown table [exports]"),
    ("[coreml]\nminimum_deployment_target = 'iOS13'\n", "ML Programs need iOS15"),
    ("[model\nname = 'x'\n", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "match"), BAD_CONFIGS)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, match):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert run(["export", str(config), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "match"), [
    (["--format", "onnx,caffe"], "unknown format caffe"),
    (["--set", "model.patch"], "--set expects table.key=value"),
    pytest.param(["--weights", "/nonexistent.pt", "-f", "onnx"], "does not exist",
                 marks=needs("onnx")),
    pytest.param(["--images", "/nonexistent", "-f", "onnx"], "does not exist",
                 marks=needs("onnx")),
    (["--threads", "0", "-f", "onnx"], "Invalid value for '--threads': 0 is not in the range x>=1"),
    (["-f", "coreml", "--precision", "fp32", "--coreml-precision", "fp16"],
     "--precision fp32 and --coreml-precision (coreml.compute_precision) fp16 disagree"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, capsys, argv, match):
    assert run(["export", "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize(("out", "match"), [
    ("", "export.out is empty"),
    ("{tmp}/file/sub", "is a file, so no folder can be made there"),
    ("/proc/mvdeploy-out", "cannot write in /proc"),
])
def test_unusable_out_is_refused_before_any_work(tmp_path, capsys, out, match):
    (tmp_path / "file").write_text("a regular file")
    start = time.monotonic()
    assert run(["export", "-f", "onnx", "-o", out.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert time.monotonic() - start < 5  # the model was never built


@needs("onnx")
def test_empty_image_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert run(["export", "-f", "onnx", "--images", str(tmp_path / "photos"),
                "-o", str(tmp_path / "out")]) == 2
    assert "no images" in capsys.readouterr().err


def _export_until_converting(out: Path, formats: str, converting: str,
                             env: dict | None = None) -> subprocess.Popen:
    """`mvdeploy export` in a child, returned once `converting` has its partial folder."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvdeploy.cli", "export", "-r", "64", "-f", formats,
         "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(f".{converting}.partial-*")):
        time.sleep(0.1)
    assert list(out.glob(f".{converting}.partial-*")), "conversion never started"
    return proc


@pytest.mark.slow
def test_ctrl_c_leaves_no_half_written_artifact(tmp_path):
    """Interrupt during the TFLite conversion: exit 130, no tflite/ and no partial folders."""
    proc = _export_until_converting(tmp_path, "onnx,tflite", "tflite")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "interrupted" in proc.stderr.read().decode()
    assert (tmp_path / "onnx").is_dir()  # finished before the interrupt: kept whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or
                 p.name == "tflite"]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "said"), [
    (signal.SIGTERM, 143, "mvdeploy: terminated (SIGTERM)"),  # a timeout, CI cancel, docker stop
    (signal.SIGHUP, 129, "mvdeploy: hung up (SIGHUP)"),  # the terminal closed, SSH dropped
], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(tmp_path, sig, code, said):
    """One line, 128 + the signal, and nothing left: no partial folder, no convert log, no
    converter scratch folder in TMPDIR, no converter child still running."""
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    proc = _export_until_converting(out, "onnx", "onnx", env={"TMPDIR": str(scratch)})
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read().decode().strip().splitlines()
    assert err[-1].startswith(said) and "Traceback" not in "".join(err)
    assert [p.name for p in out.iterdir() if p.suffix != ".pt2"] == []
    assert [p.name for p in scratch.iterdir() if p.name.startswith("mvdeploy-convert-")] == []
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    assert children.stdout.strip() == ""


@pytest.mark.slow
def test_another_export_into_the_same_out_is_kept_not_replaced(tmp_path):
    """Two exports into one --out: what the other wrote while this one ran is kept, and this
    one says so (exit 2) instead of silently replacing it."""
    import contextlib

    cfg = load_config(overrides={"model.resolution": "64", "export.formats": "onnx",
                                 "export.out": str(tmp_path), "export.save_program": False})

    @contextlib.contextmanager
    def step(text):
        yield
        if text.startswith("Converting to onnx"):  # the other export finishes first
            (tmp_path / "onnx").mkdir()
            (tmp_path / "onnx" / "theirs.onnx").write_text("the other export's artifact")

    with pytest.raises(ConfigError, match="written by another export while this one ran"):
        run_export(cfg, step=step)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["theirs.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no partial folder, no log


def test_artifact_stem_names_custom_patches():
    cfg = load_config(overrides={"model.patch": "2x4,2,2", "model.resolution": "320x256"})
    assert artifact_stem(cfg) == "mobilevit_xxs_2x4-2-2_320x256"
    assert os.sep not in artifact_stem(cfg)


@pytest.mark.slow
def test_coreml_precision_and_target(tmp_path):
    cfg = load_config(overrides={"model.resolution": "64", "export.formats": "coreml",
                                 "export.out": str(tmp_path), "coreml.compute_precision": "fp32",
                                 "coreml.minimum_deployment_target": "iOS17"})
    (result,) = run_export(cfg).formats
    manifest = json.loads(result.manifest.read_text())
    assert manifest["artifact"]["precision"] == "fp32"
    assert manifest["artifact"]["minimum_deployment_target"] == "iOS17"
    assert manifest["validation"]["structure"]["spec_version"] == 8  # iOS17 = spec 8
    assert manifest["validation"]["tolerance"] == {"max_rel": 1e-4, "min_snr_db": None,
                                                   "min_top1_agreement": None,
                                                   "max_top1_drop": None}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_matches_pytorch_top1(xxs_export, fmt, capsys):
    result = xxs_export["B"]
    r = next(r for r in result.formats if r.format == fmt)
    photos = sample_image_paths()[:3]
    argv = ["predict", str(r.artifact), *map(str, photos), "--top", "3", "--json"]
    assert run(argv) == 0  # Core ML off macOS: through the reference executor
    predictions = json.loads(capsys.readouterr().out)
    model = create_model("mobilevit_xxs", patch_sizes="B",
                         weights=str(result.out.parent / "weights.safetensors"))
    x, _, _ = load_images(photos, 96, 64)  # the reference preprocessing: 288/256 resize, BGR
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).argmax(1).tolist()
    assert [p["top"][0]["class"] for p in predictions] == expected
    assert all(len(p["top"]) == 3 and p["top"][0]["probability"] >= p["top"][1]["probability"]
               for p in predictions)


@pytest.mark.slow
def test_predict_keeps_going_past_an_unreadable_image(xxs_export, tmp_path, capsys):
    r = next(r for r in xxs_export["B"].formats if r.format == "onnx")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    photos = [str(p) for p in sample_image_paths()[:2]]
    assert run(["predict", str(r.artifact), photos[0], str(bad), photos[1], "--json"]) == 2
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [("top" in p, "error" in p) for p in results] == [(True, False), (False, True),
                                                             (True, False)]
    assert captured.err.strip() == (f"mvdeploy: error: cannot read image {bad}: not an image "
                                    "file PIL can open")


@pytest.mark.slow
def test_predict_on_the_program_points_to_the_artifacts(xxs_export, capsys):
    program = xxs_export["B"].program
    assert run(["predict", str(program), str(sample_image_paths()[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no preprocessing or labels" in err and "\n" not in err


@pytest.mark.slow
def test_unreadable_validation_images_are_said_not_skipped_silently(tmp_path, capfd):
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_image_paths()[:2]:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_text("not a photo")
    assert run(["export", "-r", "64", "-f", "onnx", "--images", str(photos),
                "-o", str(tmp_path / "out")]) == 0
    assert "1 validation image(s) could not be read" in capfd.readouterr().err


@pytest.mark.slow
def test_partial_files_of_killed_runs_are_cleaned_at_the_next_run(tmp_path, capfd):
    """SIGKILL leaves hidden partial folders; the next export into the folder removes those
    whose writer is gone, says so, and leaves a live writer's alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    live = os.getppid()
    out = tmp_path / "out"
    (out / f".onnx.partial-{gone}-x1y2").mkdir(parents=True)
    (out / f".onnx.partial-{gone}-x1y2" / "half.onnx").write_bytes(b"half")
    (out / f".mobilevit_xxs_A_64x64.pt2.{gone}.abcd1234.partial").write_bytes(b"half")
    (out / f".onnx-convert-{gone}.log").write_text("log")
    (out / f".tflite.partial-{live}-z9").mkdir()
    assert run(["export", "-r", "64", "-f", "onnx", "-o", str(out)]) == 0
    assert "removed 3 partial file(s)" in capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        f".tflite.partial-{live}-z9", "mobilevit_xxs_A_64x64.pt2", "onnx"]
