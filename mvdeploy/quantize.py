"""Quantisation shared by several formats: calibration data, PyTorch-level (PT2E) int8, and
the search for what stays float.

Which recipes a format offers, and how its file proves them, is in the format's SPEC; this
module answers questions about a (format, recipe) pair through the registry. PT2E runs here
on the captured graph for the formats that quantise in PyTorch before conversion.

The search (`search_float_groups`) is format-free: a format that offers it hands over
`Trials`, its own quantiser run on its own runtime or a faithful simulation of it, and the
search asks them for logits with some layer groups left in float.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from mvdeploy.backends import spec
from mvdeploy.errors import ConfigError

# "auto" is each format's measured default (FormatSpec.calibration_methods[0])
CALIBRATION_METHODS = ("auto", "minmax", "entropy", "percentile", "histogram")
KEEP_FLOAT_CHOICES = ("softmax", "layernorm", "attention", "activations")


def check_recipe(fmt: str, recipe: str) -> None:
    recipes = spec(fmt).recipes
    if recipe not in recipes:
        raise ConfigError(
            f"{fmt} cannot do precision {recipe!r}: choose one of {', '.join(recipes)}"
        )


def needs_calibration(fmt: str, recipe: str) -> bool:
    return spec(fmt).recipes[recipe].calibrated


def calibration_method(fmt: str, method: str) -> str:
    """quantize.calibration_method for `fmt`: "auto" is the format's measured default (the first
    of FormatSpec.calibration_methods)."""
    return spec(fmt).calibration_methods[0] if method == "auto" else method


def tolerance_kind(fmt: str, recipe: str) -> str:
    """'fp32' (relative max abs), 'fp16' or 'quantized' (SNR)."""
    return spec(fmt).recipes[recipe].tolerance


@dataclass(frozen=True)
class Calibration:
    images: np.ndarray  # [N, 3, H, W], preprocessed like inference
    names: list[str]


def augmented_views(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`images` followed by random resized crops (half to all of each side) and mirror images
    of them, up to `count` in all: a few photos then cover more of the ranges and positions a
    model meets. Deterministic for a seed."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = images.shape
    views = list(images[:count])
    rng = np.random.default_rng(seed)
    while len(views) < count:
        image = images[len(views) % n]
        scale = rng.uniform(0.5, 1.0)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = torch.from_numpy(np.ascontiguousarray(image[:, top:top + h, left:left + w]))
        view = F.interpolate(crop[None], size=(height, width), mode="bilinear",
                             align_corners=False)[0].numpy()
        views.append(view[:, :, ::-1] if rng.random() < 0.5 else view)
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)


# ---------------------------------------------------------------- layer groups

def _relative(path: str) -> str:
    """A module path below the MobileViT itself ("model.stages.2.1" -> "stages.2.1")."""
    match = re.search(r"(?:^|\.)model\.(.*)$", path)
    return match.group(1) if match else ""


def layer_group(stack: Iterable[tuple[str, str]]) -> str | None:
    """The layer group an op belongs to, from its module stack [(path, class name)], outermost
    first, as torch.export's nn_module_stack and the ONNX exporter's node metadata give it.

    Groups are what int8 can be switched off for: the stem, each MobileNetV2 block, a MobileViT
    block's local convs (`.local`), each transformer layer's attention (`.attn`, with its
    LayerNorm) and MLP (`.mlp`), a MobileViT block's fold and fusion (`.fusion`), `head_conv`
    and `classifier`. None: an op outside every group (the global pooling)."""
    entries = [(_relative(path), kind.rsplit(".", 1)[-1]) for path, kind in stack]
    entries = [(path, kind) for path, kind in entries if path]
    innermost = {kind: path for path, kind in entries}

    def child_of(parent: str) -> str:
        below = [p for p, _ in entries if p.startswith(parent + ".")]
        return below[0][len(parent) + 1:].split(".")[0] if below else ""

    if "TransformerLayer" in innermost:
        layer = innermost["TransformerLayer"]
        return f"{layer}.attn" if child_of(layer) in ("norm1", "attn") else f"{layer}.mlp"
    if "MobileViTBlock" in innermost:
        block = innermost["MobileViTBlock"]
        return f"{block}.local" if child_of(block) in ("local_conv", "to_tokens") else (
            f"{block}.fusion")
    if "InvertedResidual" in innermost:
        return innermost["InvertedResidual"]
    top = entries[0][0].split(".")[0] if entries else ""
    return top if top in ("stem", "head_conv", "classifier") else None


def node_group(node) -> str | None:
    """layer_group of a torch.fx node (from its nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    return layer_group((path, kind if isinstance(kind, str) else kind.__qualname__)
                       for path, kind in stack.values())


# ---------------------------------------------------------------- PT2E (TFLite, Core ML w8a8)

def _quantised(node, float_groups: frozenset[str], only: str | None) -> bool:
    """Whether an op is int8 in a try: in `only` if given, else outside `float_groups`.
    Weights and inputs (not call_function) go with the op that reads them."""
    if node.op != "call_function":
        return True
    group = node_group(node)
    return group == only if only is not None else group not in float_groups


def _prepared(module, *, per_channel: bool, observer: str,
              wanted: Callable[[object], bool] = lambda node: True):
    """`module` with litert-torch's symmetric int8 observers on the ops `wanted` accepts, and
    the quantizer (LiteRT needs it again at conversion)."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel)
    if observer == "minmax":
        act = replace(config.input_activation,
                      observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = replace(config, input_activation=act, output_activation=act)

    class GroupQuantizer(pt2e_quantizer.PT2EQuantizer):
        """litert-torch's quantizer, annotating only the ops of the wanted groups."""

        def _annotate_for_static_quantization_config(self, model):
            self._annotate_all_static_patterns(model, self.global_config, wanted)
            return model

    quantizer = GroupQuantizer().set_global(config)
    return quantize_pt2e.prepare_pt2e(module, quantizer), quantizer


def _calibrate(prepared, calibration: Calibration, input_name: str) -> None:
    import torch

    with torch.no_grad():
        for image in calibration.images:
            prepared(**{input_name: torch.from_numpy(image[None])})


def pt2e_quantize(module, calibration: Calibration, *, per_channel: bool, input_name: str,
                  observer: str = "histogram", float_groups: frozenset[str] = frozenset(),
                  only: str | None = None):
    """Insert observers with litert-torch's symmetric int8 quantizer, calibrate, convert.

    Ops in `float_groups` (layer_group names) are left unannotated, so they stay float; with
    `only`, every other group does. Returns (quantized module, quantizer): LiteRT needs the
    quantizer again at conversion.
    """
    from torchao.quantization.pt2e import quantize_pt2e

    prepared, quantizer = _prepared(
        module, per_channel=per_channel, observer=observer,
        wanted=lambda node: _quantised(node, float_groups, only))
    _calibrate(prepared, calibration, input_name)
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), quantizer


