"""The trained segmentation fixture: DeepLabV3-MobileViT-XXS trained here on digit scenes.

    python benchmarks/seg_fixture.py train                  # ~8 min on 2 cores
    python benchmarks/seg_fixture.py scenes --split held-out --out data/digit-scenes
    python benchmarks/seg_fixture.py matrix                 # mIoU per format and precision

`train` is seeded and runs on the CPU. Scenes (mvdeploy.fixtures.digit_scenes: handwritten
digits painted on photo crops, per-pixel labels, 11 classes) go through mvdeploy's own
preprocessing at 128x128 (no crop). The backbone starts from the trained digits classifier
(mvdeploy/fixtures/mobilevit_xxs_digits), and the ASPP head is learned. Training uses
cross-entropy on logits upsampled to the input (void 255 ignored), AdamW and a cosine schedule,
with scenes generated afresh each epoch. It reports held-out mIoU and writes
mvdeploy/fixtures/deeplabv3_mobilevit_xxs_scenes/ in transformers' layout, plus
`training.json`. `mvdeploy eval --task segmentation` must reproduce the mIoU on the folder that
`scenes` writes.

`matrix` exports the fixture with `mvdeploy export` to each format and precision (int8-static
calibrated on training scenes, validated on other held-out scenes), scores every artifact with
`mvdeploy eval --task segmentation` on the held-out scenes, and writes
benchmarks/results/seg_fixture_matrix.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvdeploy.data import Preprocessing, normalise
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.fixtures.digit_scenes import CLASSES, SCENE_SIZE, VOID, scenes
from mvdeploy.models import create_model
from mvdeploy.models.weights import load_pretrained, save_pretrained
from mvdeploy.tasks.segmentation import ConfusionMatrix, write_voc

PREPROCESSING = Preprocessing(crop_pct=1.0)  # the scene is the whole input
OUT = Path(__file__).resolve().parents[1] / "mvdeploy" / "fixtures" / \
    "deeplabv3_mobilevit_xxs_scenes"
HELD_OUT_SCENES = 200


def tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(normalise(images, PREPROCESSING)), torch.from_numpy(masks).long()


@torch.no_grad()
def miou(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """mIoU and pixel accuracy, masks read as `mvdeploy eval` reads them (bilinear upsampling
    of the logits to the input, then argmax)."""
    model.eval()
    confusion = ConfusionMatrix(len(CLASSES))
    for xs, ys in zip(x.split(32), y.split(32), strict=True):
        logits = F.interpolate(model(xs), size=ys.shape[1:], mode="bilinear",
                               align_corners=False)
        confusion.update(logits.argmax(1).numpy(), ys.numpy())
    return confusion.miou(), confusion.pixel_accuracy()


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    x_held, y_held = tensors(*scenes("held-out", HELD_OUT_SCENES, seed=args.seed))
    model = create_model("deeplabv3_mobilevit_xxs", num_classes=len(CLASSES), init="random",
                         seed=args.seed)
    digits = load_pretrained(checkpoint_dir())  # the classification fixture's backbone
    backbone = {k: v for k, v in digits.state_dict().items()
                if k.startswith(("stem.", "stages."))}
    missing = model.load_state_dict(backbone, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    model.class_labels = list(CLASSES)
    baseline = float((y_held == 0).sum() / (y_held != VOID).sum())
    print(f"held-out {len(x_held)} scenes; all-background pixel accuracy {baseline:.2%}")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(args.scenes / args.batch)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))
    history, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        x, y = tensors(*scenes("train", args.scenes, seed=args.seed * 1000 + epoch))
        model.train()
        order, losses = torch.randperm(len(x)), []
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            logits = F.interpolate(model(x[idx]), size=(SCENE_SIZE, SCENE_SIZE),
                                   mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y[idx], ignore_index=VOID)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
               "seconds": round(time.perf_counter() - start, 1)}
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            row["held_out_miou"] = round(miou(model, x_held, y_held)[0], 4)
        history.append(row)
        print(json.dumps(row), flush=True)
    held_miou, held_accuracy = miou(model, x_held, y_held)
    out = save_pretrained(model.eval(), args.out, resolution=(SCENE_SIZE, SCENE_SIZE),
                          preprocessing=PREPROCESSING)
    (out / "training.json").write_text(json.dumps({
        "command": "python benchmarks/seg_fixture.py train "
                   f"--epochs {args.epochs} --scenes {args.scenes} --batch {args.batch} "
                   f"--lr {args.lr} --seed {args.seed}",
        "torch": torch.__version__, "train_scenes_per_epoch": args.scenes,
        "held_out_scenes": HELD_OUT_SCENES, "resolution": SCENE_SIZE, "patch": "A (2,2,2)",
        "classes": CLASSES, "backbone_init": "mvdeploy/fixtures/mobilevit_xxs_digits",
        "held_out_miou": round(held_miou, 4), "held_out_pixel_accuracy": round(held_accuracy, 4),
        "all_background_pixel_accuracy": round(baseline, 4),
        "seconds": round(time.perf_counter() - start, 1), "history": history}, indent=2) + "\n")
    print(f"held-out mIoU {held_miou:.4f}, pixel accuracy {held_accuracy:.2%}; wrote {out}")


# (format, precision): the float formats at fp32 and their own fp16, and every int8 recipe
MATRIX = [("onnx", "fp32"), ("tflite", "fp32"), ("coreml", "fp32"), ("executorch", "fp32"),
          ("onnx", "fp16"), ("tflite", "fp16"), ("coreml", "fp16"),
          ("onnx", "int8-dynamic"), ("tflite", "int8-dynamic"),
          ("onnx", "int8-static"), ("tflite", "int8-static")]
RESULTS = Path(__file__).resolve().parent / "results"


def _mvdeploy(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvdeploy.cli", *argv], capture_output=True,
                          text=True)


def matrix(args: argparse.Namespace) -> None:
    """Each (format, precision) exported as a user would and scored by `mvdeploy eval`."""
    work = Path(tempfile.mkdtemp(prefix="mvdeploy_seg_matrix_"))
    held_out = write_voc(work / "held-out", *scenes("held-out", HELD_OUT_SCENES, seed=0))
    calibration = work / "calibration"  # training scenes: disjoint from the held-out ones
    write_voc(calibration, *scenes("train", 128, seed=999))
    # what validation gates on: held-out scenes other than the scored ones (the bundled photos
    # hold no digits, so the fixture calls them background everywhere: a degenerate reference)
    report = write_voc(work / "report", *scenes("held-out", 12, seed=7))
    rows = []
    for fmt, precision in MATRIX:
        out = work / f"{fmt}-{precision}"
        start = time.perf_counter()
        flags = ["--coreml-precision", precision] if fmt == "coreml" else [
            "--precision", precision]
        done = _mvdeploy("export", "-m", "deeplabv3_mobilevit_xxs", "-w", str(args.weights),
                         "-r", str(SCENE_SIZE), "-f", fmt,
                         *flags, "--calibration", str(calibration / "JPEGImages"),
                         "--images", str(report / "JPEGImages"),
                         "-o", str(out), "--json")
        row = {"format": fmt, "precision": precision,
               "export_seconds": round(time.perf_counter() - start, 1)}
        try:
            (exported,) = json.loads(done.stdout)["formats"]
        except (json.JSONDecodeError, ValueError, KeyError):
            rows.append({**row, "error": done.stderr.strip().splitlines()[-1:]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row.update(validation=exported["status"], snr_db=exported.get("snr_db"),
                   pixel_agreement=exported.get("pixel_agreement"),
                   size_mb=exported.get("size_mb"))
        scored = _mvdeploy("eval", exported["artifact"], "--task", "segmentation", "--data",
                           str(held_out), "--weights", str(args.weights), "--json")
        if scored.returncode == 0:
            (result,) = json.loads(scored.stdout)
            row.update(miou=round(result["miou"], 4),
                       pixel_accuracy=round(result["pixel_accuracy"], 4),
                       pytorch_miou=round(result["reference"]["miou"], 4),
                       same_pixels=round(result["agreement"]["pixels"], 4))
        else:
            row["error"] = scored.stderr.strip().splitlines()[-1:]
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"command": "python benchmarks/seg_fixture.py matrix", "machine": platform.machine(),
            "held_out_scenes": HELD_OUT_SCENES, "resolution": SCENE_SIZE,
            "weights": str(Path(args.weights).name), "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seg_fixture_matrix.json").write_text(json.dumps(
        {**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Segmentation fixture: mIoU per format and precision ({meta['date']})", "",
             f"`{meta['command']}`: the trained DeepLabV3-MobileViT-XXS "
             f"(`mvdeploy/fixtures/{meta['weights']}`) at {SCENE_SIZE}², each artifact scored "
             f"by `mvdeploy eval --task segmentation` on {HELD_OUT_SCENES} held-out digit "
             "scenes (digits and backgrounds no training scene has). int8-static calibrates on "
             "128 training scenes; validation gates on 12 other held-out scenes.", "",
             "| format | precision | MB | validation | SNR dB | mIoU | PyTorch mIoU | "
             "pixel acc. | same pixels as PyTorch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "miou" not in r:
            lines.append(f"| {r['format']} | {r['precision']} | - | error: "
                         f"{' '.join(r.get('error', []))} | | | | | |")
            continue
        lines.append(f"| {r['format']} | {r['precision']} | {r['size_mb']} | {r['validation']} "
                     f"| {r['snr_db']} | {r['miou']:.4f} | {r['pytorch_miou']:.4f} | "
                     f"{r['pixel_accuracy']:.2%} | {r['same_pixels']:.2%} |")
    (RESULTS / "seg_fixture_matrix.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'seg_fixture_matrix.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and write the checkpoint")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--scenes", type=int, default=512, help="fresh training scenes per epoch")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=str(OUT))
    s = sub.add_parser("scenes", help="write a split as a PASCAL VOC-layout folder")
    s.add_argument("--split", choices=("train", "held-out"), default="held-out")
    s.add_argument("--count", type=int, default=HELD_OUT_SCENES)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    m = sub.add_parser("matrix", help="mIoU of every format and precision (results/)")
    m.add_argument("--weights", default=str(OUT))
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    elif args.command == "matrix":
        matrix(args)
    else:
        images, masks = scenes(args.split, args.count, seed=args.seed)
        print(f"wrote {write_voc(args.out, images, masks)}")


if __name__ == "__main__":
    main()
