"""DeepLabV3 segmentation through export, predict and eval (issue 25, item 2): per-pixel logits
out of every format, validated against PyTorch per pixel; masks written by `predict`; mIoU of a
PASCAL VOC-layout folder through `mvdeploy eval`; and the done-when, a Hugging Face hub id
exported to ONNX, TFLite, Core ML (reference executor) and ExecuTorch, whose ONNX gives
transformers' own logits on transformers' own processor output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvdeploy.cli import run
from mvdeploy.data import sample_image_paths
from mvdeploy.tasks import segmentation
from tests.helpers import (
    export_hub_id_to_every_format,
    lay_out_hub_cache,
    needs,
    run_python_snippet,
)


def segmentation_fixture_dir():
    from mvdeploy.fixtures import segmentation_checkpoint_dir

    return segmentation_checkpoint_dir()


# what transformers' convert_mlcvnets_to_pytorch.py writes for the DeepLabV3 checkpoints
# (MobileViTImageProcessor(crop_size=512, size=544)), in the older flat form
APPLE_SEG_PREPROCESSOR = {"crop_size": 512, "do_center_crop": True, "do_flip_channel_order": True,
                          "do_resize": True, "feature_extractor_type": "MobileViTFeatureExtractor",
                          "resample": 2, "size": 544}


def _export(tmp_path, capsys, *args) -> dict:
    code = run(["export", "-m", "deeplabv3_mobilevit_xxs", "-r", "64", "-o",
                str(tmp_path / "out"), "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return {f["format"]: f for f in json.loads(out)["formats"]}


def _export_config_with_fixture(config: str, out: Path, *args: str) -> None:
    """export_configs/<config>.toml with the trained segmentation fixture at 128x128, as a user
    runs it, in its own process: a converter forked from a test process that has run
    onnxruntime sessions once hung on a lock held at fork time."""
    done = subprocess.run(
        [sys.executable, "-m", "mvdeploy.cli", "export", f"export_configs/{config}.toml",
         "--set", f"model.weights={segmentation_fixture_dir()}", "--set",
         "model.resolution=128", "--set", f"export.out={out}", *args],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def voc_folder(root, photos, masks) -> None:
    """A PASCAL VOC-layout folder: photos and palette masks (255 = void)."""
    (root / segmentation.IMAGE_DIR).mkdir(parents=True)
    (root / segmentation.MASK_DIR).mkdir()
    for index, (photo, mask) in enumerate(zip(photos, masks, strict=True)):
        (root / segmentation.IMAGE_DIR / f"{index:03}.jpg").write_bytes(photo.read_bytes())
        segmentation.colour_mask(mask).save(root / segmentation.MASK_DIR / f"{index:03}.png")


# CI time: the trained fixture's test below proves the same path in the fast suite
@pytest.mark.slow
@pytest.mark.extended
def test_seeded_deeplab_exports_validates_predicts_and_evals(tmp_path, capsys):
    """ONNX at 64²: the manifest records the task and per-pixel shape, the reference masks
    vary (so agreement means something), predict writes a VOC-coloured mask whose pixels are
    class indices, and eval's mIoU on a VOC folder equals the mIoU of PyTorch's own masks."""
    # no centre crop (crop_pct 1): a mask in the frame the model saw is then in the photo's
    report = _export(tmp_path, capsys, "-f", "onnx", "--set", "preprocessing.crop_pct=1.0")["onnx"]
    assert report["status"] == "passed" and not report["degenerate"]
    assert report["pixel_agreement"] == 1.0 and report["mask_miou"] == 1.0
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    assert manifest["model"]["task"] == "segmentation" and manifest["model"]["num_classes"] == 21
    onnx_file = report["artifact"]

    photos = sample_image_paths()
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    assert run(["predict", onnx_file, *map(str, sorted(folder.iterdir())), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    masks = []
    for one in found:
        with Image.open(one["mask"]) as image:
            assert image.mode == "P" and image.size == (64, 64)
            masks.append(np.asarray(image))
        assert abs(sum(c["share"] for c in one["classes"]) - 1) < 1e-3 or len(one["classes"]) == 5
    # the seeded reference is not one class everywhere, nor the same mask for every photo
    assert len(np.unique(np.stack(masks))) >= 2
    assert len({m.tobytes() for m in masks}) >= 3

    # truth = the model's own masks on 64x64 photos (no crop: the photo's frame): mIoU 1
    voc = tmp_path / "voc"
    small = []
    for photo in photos:
        resized = tmp_path / f"small_{photo.name}"
        Image.open(photo).convert("RGB").resize((64, 64)).save(resized, quality=100)
        small.append(resized)
    assert run(["predict", onnx_file, *map(str, small), "--json"]) == 0
    own = [np.asarray(Image.open(r["mask"])) for r in json.loads(capsys.readouterr().out)]
    voc_folder(voc, small, own)
    assert run(["eval", onnx_file, "--task", "segmentation", "--data", str(voc), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["task"] == "segmentation" and result["images"] == len(photos)
    assert result["miou"] > 0.99 and result["pixel_accuracy"] > 0.99

    # a wrong truth scores low: every label moved to another class
    wrong = tmp_path / "wrong"
    voc_folder(wrong, small, [(m + 1) % 21 for m in own])
    assert run(["eval", onnx_file, "--data", str(wrong), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["miou"] < 0.05


def test_softmax_head_is_over_the_class_axis():
    """The probabilities head (tflite.softmax_output, Core ML's classifier) normalises over
    classes: per row for [B, classes], per pixel for [B, classes, h, w]."""
    from mvdeploy.models.heads import WithSoftmax
    from mvdeploy.tensor_names import OUTPUT_NAME, PROBS_NAME

    class Scores(torch.nn.Module):
        def forward(self, pixel_values):
            return {OUTPUT_NAME: pixel_values}

    x = torch.randn(2, 21, 4, 5)
    probs = WithSoftmax(Scores())(x)[PROBS_NAME]
    assert torch.allclose(probs, torch.softmax(x, dim=1))
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 5))
    rows = torch.randn(3, 10)
    assert torch.allclose(WithSoftmax(Scores())(rows)[PROBS_NAME], torch.softmax(rows, -1))


def test_segmentation_refusals_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert run(["export", "-m", "deeplabv3_mobilevit_xxs", "-f", "coreml", "--set",
                "coreml.classifier=true", "-o", out]) == 2
    assert "coreml.classifier is for classifiers" in capsys.readouterr().err
    assert run(["export", "-m", "deeplabv3_mobilevit_xxs", "-f", "onnx", "--set",
                "export.layout=hf", "-o", out]) == 2
    assert "segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # --mask: only for segmentation, not with a search that compares logits or a softmax
    for args, said in ((["-m", "mobilevit_xxs", "-f", "onnx"], "is a classification model"),
                       (["-m", "deeplabv3_mobilevit_xxs", "-f", "onnx", "--precision",
                         "int8-static"], "float-group search compares logits"),
                       (["-m", "deeplabv3_mobilevit_xxs", "-f", "tflite", "--set",
                         "tflite.softmax_output=true"], "no scores to soften")):
        assert run(["export", *args, "--mask", "-o", out]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_mask_head_is_the_argmax_of_upsampled_logits():
    """export.mask's head gives, inside the model, what `predict` computes from logits: the
    argmax of the logits upsampled bilinearly to the input (align_corners=False), int32."""
    from mvdeploy.models import create_model
    from mvdeploy.models.heads import ArgmaxMask

    model = create_model("deeplabv3_mobilevit_xxs").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got, logits = ArgmaxMask(model)(x), model(x).numpy()
    assert got.dtype == torch.int32 and got.shape == (2, 64, 96)
    want = segmentation.masks(segmentation.upsample(logits, 64, 96))
    assert len(np.unique(want)) > 1
    assert (got.numpy() == want).all()


def test_mask_comparison_counts_decisive_pixels_and_catches_a_wrong_mask():
    """A mask artifact is compared with PyTorch's upsampled logits: near-tie pixels do not
    count against it, a mask off by one class fails, and the score metrics are absent."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 5, 8, 8)).astype(np.float32)
    scores[0, :, 0, 0] = [3.0, 3.0 + 1e-6, 0, 0, 0]  # a near tie
    right = segmentation.masks(scores).astype(np.int32)
    m = segmentation.compare(scores, right)
    assert m.top1_agreement == 1.0 and m.mask_miou == 1.0 and m.snr_db is None
    flipped = right.copy()
    flipped[0, 0, 0] = 0  # the other side of the tie: not decisive, not counted
    m = segmentation.compare(scores, flipped)
    assert m.top1_agreement < 1.0 and m.top1_agreement_decisive == 1.0
    wrong = segmentation.compare(scores, (right + 1) % 5)
    assert wrong.top1_agreement_decisive == 0.0 and wrong.mask_miou == 0.0
    with pytest.raises(ValueError, match="mask"):
        segmentation.compare(scores, right[:, :4])


def test_trained_fixture_mask_export_predicts_and_evals_as_pytorch(tmp_path, capsys):
    """--mask on the trained fixture (ONNX at 128²): the artifact outputs int32 class indices
    at the input's size, validation gates them on PyTorch's upsampled argmax, `predict` writes
    them as they are, and `eval` scores them to PyTorch's mIoU."""
    from mvdeploy.fixtures.digit_scenes import scenes

    fixture = segmentation_fixture_dir()
    report = segmentation.write_voc(tmp_path / "report", *scenes("held-out", 4, seed=7))
    held_out = segmentation.write_voc(tmp_path / "held-out", *scenes("held-out", 12, seed=0))
    assert run(["export", "-m", "deeplabv3_mobilevit_xxs", "-w", str(fixture), "-r", "128",
                "-f", "onnx", "--mask", "--images", str(report / segmentation.IMAGE_DIR),
                "-o", str(tmp_path / "out"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["formats"]
    assert row["status"] == "passed" and not row["degenerate"], row["failures"]
    assert row["pixel_agreement_decisive"] >= 0.999 and row["snr_db"] is None
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    assert manifest["artifact"]["outputs"] == [
        {"name": "mask", "shape": [1, 128, 128], "dtype": "int32"}]
    assert run(["eval", row["artifact"], "--task", "segmentation", "--data", str(held_out),
                "--weights", str(fixture), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["miou"] == pytest.approx(result["reference"]["miou"], abs=2e-3)
    assert result["miou"] > 0.2  # background everywhere scores about 0.07
    photo = held_out / segmentation.IMAGE_DIR / "0000.png"
    assert run(["predict", row["artifact"], str(photo), "--masks", str(tmp_path / "masks"),
                "--json"]) == 0
    capsys.readouterr()
    from mvdeploy.models.weights import load_pretrained

    model = load_pretrained(fixture)
    x = segmentation.read_pair(photo, held_out / segmentation.MASK_DIR / "0000.png", 128, 128,
                               model.preprocessing)[0]
    with torch.no_grad():
        logits = model(torch.from_numpy(x[None])).numpy()
    want = segmentation.masks(segmentation.upsample(logits, 128, 128))[0]
    written = np.asarray(Image.open(tmp_path / "masks" / "0000_mask.png"))
    assert len(np.unique(want)) >= 3 and (written == want).mean() >= 0.999
    # formats without embedded metadata (ExecuTorch) are read through the manifest's record
    from mvdeploy.readback.inspect import inspect_artifact
    from mvdeploy.readback.predict import embedded_metadata, fidelity

    info = inspect_artifact(row["artifact"])
    assert embedded_metadata({**info, "metadata": {}})["output_kind"] == "mask"
    # against the .pt2 export wrote beside it, which outputs the mask too
    (program,) = (tmp_path / "out").glob("*.pt2")
    metrics, _ = fidelity(row["artifact"], program, [photo])
    assert metrics.top1_agreement >= 0.999


# CI time: the MediaPipe test below proves NHWC per-pixel output, and
# test_softmax_head_is_over_the_class_axis the per-pixel softmax
@pytest.mark.slow
@pytest.mark.extended
@needs("tflite")
def test_android_tflite_gives_per_pixel_probabilities_nhwc(tmp_path, capsys):
    """--channels-last with softmax: NHWC in, NHWC [1, h, w, 21] probabilities out (what
    MediaPipe's ImageSegmenter reads), equal to PyTorch's per-pixel softmax."""
    report = _export(tmp_path, capsys, "-f", "tflite", "--channels-last", "--set",
                     "tflite.softmax_output=true")["tflite"]
    assert report["status"] == "passed" and report["pixel_agreement"] == 1.0
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=report["artifact"])
    (details,) = interpreter.get_output_details()
    assert list(details["shape"]) == [1, 4, 4, 21]


@pytest.mark.slow
@needs("tflite", "coreml", "executorch")
def test_export_deeplab_hub_id_to_every_format_reproduces_transformers(tmp_path):
    """The done-when: `mvdeploy export --model deeplabv3_mobilevit_xxs --weights
    apple/deeplabv3-mobilevit-xx-small` from a laid-out hub cache, offline, validates for ONNX,
    TFLite, Core ML (reference executor, fp32) and ExecuTorch; the ONNX then gives
    transformers' MobileViTForSemanticSegmentation logits on MobileViTImageProcessor's output
    (the checkpoint's own library and preprocessing)."""
    from transformers import MobileViTImageProcessor

    from tests.test_segmentation import hf_seg_folder

    hf, directory = hf_seg_folder(tmp_path, "deeplabv3_mobilevit_xxs", seed=3)
    cache = tmp_path / "hub"
    repo = "apple/deeplabv3-mobilevit-xx-small"
    lay_out_hub_cache(cache, repo, {"config.json": directory / "config.json",
                                    "model.safetensors": directory / "model.safetensors",
                                    "preprocessor_config.json": APPLE_SEG_PREPROCESSOR})
    # at 128² (the conversions of a 512² input take minutes), the crop ratio of 512 / 544
    report = export_hub_id_to_every_format("deeplabv3_mobilevit_xxs", repo, cache,
                                           tmp_path / "out", "-r", "128")
    for fmt, row in report.items():
        assert row["pixel_agreement"] > 0.999, (fmt, row)

    processor = MobileViTImageProcessor.from_pretrained(repo, cache_dir=cache,
                                                        local_files_only=True)
    photos = [Image.open(p).convert("RGB") for p in sample_image_paths()]
    # mvdeploy keeps the checkpoint's crop ratio: shorter side floor(128 * 544 / 512) = 136
    pixels = processor(photos, return_tensors="pt", crop_size=128, size=136)["pixel_values"]
    with torch.no_grad():
        expected = hf(pixel_values=pixels).logits.numpy()
    masks = expected.argmax(1)  # the reference tells photos and pixels apart
    assert len({m.tobytes() for m in masks}) == len(photos) and len(np.unique(masks)) >= 3
    import onnxruntime as ort

    session = ort.InferenceSession(report["onnx"]["artifact"])
    logits = np.concatenate([session.run(["logits"], {"pixel_values": x[None]})[0]
                             for x in pixels.numpy()])
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_deeplab_layer_groups_come_from_the_graph():
    """int8 can keep each ASPP branch, its projection and the classifier float: every op of
    the captured DeepLabV3 falls in a named group."""
    from mvdeploy.backends.capture import capture
    from mvdeploy.models import create_model
    from mvdeploy.models.groups import node_group

    model = create_model("deeplabv3_mobilevit_xxs", init="random")
    graph = capture(model, torch.zeros(1, 3, 64, 64)).module.graph
    groups = [node_group(n) for n in graph.nodes if n.op == "call_function"
              and n.meta.get("nn_module_stack")]
    assert None not in groups
    assert {f"aspp.convs.{i}" for i in range(5)} | {"aspp.fuse", "classifier", "stem"} \
        <= set(groups)


def test_bench_seeds_a_segmentation_model_as_a_folder(tmp_path):
    """The bench's seeded weights for DeepLabV3 are a Hugging Face folder (a bare state dict
    has no output stride or ASPP rates), and load as the same model."""
    from mvdeploy.bench.artifacts import seeded_weights
    from mvdeploy.models import create_model
    from mvdeploy.models.weights import load_pretrained

    folder = seeded_weights(tmp_path, "deeplabv3_mobilevit_xxs")
    assert folder.is_dir() and (folder / "config.json").is_file()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_pretrained(folder)(x), create_model("deeplabv3_mobilevit_xxs")(x))
    assert seeded_weights(tmp_path, "deeplabv3_mobilevit_xxs") == folder  # cached


@pytest.mark.slow
@needs("tflite")
def test_mediapipe_image_segmenter_loads_the_android_tflite_and_agrees_with_pytorch(tmp_path):
    """The shipped Android config, with the trained fixture at its 128x128: MediaPipe Tasks'
    ImageSegmenter loads the .tflite as it is (normalisation, RGB, labels and activation from
    its metadata), and run through the Python snippet `mvdeploy snippet --client
    mediapipe-python` writes, its category mask equals PyTorch's on held-out scenes; the
    Kotlin snippets name the file's real tensors. MediaPipe
    upsamples the logits bilinearly with aligned corners before the argmax (measured against
    it); the scenes are fed at 128x128, so MediaPipe's own resize changes nothing."""
    pytest.importorskip("mediapipe")
    import torch.nn.functional as F

    from mvdeploy.data import normalise
    from mvdeploy.fixtures.digit_scenes import CLASSES, scenes
    from mvdeploy.models.weights import load_pretrained
    from mvdeploy.readback.inspect import inspect_artifact
    from mvdeploy.readback.snippets import load_manifest, snippet

    fixture = segmentation_fixture_dir()
    out = tmp_path / "android"
    _export_config_with_fixture("deeplabv3_mobilevit_xxs_android", out, "-f", "tflite")
    (tflite,) = (out / "tflite").glob("*.tflite")
    # the Python snippet mvdeploy writes for it, run as a user would (from the file's folder)
    namespace = run_python_snippet(tflite)

    images, _ = scenes("held-out", 6, seed=1)
    model = load_pretrained(fixture)
    with torch.no_grad():
        logits = model(torch.from_numpy(normalise(images, model.preprocessing)))
    expected = F.interpolate(logits, size=images.shape[1:3], mode="bilinear",
                             align_corners=True).argmax(1).numpy()
    assert len(np.unique(expected)) >= 4  # the reference finds digits, not one class
    for n, (image, want) in enumerate(zip(images, expected, strict=True)):
        photo = tmp_path / f"scene{n}.png"  # 128x128: the snippet's resize and crop keep it
        Image.fromarray(image).save(photo)
        got, labels = namespace["segment"](str(photo))
        assert labels == CLASSES  # from the file's packed label file
        assert got.shape == want.shape
        assert (got == want).mean() >= 0.999
    info = inspect_artifact(tflite)
    (inp,), (out,) = info["inputs"], info["outputs"]
    _, rows, cols, classes = out["shape"]  # NHWC logits
    language, kotlin = snippet(load_manifest(tflite))
    assert language == "kotlin" and "fun segment(" in kotlin
    assert f'mapOf("{inp["name"]}" to input)' in kotlin
    assert f'mapOf("{out["name"]}" to scores)' in kotlin
    assert f"Array({rows}) {{ Array({cols}) {{ FloatArray({classes}) }} }}" in kotlin
    _, kotlin = snippet(load_manifest(tflite), "mediapipe")
    assert "ImageSegmenter.createFromOptions" in kotlin and f'"{tflite.name}"' in kotlin


def test_trained_fixture_miou_through_eval_equals_pytorch(tmp_path, capsys):
    """The done-when's accuracy half: the trained segmentation fixture exported to ONNX and
    scored by `mvdeploy eval --task segmentation` on held-out digit scenes (digits and
    backgrounds no training scene has) gives PyTorch's mIoU, clearly above background
    everywhere; its labels travel in the artifact."""
    from mvdeploy.fixtures.digit_scenes import CLASSES, scenes

    fixture = segmentation_fixture_dir()
    report = segmentation.write_voc(tmp_path / "report", *scenes("held-out", 4, seed=7))
    held_out = segmentation.write_voc(tmp_path / "held-out", *scenes("held-out", 40, seed=0))
    assert run(["export", "-m", "deeplabv3_mobilevit_xxs", "-w", str(fixture), "-r", "128",
                "-f", "onnx", "--images", str(report / segmentation.IMAGE_DIR),
                "-o", str(tmp_path / "out"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["formats"]
    assert row["status"] == "passed" and not row["degenerate"]
    assert run(["eval", row["artifact"], "--task", "segmentation", "--data", str(held_out),
                "--weights", str(fixture), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["miou"] == pytest.approx(result["reference"]["miou"], abs=1e-3)
    assert result["agreement"]["pixels"] > 0.999
    _, truth = scenes("held-out", 40, seed=0)
    background = float(((truth == 0).sum() / (truth != 255).sum()) / len(CLASSES))
    assert result["miou"] > 3 * background  # background everywhere scores about 0.07
    assert run(["predict", row["artifact"], str(held_out / segmentation.IMAGE_DIR / "0000.png"),
                "--masks", str(tmp_path / "masks"), "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert {c["label"] for c in found["classes"]} <= set(CLASSES)
    assert run(["snippet", row["artifact"]]) == 2  # ONNX: no app snippet, one line on why
    assert "not onnx" in capsys.readouterr().err


@pytest.mark.slow
@needs("coreml")
def test_ios_config_gives_image_input_and_a_mask_core_ml_computes_as_pytorch(tmp_path, capsys):
    """The shipped iOS segmentation config, with the trained fixture at 128x128: Core ML fp16
    with an image input (RGB, scale built in) and an int32 [1, 128, 128] mask output, whose
    masks (through the reference executor, fed the picture as Core ML is) are PyTorch's on
    held-out scenes."""
    from mvdeploy.fixtures.digit_scenes import scenes
    from mvdeploy.readback.inspect import inspect_artifact
    from mvdeploy.readback.snippets import load_manifest, snippet

    fixture = segmentation_fixture_dir()
    report = segmentation.write_voc(tmp_path / "report", *scenes("held-out", 4, seed=7))
    out = tmp_path / "ios"
    _export_config_with_fixture("deeplabv3_mobilevit_xxs_ios", out,
                                "--images", str(report / segmentation.IMAGE_DIR))
    manifest = json.loads((out / "coreml" / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert manifest["artifact"]["precision"] == "fp16"
    (package,) = (out / "coreml").glob("*.mlpackage")
    info = inspect_artifact(package)
    assert info["inputs"][0]["dtype"].startswith("image")
    assert [(o["name"], o["shape"], o["dtype"]) for o in info["outputs"]] == [
        ("mask", [1, 128, 128], "int32")]
    language, swift = snippet(load_manifest(package))  # Vision, the file's names
    assert language == "swift" and f"try {package.stem}(configuration:" in swift
    assert '$0.featureName == "mask"' in swift
    held_out = segmentation.write_voc(tmp_path / "held-out", *scenes("held-out", 3, seed=3))
    photos = sorted((held_out / segmentation.IMAGE_DIR).glob("*.png"))
    assert run(["predict", str(package), *map(str, photos), "--masks", str(tmp_path / "m"),
                "--json"]) == 0
    capsys.readouterr()
    from mvdeploy.models.weights import load_pretrained

    model = load_pretrained(fixture)
    for photo in photos:
        x = segmentation.read_pair(photo, held_out / segmentation.MASK_DIR / photo.name, 128, 128,
                                   model.preprocessing)[0]
        with torch.no_grad():
            logits = model(torch.from_numpy(x[None])).numpy()
        want = segmentation.masks(segmentation.upsample(logits, 128, 128))[0]
        written = np.asarray(Image.open(tmp_path / "m" / f"{photo.stem}_mask.png"))
        assert len(np.unique(want)) >= 2 and (written == want).mean() >= 0.995