class CalibratedPT2E:
    """Every op observed and calibrated once; each try then drops the observers no int8 op of
    that try touches and converts. Observers only watch (they do not change what flows), so a
    try's ranges are the ones a fresh calibration with those groups float would find: measured
    identical logits (XXS B 256, all-int8 and 8 groups float), at 1-1.5 s a try instead of a
    prepare and a calibration each (7 s with 3 images, ~0.25 s more per calibration image).
    `only` (one group int8, for the sensitivity ranking) keeps the observers that group's ops
    touch, which at a group's edges may differ a little from annotating that group alone
    (stem: 25.7 against 28.8 dB); the ranking only orders the search's tries."""

    def __init__(self, module, calibration: Calibration, *, per_channel: bool, input_name: str,
                 observer: str = "histogram") -> None:
        self.prepared, _ = _prepared(module, per_channel=per_channel, observer=observer)
        _calibrate(self.prepared, calibration, input_name)

    def quantized(self, float_groups: frozenset[str] = frozenset(), only: str | None = None):
        import copy

        import torch
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.observer import ObserverBase

        # a new graph over the same (calibrated) observer modules: convert reads them and
        # rewrites only the graph it is given
        trial = torch.fx.GraphModule(self.prepared, copy.deepcopy(self.prepared.graph))
        trial.meta.update(copy.deepcopy(self.prepared.meta))
        for node in list(trial.graph.nodes):
            if node.op != "call_module" or not isinstance(getattr(trial, node.target),
                                                          ObserverBase):
                continue
            source = node.args[0]
            if not any(_quantised(n, float_groups, only) and n.op == "call_function"
                       for n in (source, *node.users)):
                node.replace_all_uses_with(source)
                trial.graph.erase_node(node)
        trial.recompile()
        return quantize_pt2e.convert_pt2e(trial, fold_quantize=False)


# ---------------------------------------------------------------- the search


@dataclass(frozen=True)
class FidelityTarget:
    """What a quantised artifact must keep on held-out photos, against float PyTorch."""

    min_snr_db: float
    min_top1_agreement: float

    def met(self, snr_db: float, top1_agreement: float) -> bool:
        return snr_db >= self.min_snr_db and top1_agreement >= self.min_top1_agreement


