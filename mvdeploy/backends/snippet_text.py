"""Pieces of app code more than one format's snippet() writes (preprocessing in words and in
Kotlin), from the manifest's preprocessing record."""

from __future__ import annotations


def crop_text(prep: dict) -> str:
    height, width = prep["crop"]
    return f"resize the shorter side to {prep['resize_shorter_side']}, centre-crop {height}x{width}"


def kotlin_channel_expr(channel: str, prep: dict) -> str:
    """Kotlin expression for one channel of an ARGB pixel `p`, normalised as in training."""
    shift = {"R": 16, "G": 8, "B": 0}[channel]
    index = "RGB".index(channel)  # mean / std are given in RGB order
    value = f"(p shr {shift} and 0xFF)" if shift else "(p and 0xFF)"
    expr = f"{value} * {prep['scale']:.8g}f"
    mean, std = prep["mean"][index], prep["std"][index]
    if mean:
        expr = f"({expr} - {mean:.8g}f)"
    if std != 1:
        expr = f"{expr} / {std:.8g}f"
    return expr
