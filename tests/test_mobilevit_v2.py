"""MobileViTv2 is transformers' MobileViTV2ForImageClassification, width for width: the same
parameter count, and the same logits on real photos from input-sensitive weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.models.mobilevit_v2 import MobileViTV2, fold_v2, get_v2_cfg, unfold_v2
from mvdeploy.models.variants import V2_CFGS
from mvdeploy.models.weights import export_state_dict, remap_state_dict
from tests.helpers import input_sensitive_

transformers = pytest.importorskip("transformers")

# the seven widths, and the parameter counts transformers' classifier has for each (1000 classes)
PARAMETERS = {"mobilevitv2_050": 1_370_593, "mobilevitv2_075": 2_866_009,
              "mobilevitv2_100": 4_901_841, "mobilevitv2_125": 7_478_089,
              "mobilevitv2_150": 10_594_753, "mobilevitv2_175": 14_251_833,
              "mobilevitv2_200": 18_449_329}


def _transformers_model(name: str):
    config = transformers.MobileViTV2Config(width_multiplier=V2_CFGS[name].width,
                                            num_labels=1000)
    return transformers.MobileViTV2ForImageClassification(config).eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_seven_widths_have_transformers_parameter_counts():
    assert list(V2_CFGS) == list(PARAMETERS)
    for name, expected in PARAMETERS.items():
        assert _count(MobileViTV2(get_v2_cfg(name))) == expected
        assert _count(_transformers_model(name)) == expected


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n != "mobilevitv2_050" else n
                                  for n in V2_CFGS])
def test_logits_equal_transformers_on_real_photos(name):
    hf = _transformers_model(name)
    input_sensitive_(hf, hf.classifier, seed=1, forward=lambda m, x: m(x).logits)
    ours = MobileViTV2(get_v2_cfg(name)).eval()
    ours.load_state_dict(remap_state_dict(hf.state_dict(), ours, "huggingface"))
    x = torch.from_numpy(load_images(sample_image_paths(), 256, 256)[0])
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x)
    # the weights tell the photos apart, so agreement is not that of two constants
    assert len(set(expected.argmax(1).tolist())) >= 3 and float(expected.std(0).mean()) > 0.1
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative <= 1e-5, relative
    # and back: our weights under transformers' names load into transformers unchanged
    again = _transformers_model(name)
    again.load_state_dict(export_state_dict(ours, "huggingface"))
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)


@pytest.mark.parametrize("patch", [(2, 2), (2, 4), (4, 2), (8, 8)])
def test_unfold_orders_tokens_as_torch_unfold_and_fold_inverts_it(patch):
    x = torch.randn(2, 5, 16, 32)
    ph, pw = patch
    expected = F.unfold(x, kernel_size=patch, stride=patch).reshape(2, 5, ph * pw, -1)
    tokens = unfold_v2(x, ph, pw)
    assert torch.equal(tokens, expected)
    assert torch.equal(fold_v2(tokens, ph, pw, 16, 32), x)
    folded = F.fold(expected.reshape(2, 5 * ph * pw, -1), (16, 32), patch, stride=patch)
    assert torch.equal(folded, x)


def test_an_unknown_v2_width_is_one_line_naming_the_seven():
    with pytest.raises(ConfigError, match="mobilevitv2_050, mobilevitv2_075"):
        get_v2_cfg("mobilevitv2_300")


def test_a_patch_that_does_not_divide_the_map_is_resized_as_in_v1():
    model = MobileViTV2(get_v2_cfg("mobilevitv2_050"), patch_sizes=((3, 3), (2, 2), (2, 2)))
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1000) and np.isfinite(out.numpy()).all()
