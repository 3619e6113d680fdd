"""What stays float in int8: layer groups, the search, and how its result is judged.

The search is tested here against trials whose quantisation noise is known exactly (each group
adds noise of a set power), so its choices can be checked; tests/test_quantize.py runs it with
the real quantisers (ORT, PT2E for LiteRT) and runtimes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mvdeploy.cli import run
from mvdeploy.data import Preprocessing, normalise, sample_image_paths
from mvdeploy.models.groups import layer_group
from mvdeploy.pipeline.quantize import (
    PHOTOMETRIC_FACTORS,
    FidelityTarget,
    augmented_views,
    photometric_views,
    search_float_groups,
)
from mvdeploy.pipeline.validate import Tolerance
from mvdeploy.tasks.classification import compare
from tests.helpers import needs

ONNX_NAMESPACE = (": mvdeploy.backends.capture.NamedOutputs/model: "
                  "mvdeploy.models.mobilevit.MobileViT/"
                  "model.stages: torch.nn.modules.container.Sequential/model.stages.3: "
                  "torch.nn.modules.container.Sequential/model.stages.3.1: "
                  "mvdeploy.models.mobilevit.MobileViTBlock/model.stages.3.1.transformer.2: "
                  "mvdeploy.models.mobilevit.TransformerLayer/model.stages.3.1.transformer.2.mlp:"
                  " mvdeploy.models.mobilevit.MLP/model.stages.3.1.transformer.2.mlp.fc1: "
                  "torch.nn.modules.linear.Linear/linear: aten.linear.default")


def _stack(*entries: str) -> list[tuple[str, str]]:
    kinds = {"model": "MobileViT", "stages.1.0": "InvertedResidual", "stages.2.1":
             "MobileViTBlock", "stages.2.1.transformer.0": "TransformerLayer"}
    return [(f"model.{e}" if e != "model" else "model",
             "mvdeploy.models.mobilevit." + kinds.get(e, "ConvBNAct")) for e in entries]


@pytest.mark.parametrize(("stack", "group"), [
    (_stack("model", "stem", "stem.conv"), "stem"),
    (_stack("model", "stages.1.0", "stages.1.0.dw"), "stages.1.0"),
    (_stack("model", "stages.2.1", "stages.2.1.local_conv"), "stages.2.1.local"),
    (_stack("model", "stages.2.1", "stages.2.1.to_tokens"), "stages.2.1.local"),
    (_stack("model", "stages.2.1", "stages.2.1.transformer.0",
            "stages.2.1.transformer.0.norm1"), "stages.2.1.transformer.0.attn"),
    (_stack("model", "stages.2.1", "stages.2.1.transformer.0",
            "stages.2.1.transformer.0.mlp"), "stages.2.1.transformer.0.mlp"),
    (_stack("model", "stages.2.1", "stages.2.1.fusion"), "stages.2.1.fusion"),
    (_stack("model", "stages.2.1"), "stages.2.1.fusion"),  # the fold's own reshapes
    (_stack("model", "classifier"), "classifier"),
    (_stack("model"), None),  # the global pooling belongs to no group
])
def test_layer_groups_from_module_stacks(stack, group):
    assert layer_group(stack) == group


@needs("onnx")
def test_layer_group_of_an_onnx_node_namespace():
    import onnx

    from mvdeploy.backends.onnx import node_groups

    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], name="node_Gemm_7")
    node.metadata_props.add(key="namespace", value=ONNX_NAMESPACE)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], []))
    assert node_groups(model) == {"node_Gemm_7": "stages.3.1.transformer.2.mlp"}


class KnownNoise:
    """Trials whose groups each add Gaussian noise of a set power to the reference logits."""

    margin_db = 0.0

    def __init__(self, reference: np.ndarray, snr_alone: dict[str, float]) -> None:
        self.reference, self.snr_alone, self.calls = reference, snr_alone, 0
        self.groups = list(snr_alone)
        power = float((reference ** 2).mean())
        rng = np.random.default_rng(0)
        self.noise = {g: rng.standard_normal(reference.shape) * np.sqrt(
            power * 10 ** (-snr / 10)) for g, snr in snr_alone.items()}

    def logits(self, float_groups=frozenset(), only=None) -> np.ndarray:
        self.calls += 1
        quantised = [only] if only else [g for g in self.groups if g not in float_groups]
        return self.reference + sum((self.noise[g] for g in quantised),
                                    np.zeros_like(self.reference))


REFERENCE = np.random.default_rng(1).standard_normal((40, 50)) * 3


def test_search_keeps_the_most_harmful_groups_float_and_no_more():
    trials = KnownNoise(REFERENCE, {"a": 40, "b": 22, "c": 45, "d": 25, "e": 38})
    search = search_float_groups(trials, REFERENCE, compare, FidelityTarget(30, 0.0),
                                 max_float_groups=4)
    assert [g for g, _ in search.ranking()][:2] == ["b", "d"]
    assert search.reached and set(search.best.float_groups) == {"b", "d"}
    assert search.best.snr_db >= 30
    # all int8, the predicted two, then one fewer to prove two is the least that holds
    assert [len(a.float_groups) for a in search.attempts] == [0, 2, 1]
    assert search.sensitivity["b"] == pytest.approx(22, abs=1)  # measured, alone in int8


def test_an_overcautious_prediction_is_bisected_down():
    """Measured alone, groups can add up to more noise than they make together; the search
    then bisects down to the fewest float groups that still meet the target."""

    class Overlapping(KnownNoise):
        def logits(self, float_groups=frozenset(), only=None):
            if only:
                return super().logits(only=only)
            quantised = [g for g in self.groups if g not in float_groups]
            return self.reference + 0.3 * sum((self.noise[g] for g in quantised),
                                              np.zeros_like(self.reference))

    trials = Overlapping(REFERENCE, {g: 20.0 + i for i, g in enumerate("abcdefgh")})
    search = search_float_groups(trials, REFERENCE, compare, FidelityTarget(30, 0.0),
                                 max_float_groups=8)
    tried = [len(a.float_groups) for a in search.attempts]
    assert search.reached and len(search.best.float_groups) < max(tried)
    assert search.best.snr_db >= 30 and not any(
        a.met for a in search.attempts if len(a.float_groups) < len(search.best.float_groups))


def test_a_met_target_needs_no_sensitivity_unless_asked():
    trials = KnownNoise(REFERENCE, {"a": 45, "b": 50})
    search = search_float_groups(trials, REFERENCE, compare, FidelityTarget(30, 0.0),
                                 max_float_groups=4)
    assert search.reached and search.best.float_groups == () and trials.calls == 1
    asked = search_float_groups(trials, REFERENCE, compare, FidelityTarget(30, 0.0),
                                max_float_groups=4, sensitivity=True)
    assert set(asked.sensitivity) == {"a", "b"} and asked.best.float_groups == ()


def test_an_unreachable_target_stops_at_the_bound_with_the_best_attempt():
    trials = KnownNoise(REFERENCE, {g: 20.0 for g in "abcdef"})
    search = search_float_groups(trials, REFERENCE, compare, FidelityTarget(40, 0.0),
                                 max_float_groups=2)
    assert not search.reached
    assert len(search.best.float_groups) == 2  # the closest: the bound's worth kept float
    assert max(len(a.float_groups) for a in search.attempts) == 2
    record = search.to_dict()
    assert record["reached"] is False and record["tries"] == len(search.attempts)
    assert json.loads(json.dumps(record)) == record  # goes into the manifest as it is


def test_near_ties_do_not_count_against_top1_agreement():
    reference = np.array([[5.0, 1.0, 0.0, 0.0], [2.0, 1.999, 0.0, 0.0]])
    swapped_tie = reference[:, [0, 1, 2, 3]].copy()
    swapped_tie[1] = [1.999, 2.0, 0.0, 0.0]
    metrics = compare(reference, swapped_tie)
    assert metrics.top1_agreement == 0.5  # reported as it is
    assert metrics.decisive == 1 and metrics.top1_agreement_decisive == 1.0
    assert Tolerance(min_top1_agreement=0.95).failures("photos", metrics) == []
    wrong = reference[:, [1, 0, 2, 3]]
    failures = Tolerance(min_top1_agreement=0.95).failures("photos", compare(reference, wrong))
    assert failures and "not near ties" in failures[0]


def test_augmented_views_keep_the_photos_first_and_are_deterministic():
    images = np.random.default_rng(0).random((3, 3, 32, 48), dtype=np.float32)
    views = augmented_views(images, 10)
    assert views.shape == (10, 3, 32, 48) and views.dtype == np.float32
    assert np.array_equal(views[:3], images)
    assert np.array_equal(views, augmented_views(images, 10))
    assert not np.array_equal(views[3], images[0])
    assert views.min() >= images.min() - 1e-6 and views.max() <= images.max() + 1e-6


@pytest.mark.parametrize("prep", [Preprocessing(), Preprocessing(
    channel_order="RGB", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))],
    ids=["published BGR", "ImageNet mean/std"])
def test_photometric_views_compute_what_pillow_computes(prep, monkeypatch):
    """The selection's variants are Pillow's ImageEnhance Color, Brightness and Contrast,
    applied to the photo the preprocessed tensor came from (Pillow rounds to 8 bits after each
    step, the view does not: a few levels apart)."""
    from PIL import Image, ImageEnhance

    photo = Image.open(sample_image_paths()[0]).convert("RGB").resize((48, 32))
    x = normalise(np.asarray(photo)[None], prep)
    for colour, brightness, contrast in ((0.0, 1.0, 1.0), (1.7, 1.2, 0.8), (0.3, 0.8, 1.4)):
        for key, factor in zip(("colour", "brightness", "contrast"),
                               (colour, brightness, contrast), strict=True):
            monkeypatch.setitem(PHOTOMETRIC_FACTORS, key, (factor, factor))
        enhanced = ImageEnhance.Color(photo).enhance(colour)
        enhanced = ImageEnhance.Brightness(enhanced).enhance(brightness)
        enhanced = ImageEnhance.Contrast(enhanced).enhance(contrast)
        expected = normalise(np.asarray(enhanced)[None], prep)
        levels = np.abs((photometric_views(x, 1, prep) - expected)
                        * np.asarray(prep.std)[::-1 if prep.channel_order == "BGR" else 1,
                                               None, None]) / prep.scale
        assert levels.max() <= 4, (colour, brightness, contrast)


def test_photometric_views_are_deterministic_and_differ_from_the_photos():
    from PIL import Image

    photo = Image.open(sample_image_paths()[1]).convert("RGB").resize((40, 40))
    x = normalise(np.asarray(photo)[None], Preprocessing())
    photos = np.concatenate([x, x[:, :, ::-1]])
    views = photometric_views(photos, 5, Preprocessing())
    assert views.shape == (5, 3, 40, 40) and views.dtype == np.float32
    assert np.array_equal(views, photometric_views(photos, 5, Preprocessing()))
    assert all(np.abs(v - x[0]).mean() > 1e-3 for v in views)
    assert views.min() >= 0 and views.max() <= 1  # still 8-bit pixels scaled to 0..1


def test_the_target_must_hold_on_the_photos_and_on_their_variants_alike():
    """Pooled, variants with larger logits would outweigh noise on the photos: group "a" costs
    the photos 25 dB and the variants nothing, and the pooled SNR still reads above 30."""
    photos, variants = REFERENCE[:20], REFERENCE[20:] * 4
    reference = np.concatenate([photos, variants])
    noise = np.zeros_like(reference)
    noise[:20] = np.random.default_rng(2).standard_normal(photos.shape) * np.sqrt(
        float((photos ** 2).mean()) * 10 ** -2.5)

    class PhotosOnly:
        margin_db, groups = 0.0, ["a", "b"]

        def logits(self, float_groups=frozenset(), only=None):
            quantised = {only} if only else set(self.groups) - float_groups
            return reference + (noise if "a" in quantised else 0)

    assert compare(reference, reference + noise).snr_db > 30  # what pooling would have said
    pooled = search_float_groups(PhotosOnly(), reference, compare, FidelityTarget(30, 0.0),
                                 max_float_groups=2)
    assert pooled.best.float_groups == ()
    apart = search_float_groups(PhotosOnly(), reference, compare, FidelityTarget(30, 0.0),
                                max_float_groups=2, views=len(variants))
    assert apart.best.float_groups == ("a",) and apart.reached
    assert apart.attempts[0].snr_db == pytest.approx(25, abs=1)
    assert apart.to_dict()["selection_images"] == 20 and apart.to_dict()["selection_views"] == 20


def test_a_calibration_method_the_format_lacks_is_refused(capsys):
    assert run(["export", "-f", "onnx", "--precision", "int8-static",
                "--calibration-method", "histogram", "-o", "unused"]) == 2
    err = capsys.readouterr().err
    assert "is not one onnx has: choose auto or one of minmax, entropy, percentile" in err


@pytest.mark.slow
def test_an_unreachable_target_exits_1_with_the_best_attempt_explained(tmp_path, capsys):
    """The search's bound reached first: exit 1, the closest artifact kept (marked failed), and
    the report, table and plot say what was tried and what each group costs."""
    code = run(["export", "-r", "64", "-f", "onnx", "--precision", "int8-static",
                "--min-snr", "90", "--sensitivity", "--set", "quantize.max_float_groups=2",
                "--set", "quantize.compare_speed=false", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "onnx: int8 target 90 dB NOT met within 2 groups on the search's 3 selection" in out
    assert "int8 sensitivity" in out and "stages.1.0" in out
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["validated"] is False
    search = manifest["artifact"]["float_search"]
    assert not search["reached"] and len(search["float_groups"]) == 2
    assert search["float_groups"] == [row["group"] for row in search["sensitivity"][:2]]
    assert search["tries"] == len(search["attempts"]) >= 2
    assert search["snr_db"] == max(a["snr_db"] for a in search["attempts"])
    assert any("SNR" in f and "< 90 dB" in f for f in manifest["validation"]["failures"])
    table = json.loads((tmp_path / "onnx" / "sensitivity.json").read_text())
    assert [row["kept_float"] for row in table["groups"]][:3] == [True, True, False]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "onnx" / "sensitivity.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_search_tuned_to_its_selection_photos_fails_the_gate_on_others(tmp_path, capsys):
    """Calibration and selection colour photos, report greyscale ones the seeded weights never
    saw: the search meets 30 dB on what it tuned on, and the gate, which sees only the report
    set, says the target was not reached there (exit 1, artifact kept, validated false)."""
    skimage_data = Path(pytest.importorskip("skimage.data").__file__).parent
    tuning, report = tmp_path / "tuning", tmp_path / "report"
    tuning.mkdir(), report.mkdir()
    for path in sample_image_paths():
        shutil.copy(path, tuning / path.name)
    for name in ("brick", "gravel", "moon", "page"):
        shutil.copy(skimage_data / f"{name}.png", report / f"{name}.png")
    # the selection photos alone, no variants: a search free to fit what it tunes on
    code = run(["export", "-r", "64", "-f", "onnx", "--precision", "int8-static",
                "--calibration", str(tuning), "--images", str(report), "--set",
                "quantize.compare_speed=false", "--set", "quantize.selection_views=0",
                "-o", str(tmp_path / "out"), "--json"])
    assert code == 1
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    search, validation = manifest["artifact"]["float_search"], manifest["validation"]
    assert search["reached"] and search["snr_db"] >= 30  # on the selection photos
    assert manifest["validated"] is False and (tmp_path / "out" / "onnx").is_dir()
    assert any("SNR" in f and "< 30 dB" in f for f in validation["failures"])
    sets = validation["inputs"]["sets"]
    assert validation["inputs"]["photos"] == sorted(p.name for p in report.iterdir())
    assert sets["report"]["images"] == 4 == validation["metrics"]["photos"]["samples"]
    tuned = set(sets["selection"]["names"]) | set(sets["calibration"]["names"])
    assert tuned and tuned <= {p.name for p in sample_image_paths()}
    assert not set(sets["selection"]["names"]) & set(sets["calibration"]["names"])
    assert search["selection_images"] == sets["selection"]["images"] >= 2
