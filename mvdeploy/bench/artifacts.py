"""Artifacts to time: exported with mvdeploy's pipeline (validated against PyTorch), or reused
from a cache keyed by a hash of the configuration and the weights' digest.

Without --weights, each model gets mvdeploy's seeded input-sensitive weights written once into
the cache, so the artifacts, eager PyTorch and the transformers peer all run the very same
weights, and the fidelity columns measure something.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mvdeploy.backends import spec
from mvdeploy.bench.matrix import BenchConfig
from mvdeploy.errors import NoSpaceError
from mvdeploy.files import failed_for_space
from mvdeploy.isolate import run_isolated
from mvdeploy.models import create_model, get_model_cfg
from mvdeploy.models.macs import count_macs
from mvdeploy.models.weights import resolve_weights, save_checkpoint, save_pretrained
from mvdeploy.native_output import redirect_native_output
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import clean_stale, run_export
from mvdeploy.pipeline.manifest import Manifest, digest, read_manifest


@dataclass
class Prepared:
    """What a configuration needs to run, or why it cannot."""

    artifact: Path | None = None
    weights: Path | None = None  # the checkpoint everything for this model was made from
    size_mb: float | None = None
    fidelity: dict | None = None  # snr_db / top1_agreement / validated, from the manifest
    error: str | None = None


def seeded_weights(cache: Path, model: str) -> Path:
    # input-sensitive (mvdeploy.models.init); "aligned": the smooth, input-aligned init (older
    # caches hold the earlier "photos" init, or plain random weights)
    path = cache / "weights" / f"{model}_seed0_aligned.safetensors"
    if get_model_cfg(model).task != "classification":
        # a DeepLabV3's output stride and ASPP rates live in config.json: a Hugging Face folder
        path = path.with_suffix("")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            save_pretrained(create_model(model), partial, resolution=(256, 256))
            partial.rename(path)
        return path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(create_model(model), path)
    return path


def model_gmacs(cfg: BenchConfig) -> float:
    """MACs per image at this patch configuration and resolution (no weights needed)."""
    model = create_model(cfg.model, patch_sizes=cfg.patch, init="random")
    return count_macs(model, *cfg.resolution).gmacs


def _fidelity(manifest: Manifest) -> dict:
    validation = manifest.validation
    photos = validation.get("metrics", {}).get("photos") or {}
    return {"status": validation["status"], "snr_db": photos.get("snr_db"),
            "top1_agreement": photos.get("top1_agreement"),
            "degenerate": manifest.degenerate}


def _export_group(cfgs: list[BenchConfig], weights: Path, folder: Path,
                  log: Callable[[str], None]) -> dict[str, Prepared]:
    """One mvdeploy export for every format this (model, patch, resolution, precision, batch)
    needs; formats already in the cache are reused."""
    first = cfgs[0]
    formats = sorted({c.format for c in cfgs})
    missing = [f for f in formats if not (folder / f / "manifest.json").is_file()]
    if missing:
        h, w = first.resolution
        log(f"exporting {first.model} {first.preset} {h}x{w} {first.precision}: "
            f"{', '.join(missing)}")
        cfg = load_config(overrides={
            "model.name": first.model, "model.patch": first.patch, "model.resolution": f"{h}x{w}",
            "model.weights": str(weights), "export.formats": missing, "export.out": str(folder),
            "export.batch": first.batch, "export.save_program": False,
            "quantize.precision": first.precision,  # every format has its own fp32 recipe
            "validate.max_images": 4, "validate.random_inputs": 0,
            "quantize.compare_speed": False})  # the bench times it properly
        result = run_export(cfg, force=True)
        errors = {r.format: r.error for r in result.formats if r.error}
    else:
        errors = {}
    out = {}
    for fmt in formats:
        if fmt in errors:
            out[fmt] = Prepared(error=f"export failed: {errors[fmt]}")
            continue
        manifest = read_manifest(folder / fmt / "manifest.json")
        out[fmt] = Prepared(artifact=folder / fmt / manifest.file,
                            size_mb=manifest.size_bytes / 1e6, fidelity=_fidelity(manifest))
    return out


def _export_peer(cfg: BenchConfig, weights: Path, folder: Path,
                 log: Callable[[str], None]) -> Prepared:
    """Into its own folder, renamed into place when complete (the ONNX exporter may write its
    weights to a .data file beside the model, which must keep its name)."""
    import shutil
    import tempfile

    from mvdeploy.bench.peer import export_peer

    h, w = cfg.resolution
    name = f"{cfg.model}_transformers_{h}x{w}{spec(cfg.format).suffix}"
    if not (folder / name).exists():
        log(f"exporting the transformers peer of {cfg.model} {h}x{w} to {cfg.format} (plain)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(folder.parent)  # what a killed bench left
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-{os.getpid()}-",
                                    dir=folder.parent))
        try:
            with redirect_native_output():  # a converter that dies takes only its child down
                run_isolated(export_peer, cfg.model, str(weights), cfg.format,
                             torch.rand(cfg.batch, 3, h, w), tmp / name)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        except Exception as exc:  # the peer failing is a result too; a full disk ends the run
            if failed_for_space(exc, tmp):
                raise NoSpaceError(folder.parent) from exc
            return Prepared(error=f"peer export failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(artifact=folder / name, size_mb=digest(folder)[0] / 1e6)


def prepare_all(configs: list[BenchConfig], cache: Path, weights: str | None,
                log: Callable[[str], None] = lambda _: None) -> dict[str, Prepared]:
    """config key -> Prepared, exporting what the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    given = resolve_weights(weights) if weights is not None else None
    weight_paths = {m: given or seeded_weights(cache, m) for m in {c.model for c in configs}}
    hashed = {m: digest(p) for m, p in weight_paths.items()}  # (size, sha256): one read each
    digests = {m: sha[:16] for m, (_, sha) in hashed.items()}
    prepared: dict[str, Prepared] = {}
    groups: dict[str, list[BenchConfig]] = {}
    for cfg in configs:
        if cfg.format is None:  # eager / compiled PyTorch: the weights are the artifact
            prepared[cfg.key] = Prepared(artifact=weight_paths[cfg.model],
                                         size_mb=hashed[cfg.model][0] / 1e6)
        elif cfg.impl == "transformers":
            folder = cache / "peer" / cfg.artifact_key(digests[cfg.model])
            prepared[cfg.key] = _export_peer(cfg, weight_paths[cfg.model], folder, log)
        else:
            group = export_group_key(cfg, digests[cfg.model])
            groups.setdefault(group, []).append(cfg)
    for group, cfgs in groups.items():
        try:
            by_format = _export_group(cfgs, weight_paths[cfgs[0].model],
                                      cache / "artifacts" / group, log)
        except NoSpaceError:
            raise
        except Exception as exc:  # e.g. a config error for this combination: report per config
            by_format = {c.format: Prepared(error=f"export failed: {exc}"[:300]) for c in cfgs}
        for cfg in cfgs:
            prepared[cfg.key] = by_format[cfg.format]
    for cfg in configs:
        prepared[cfg.key].weights = weight_paths[cfg.model]
    return prepared


def export_group_key(cfg: BenchConfig, weights_digest: str) -> str:
    """The formats of one model/patch/resolution/precision/batch export together, into one
    cache folder: its key is the configuration's artifact key without the format."""
    return replace(cfg, runtime="torch", threads=1, target="cpu", accelerator="cpu",
                   hub_device=None).artifact_key(weights_digest)
