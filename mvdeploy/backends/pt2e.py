"""PT2E int8 (litert-torch's symmetric quantizer on torchao's PT2E flow), on the captured graph:
shared by the formats that quantise in PyTorch before conversion (TFLite int8-static, Core ML
w8a8), which declare litert-torch among their needs. Layer groups (mvdeploy.models.groups) can
be left float, for the export's float-group search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mvdeploy.backends import Calibration, Package

# what a recipe that quantises here declares in Recipe.needs, with the extra that installs it
PT2E_PACKAGE = Package("litert-torch", "litert_torch", "PT2E int8 quantizer")


def _quantised(node, float_groups: frozenset[str], only: str | None) -> bool:
    """Whether an op is int8 in a try: in `only` if given, else outside `float_groups`.
    Weights and inputs (not call_function) go with the op that reads them."""
    if node.op != "call_function":
        return True
    from mvdeploy.models.groups import node_group  # imports torch: only once quantising

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