class Trials(Protocol):
    """A format's own int8 quantiser, run on held-out photos: logits with `float_groups` left
    float, or with `only` that one group quantised (its sensitivity)."""

    groups: list[str]  # the layer groups its graph holds, in graph order
    # dB the search adds to the target when the trials simulate the runtime rather than run it
    margin_db: float

    def logits(self, float_groups: frozenset[str] = frozenset(),
               only: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Attempt:
    float_groups: tuple[str, ...]
    snr_db: float
    top1_agreement: float  # on the inputs that are not near ties (validate.DECISIVE_MARGIN)
    met: bool


@dataclass
class FloatSearch:
    """What the search tried, in order, and each group's sensitivity when it was measured."""

    target: FidelityTarget
    groups: list[str]
    max_float_groups: int
    attempts: list[Attempt] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> SNR dB, alone int8
    images: int = 0  # selection photos the tries were measured on

    @property
    def reached(self) -> bool:
        return any(a.met for a in self.attempts)

    @property
    def best(self) -> Attempt:
        """The attempt that met the target with the fewest groups float, else the closest."""
        met = [a for a in self.attempts if a.met]
        if met:
            return min(met, key=lambda a: (len(a.float_groups), -a.snr_db))
        return max(self.attempts, key=lambda a: a.snr_db)

    def ranking(self) -> list[tuple[str, float]]:
        """Groups by sensitivity, the most harmful (lowest SNR when alone int8) first."""
        return sorted(self.sensitivity.items(), key=lambda item: item[1])

    def to_dict(self) -> dict:
        best = self.best
        return {"target": asdict(self.target), "reached": self.reached,
                "float_groups": list(best.float_groups), "snr_db": best.snr_db,
                "top1_agreement": best.top1_agreement, "tries": len(self.attempts),
                "max_float_groups": self.max_float_groups, "groups": len(self.groups),
                "selection_images": self.images,
                "attempts": [{**asdict(a), "float_groups": list(a.float_groups)}
                             for a in self.attempts],
                "sensitivity": [{"group": g, "snr_db": snr} for g, snr in self.ranking()]}


def _noise(snr_db: float) -> float:
    return 10 ** (-snr_db / 10)


def search_float_groups(trials: Trials, reference: np.ndarray, target: FidelityTarget, *,
                        max_float_groups: int, sensitivity: bool = False,
                        say: Callable[[str], None] = lambda text: None) -> FloatSearch:
    """Quantise everything; while the target is missed, keep the most sensitive groups float.

    Each group's sensitivity is the SNR of the model with that group alone in int8. Quantisation
    noise from different layers adds up roughly in power, so the noise left after keeping the
    k most harmful groups float is predicted as the sum of the others'; the search tries the
    smallest k predicted to meet the target, and, when a try misses, scales the prediction by
    what it measured and tries again with more, up to `max_float_groups`. Once a try meets the
    target it bisects down to the fewest groups that still do.
    """
    from mvdeploy.validate import compare

    search = FloatSearch(target, list(trials.groups), max_float_groups, images=len(reference))
    aim = replace(target, min_snr_db=target.min_snr_db + trials.margin_db)

    def attempt(float_groups: tuple[str, ...]) -> Attempt:
        metrics = compare(reference, trials.logits(frozenset(float_groups)))
        tried = Attempt(float_groups, metrics.snr_db, metrics.top1_agreement_decisive,
                        aim.met(metrics.snr_db, metrics.top1_agreement_decisive))
        search.attempts.append(tried)
        say(f"try {len(search.attempts)}: {len(float_groups)} group(s) float -> "
            f"{tried.snr_db:.1f} dB, top-1 {tried.top1_agreement:.0%}")
        return tried

    first = attempt(())
    if (first.met or not max_float_groups) and not sensitivity:
        return search
    for i, group in enumerate(search.groups, 1):
        search.sensitivity[group] = compare(reference, trials.logits(only=group)).snr_db
        say(f"sensitivity {i}/{len(search.groups)}: {group} {search.sensitivity[group]:.1f} dB")
    if first.met or not max_float_groups:
        return search
    order = [g for g, _ in search.ranking()]
    noise = [_noise(search.sensitivity[g]) for g in order]
    budget, scale = _noise(aim.min_snr_db), 1.0
    missed, met, limit = 0, None, min(max_float_groups, len(order))  # k float: missed < met
    while met is None and missed < limit:
        wanted = next((k for k in range(missed + 1, limit + 1)
                       if scale * sum(noise[k:]) <= budget), limit)
        tried = attempt(tuple(order[:wanted]))
        if tried.met:
            met = wanted
            break
        predicted = sum(noise[wanted:])
        if predicted > 0 and not math.isinf(tried.snr_db):
            scale = max(scale, _noise(tried.snr_db) / predicted)
        missed = wanted
    # the prediction errs on the safe side (separately measured noise overlaps): bisect down
    # to the fewest groups that still meet the target, which keeps the most int8
    while met is not None and met - missed > 1:
        middle = (missed + met) // 2
        if attempt(tuple(order[:middle])).met:
            met = middle
        else:
            missed = middle
    return search
