"""The trained segmentation fixture: DeepLabV3-MobileViT-XXS trained here on digit scenes.

    python benchmarks/seg_fixture.py train                  # ~12 min on 2 cores
    python benchmarks/seg_fixture.py scenes --split held-out --out data/digit-scenes

`train` is seeded and runs on the CPU. Scenes (mvdeploy.fixtures.digit_scenes: handwritten
digits painted on photo crops, per-pixel labels, 11 classes) go through mvdeploy's own
preprocessing at 128x128 (no crop). The backbone starts from the trained digits classifier
(mvdeploy/fixtures/mobilevit_xxs_digits), and the ASPP head is learned. Training uses
cross-entropy on logits upsampled to the input (void 255 ignored), AdamW and a cosine schedule,
with scenes generated afresh each epoch. It reports held-out mIoU and writes
mvdeploy/fixtures/deeplabv3_mobilevit_xxs_scenes/ in transformers' layout, plus
`training.json`. `mvdeploy eval --task segmentation` must reproduce the mIoU on the folder that
`scenes` writes.
"""

from __future__ import annotations

import argparse
import json
import math
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
        if (epoch + 1) % 2 == 0 or epoch + 1 == args.epochs:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and write the checkpoint")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--scenes", type=int, default=384, help="fresh training scenes per epoch")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=str(OUT))
    s = sub.add_parser("scenes", help="write a split as a PASCAL VOC-layout folder")
    s.add_argument("--split", choices=("train", "held-out"), default="held-out")
    s.add_argument("--count", type=int, default=HELD_OUT_SCENES)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    else:
        images, masks = scenes(args.split, args.count, seed=args.seed)
        print(f"wrote {write_voc(args.out, images, masks)}")


if __name__ == "__main__":
    main()
