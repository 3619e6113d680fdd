"""The model family: exact parameter counts, MACs, patch sizes, resolutions, fold equivalence."""

from __future__ import annotations

import pytest
import torch

from mvdeploy.errors import ConfigError
from mvdeploy.models import (
    MODEL_CFGS,
    PATCH_PRESETS,
    check_resolution,
    counts,
    create_model,
    format_patch_sizes,
    interpolated_stages,
    list_models,
    parse_patch_sizes,
    parse_resolution,
)
from mvdeploy.models.macs import count_macs
from mvdeploy.models.mobilevit import (
    FOLD_IMPLS,
    PLAIN_FORM,
    QKV_FORMS,
    TOKEN_FORMS,
    GraphForm,
    fold_nhwc,
    fold_permute,
    fold_rank4,
    unfold_nhwc,
    unfold_permute,
    unfold_rank4,
)
from tests.helpers import perturb_


@pytest.mark.parametrize("name", list_models("v1"))
def test_parameter_count_matches_paper_exactly(name):
    model = create_model(name, init="random")  # counting: no outputs looked at
    assert sum(p.numel() for p in model.parameters()) == MODEL_CFGS[name].paper_params


def test_published_parameter_counts():
    expected = {"mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632}
    assert {n: create_model(n, init="random").cfg.paper_params
            for n in list_models("v1")} == expected
    ten = create_model("mobilevit_xxs", num_classes=10, init="random")
    assert sum(p.numel() for p in ten.parameters()) == 1_272_024 - 990 * 321


@pytest.mark.parametrize("name", list_models("v1"))
def test_macs_near_paper_and_attention_counted(name):
    macs_a = count_macs(create_model(name, patch_sizes="A", init="random"))
    macs_b = count_macs(create_model(name, patch_sizes="B", init="random"))
    paper = MODEL_CFGS[name].paper_gmacs
    assert abs(macs_a.gmacs - paper) / paper < 0.05
    # attention matmuls per docs/reference.md: ~78/117/178 M under A, ~7/11/17 M under B
    expected_attention = {"mobilevit_xxs": (78, 7), "mobilevit_xs": (117, 11),
                          "mobilevit_s": (178, 17)}[name]
    assert round(macs_a.attention / 1e6) == pytest.approx(expected_attention[0], abs=1)
    assert round(macs_b.attention / 1e6) == pytest.approx(expected_attention[1], abs=1)
    assert macs_a.total - macs_b.total == macs_a.attention - macs_b.attention


@pytest.mark.parametrize("entry", [
    pytest.param(e, marks=[] if e[2] == 256 and e[0] in ("mobilevit_xxs", "mobilevitv2_050")
                 else [pytest.mark.slow, pytest.mark.extended] if e[0].startswith("mobilevitv2")
                 else pytest.mark.slow,
                 id=counts.key(*e)) for e in counts.table_entries()])
def test_shipped_counts_are_the_networks_own(entry):
    """counts.json (what `mvdeploy models` shows without torch) equals a count on the network:
    a change to the architecture that is not regenerated fails here
    (python -m mvdeploy.models.counts)."""
    assert counts.counts(*entry) == counts.live_counts(*entry)


def test_xxs_config_a_is_042_gmacs():
    macs = count_macs(create_model("mobilevit_xxs", init="random"))
    assert macs.gmacs == pytest.approx(0.42, abs=0.015)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("A", PATCH_PRESETS["A"]),
        ("b", ((8, 8), (4, 4), (2, 2))),
        ("8,4,2", ((8, 8), (4, 4), (2, 2))),
        ("2x4,2,2", ((2, 4), (2, 2), (2, 2))),
        ([8, 4, 2], ((8, 8), (4, 4), (2, 2))),
        ([[2, 4], 2, [4, 2]], ((2, 4), (2, 2), (4, 2))),
    ],
)
def test_parse_patch_sizes(spec, expected):
    assert parse_patch_sizes(spec) == expected


@pytest.mark.parametrize("bad", ["C", "8,4", "8,4,2,2", "0,2,2", "2x,2,2", "axb,2,2", [1.5, 2, 2]])
def test_parse_patch_sizes_rejects_with_help(bad):
    with pytest.raises(ConfigError, match="patch"):
        parse_patch_sizes(bad)


def test_format_patch_sizes_names_presets():
    assert format_patch_sizes(PATCH_PRESETS["B"]) == "B (8,4,2)"
    assert format_patch_sizes(((2, 4), (2, 2), (2, 2))) == "2x4,2,2"


