"""export.layout = "hf": --out doubles as the folder Hugging Face clients load.

optimum's `ORTModelForImageClassification.from_pretrained(out)` and transformers.js'
`from_pretrained` read config.json (model_type, id2label) and preprocessor_config.json
(MobileViTImageProcessor) at the folder's root, and the ONNX from onnx/ under the name its
precision has (FormatSpec.hf_file_names: model.onnx, model_fp16.onnx, model_quantized.onnx).

config.json is the checkpoint's own where it has one (a Hugging Face folder), with the export's
resolution and labels. preprocessor_config.json is always written from the preprocessing the
artifact takes (after export.input_channels folded a channel flip), then read back with
transformers' own processor on the validation photos: the file and the artifact cannot disagree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from mvdeploy.backends import spec
from mvdeploy.errors import ConfigError, RuntimeFailure
from mvdeploy.models.library_preprocessing import check_against_library
from mvdeploy.models.weights import hf_model_config, hf_processor_config
from mvdeploy.pipeline.config import ExportConfig
from mvdeploy.pipeline.manifest import write_json

FILES = ("config.json", "preprocessor_config.json")


def file_stem(cfg: ExportConfig, fmt: str, default: str) -> str:
    """The artifact's file name without suffix: the Hugging Face one in that layout."""
    names = spec(fmt).hf_file_names
    return names[cfg.precision(fmt)] if cfg.export.layout == "hf" and names else default


def hf_files(model, cfg: ExportConfig) -> dict[str, dict]:
    """config.json and preprocessor_config.json for the artifact `model` becomes."""
    resolution = cfg.height_width
    config = hf_model_config(model, resolution)
    source = (getattr(model, "checkpoint", None) or {}).get("source")
    folder = getattr(model, "checkpoint_path", None)
    if source == "huggingface" and folder is not None and (Path(folder) / FILES[0]).is_file():
        own = json.loads((Path(folder) / FILES[0]).read_text())
        config = {**own, **{k: config[k] for k in ("image_size", "id2label", "label2id",
                                                   "mvdeploy_patch_sizes")}}
    try:
        processor = hf_processor_config(cfg.preprocessing, resolution)
    except ConfigError as exc:
        raise ConfigError(f"export.layout = hf: {exc}; export with the mvdeploy layout") from None
    return {FILES[0]: config, FILES[1]: processor}


def write_hf_files(out: Path, model, cfg: ExportConfig, photos: list[Path]) -> dict:
    """Write both files into `out`, checked first in a hidden folder beside them: transformers'
    processor, reading the written preprocessor_config.json, must prepare the photos as the
    artifact expects (one 8-bit level). Returns what the manifest records."""
    height, width = cfg.height_width
    files = hf_files(model, cfg)
    # the name exporter.clean_stale knows: a killed run's leftover is removed by the next one
    staging = Path(tempfile.mkdtemp(prefix=f".hf-files.partial-{os.getpid()}-", dir=out))
    try:
        for name, data in files.items():
            write_json(staging / name, data)
        try:
            check = check_against_library("huggingface", staging, model.cfg.name,
                                          cfg.preprocessing, photos, height, width)
        except ConfigError as exc:  # the file was written from these keys: not the user's doing
            raise RuntimeFailure(f"the preprocessor_config.json written does not reproduce the "
                               f"artifact's preprocessing: {exc}") from None
        for name in files:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"files": list(files), "processor_check": asdict(check)}
