"""The trained fixture: train MobileViT-XXS on scikit-learn's digits, or write its image folders.

    python benchmarks/digits_fixture.py train          # ~3 min on 2 cores; rewrites the checkpoint
    python benchmarks/digits_fixture.py images --split held-out --out data/digits-held-out

`train` is seeded and runs on the CPU: it reads the training split through mvdeploy's own
preprocessing (8x8 PNG -> 64x64, as any exported artifact will see it), trains with small
random affine augmentation (AdamW, cosine schedule, label smoothing), reports the held-out
accuracy of the float model and writes mvdeploy/fixtures/mobilevit_xxs_digits/ in transformers'
layout plus `training.json` (settings, per-epoch loss, accuracy). Its result is what
`mvdeploy eval` must reproduce on the written held-out folder.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mvdeploy.data import Preprocessing, preprocess
from mvdeploy.fixtures import RESOLUTION, checkpoint_dir, digits_split, write_digits
from mvdeploy.models import create_model
from mvdeploy.models.weights import save_pretrained

# the 8x8 digit is resized to fill the 64x64 input (no crop); channel order as the published
# checkpoints (BGR; the digits are grey, so it changes nothing but keeps one convention)
PREPROCESSING = Preprocessing(crop_pct=1.0)


def inputs(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = digits_split(split)
    x = np.stack([preprocess(Image.fromarray(im, mode="L"), RESOLUTION, RESOLUTION,
                             PREPROCESSING) for im in images])
    return torch.from_numpy(x), torch.from_numpy(labels)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (+-12 deg), scale (0.9-1.1) and shift (+-10 %), zero fill."""
    n = len(x)
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(24)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    return float((predicted == y).float().mean())


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = inputs("train")
    x_held, y_held = inputs("held-out")
    print(f"train {len(x_train)} images, held-out {len(x_held)}, {RESOLUTION}x{RESOLUTION}")
    model = create_model("mobilevit_xxs", num_classes=10, patch_sizes="A", init="random",
                         seed=args.seed)
    model.class_labels = [str(i) for i in range(10)]
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch)
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch * 2
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            logits = model(augment(x_train[idx], gen))
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
               "seconds": round(time.perf_counter() - start, 1)}
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            row["held_out_top1"] = round(accuracy(model, x_held, y_held), 4)
        history.append(row)
        print(json.dumps(row), flush=True)
    model.eval()
    top1 = accuracy(model, x_held, y_held)
    out = save_pretrained(model, args.out, resolution=(RESOLUTION, RESOLUTION),
                          preprocessing=PREPROCESSING)
    (out / "training.json").write_text(json.dumps({
        "command": "python benchmarks/digits_fixture.py train "
                   f"--epochs {args.epochs} --batch {args.batch} --lr {args.lr} --seed {args.seed}",
        "torch": torch.__version__, "train_images": len(x_train),
        "held_out_images": len(x_held), "resolution": RESOLUTION, "patch": "A (2,2,2)",
        "held_out_top1": round(top1, 4), "seconds": round(time.perf_counter() - start, 1),
        "history": history}, indent=2) + "\n")
    print(f"held-out top-1 {top1:.2%}; wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and write the checkpoint")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=str(checkpoint_dir()))
    i = sub.add_parser("images", help="write a split as CLASS/*.png")
    i.add_argument("--split", choices=("train", "held-out"), default="held-out")
    i.add_argument("--out", required=True)
    i.add_argument("--per-class", type=int, default=None,
                   help="only the first N images of each digit (e.g. a validation sample)")
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    else:
        print(f"wrote {write_digits(args.out, args.split, args.per_class)}")


if __name__ == "__main__":
    main()