@pytest.mark.parametrize(("spec", "size"), [("256", (256, 256)), ("320x256", (320, 256)),
                                            (224, (224, 224))])
def test_parse_resolution(spec, size):
    assert parse_resolution(spec) == size


@pytest.mark.parametrize("bad", ["225", "256x100", "0", "16", "abc", "256x256x3"])
def test_resolution_must_be_multiple_of_32(bad):
    with pytest.raises(ConfigError, match=r"multiple of 32|HEIGHTxWIDTH"):
        parse_resolution(bad)


def test_check_resolution_suggests_a_fix():
    with pytest.raises(ConfigError, match=r"use e\.g\. 224"):
        check_resolution(230, 256)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (224, 224), (320, 256)])
@pytest.mark.parametrize("patch", ["A", "B"])
def test_any_multiple_of_32_runs(height, width, patch):
    model = create_model("mobilevit_xxs", patch_sizes=patch)
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


def test_interpolated_stages():
    # 224: maps are 28, 14, 7 -> patch 2 fails at stride 32 only; B's 8, 4, 2 fail at all three
    assert interpolated_stages(PATCH_PRESETS["A"], 224, 224) == [2]
    assert interpolated_stages(PATCH_PRESETS["B"], 224, 224) == [0, 1, 2]
    assert interpolated_stages(parse_patch_sizes("4,2,2"), 224, 224) == [2]
    assert interpolated_stages(PATCH_PRESETS["A"], 256, 256) == []
    assert interpolated_stages(PATCH_PRESETS["B"], 320, 256) == []


PATCHES = [(2, 2), (8, 8), (4, 4), (2, 4), (4, 2), (3, 5)]


@pytest.mark.parametrize(("ph", "pw"), PATCHES)
def test_unfold_implementations_agree_and_invert(ph, pw):
    b, c, h, w = 2, 5, 3 * ph * 2, 2 * pw * 3
    x = torch.randn(b, c, h, w)
    tokens = unfold_rank4(x, ph, pw)
    assert tokens.shape == (b * ph * pw, (h // ph) * (w // pw), c)
    assert torch.equal(tokens, unfold_permute(x, ph, pw))
    assert torch.equal(tokens, unfold_nhwc(x, ph, pw))
    for fold in (fold_rank4, fold_permute, fold_nhwc):
        assert torch.equal(fold(tokens, b, ph, pw, h, w), x)


FORMS = [GraphForm(fold, tokens, qkv) for fold in FOLD_IMPLS for tokens in TOKEN_FORMS
         for qkv in QKV_FORMS]


@pytest.mark.parametrize("patch", ["A", "B", "2x4,4x2,2"])
@pytest.mark.parametrize("resolution", [(320, 256), (224, 224)])
def test_graph_forms_give_identical_models(patch, resolution):
    """Every fold x token layout x qkv form: the plain form's outputs (ml-cvnets /
    transformers) on perturbed weights, up to float rounding: the nhwc fold hands the next conv
    a channels-last tensor, which PyTorch may sum in another order."""
    model = perturb_(create_model("mobilevit_xxs", patch_sizes=patch, form=PLAIN_FORM,
                                  init="random"), seed=1)  # perturb_ overwrites every weight
    x = torch.randn(2, 3, *resolution)
    with torch.no_grad():
        plain = model(x)
        for form in FORMS:
            model.set_form(form)
            assert (model(x) - plain).abs().max() <= 1e-6 * plain.abs().max(), form


def _max_rank(program) -> int:
    ranks = [0]
    for node in program.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (list, tuple)) else [val]
        ranks += [v.dim() for v in vals if isinstance(v, torch.Tensor)]
    return max(ranks)


@pytest.mark.slow
@pytest.mark.parametrize("fold", ["rank4", "nhwc"])
def test_rank4_and_nhwc_folds_export_without_tensors_above_rank_4(fold):
    x = (torch.randn(1, 3, 64, 96),)

    def exported(fold: str):
        model = create_model("mobilevit_xxs", patch_sizes="2x4,2,2", init="random",
                             form=GraphForm(fold=fold))
        return torch.export.export(model, x).run_decompositions()

    assert _max_rank(exported(fold)) == 4
    assert _max_rank(exported("permute")) == 6  # the check does see rank-6 tensors


def test_unknown_model_and_fold_are_config_errors():
    with pytest.raises(ConfigError, match="mobilevit_xxs"):
        create_model("mobilevit_xxl")
    with pytest.raises(ConfigError, match="fold"):
        GraphForm(fold="einops")
    with pytest.raises(ConfigError, match="tokens"):
        GraphForm(tokens="4d")
