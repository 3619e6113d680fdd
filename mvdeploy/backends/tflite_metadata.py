"""Standard TFLite metadata (TFLITE_METADATA): what MediaPipe Tasks, the TFLite Task Library and
Android Studio's ML Binding read from a .tflite.

The metadata tables (normalisation options, value range, image properties, the label file as a
TENSOR_AXIS_LABELS associated file) are built with MediaPipe's own `metadata_info`, the
maintained implementation of the schema. MediaPipe's populator and displayer
(`metadata.py`) cannot be used: in the mediapipe 1.2.3 wheel they import
`mediapipe.tasks.cc.metadata.python`, which the wheel does not ship. So the two steps they do
are done here: the metadata goes into the model as one more buffer (mvdeploy repacks the model
for its own record anyway), and associated files are a zip archive appended to the flatbuffer,
as the populator writes them (`MetadataPopulator._populate_associated_files`).

MediaPipe normalises 0..255 pixels as (pixel - mean) / std; mvdeploy's record says
(pixel * scale - mean) / std, so the options written are mean / scale and std / scale.
"""

from __future__ import annotations

import io
import zipfile

from mvdeploy.errors import MissingDependencyError

STANDARD_NAME = "TFLITE_METADATA"  # the Model.metadata entry the clients read
LABEL_FILE = "labels.txt"
# The schema version whose features are used here (image properties, normalisation, stats,
# TENSOR_AXIS_LABELS): all in 1.0.0, metadata_schema.fbs's version history
MIN_PARSER_VERSION = "1.0.0"
SEGMENTER_PARSER_VERSION = "1.5.0"  # custom metadata (SEGMENTER_METADATA) came in 1.5.0


def _mediapipe():
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, writer_utils
    except ImportError:
        raise MissingDependencyError("mediapipe", "tflite", "Standard TFLite metadata") from None
    return metadata_fb, metadata_info, writer_utils


def normalization(prep: dict) -> tuple[list[float], list[float]]:
    """MediaPipe's NormalizationOptions (mean, std on 0..255 pixels), in the tensor's order."""
    order = ["RGB".index(c) for c in prep["channel_order"]]  # mean / std are given in RGB
    mean = [prep["mean"][i] / prep["scale"] for i in order]
    std = [prep["std"][i] / prep["scale"] for i in order]
    return mean, std


def labels_of(record: dict) -> list[str]:
    return record.get("labels") or [str(i) for i in range(record["num_classes"])]


def standard_metadata(model: bytes, record: dict) -> bytes:
    """The TFLITE_METADATA flatbuffer for `model` (a .tflite's bytes) and mvdeploy's record."""
    import flatbuffers

    metadata_fb, metadata_info, writer_utils = _mediapipe()
    prep = record["preprocessing"]
    mean, std = normalization(prep)
    height, width = prep["crop"]
    rgb = prep["channel_order"] == "RGB"
    image = ("an RGB image" if rgb else "a BGR image (clients that feed RGB need an export "
             "with export.input_channels = RGB)")
    how = (f"resize the shorter side to {prep['resize_shorter_side']} ({prep['resample']}) and "
           f"centre-crop {height}x{width}")
    input_type = writer_utils.get_input_tensor_types(model)[0]
    if prep["input_layout"] == "NHWC":  # the image input MediaPipe and the Task Library accept
        inputs = metadata_info.InputImageTensorMd(
            name="image", description=f"{image}: {how}", norm_mean=mean, norm_std=std,
            color_space_type=(metadata_fb.ColorSpaceType.RGB if rgb
                              else metadata_fb.ColorSpaceType.UNKNOWN), tensor_type=input_type)
    else:  # NCHW: described, but MediaPipe takes NHWC images only
        inputs = metadata_info.TensorMd(
            name="image", description=f"{image}, NCHW [1, 3, {height}, {width}]: {how}; "
            f"(pixel - mean) / std with mean {mean}, std {std} (MediaPipe needs an NHWC "
            "export: tflite.channels_last = true)")
    kind = record.get("output_kind", "logits")
    subgraph = metadata_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [inputs.create_metadata()]
    segmentation = record.get("task") == "segmentation"
    scores_out = kind != "mask"  # export.mask: the class indices, for an app's own code
    if not scores_out:  # MediaPipe's ImageSegmenter reads scores: none here to describe
        outputs = metadata_info.TensorMd(
            name=kind, description=f"class index of every pixel [batch, {height}, {width}] (int32) "
            f"in the resized and cropped frame; class names in {LABEL_FILE}",
            associated_files=[metadata_info.LabelFileMd(LABEL_FILE)])
    elif segmentation:  # what MediaPipe's ImageSegmenter reads: NHWC [1, h, w, classes] scores
        outputs = metadata_info.SegmentationMaskMd(
            name=kind, description=f"per-pixel class {kind} [1, h, w, classes] at 1/16 of the "
            "input: upsample bilinearly to the image, then take the argmax",
            label_files=[metadata_info.LabelFileMd(LABEL_FILE)])
        subgraph.customMetadata = [_segmenter_options(kind)]
    else:
        outputs = metadata_info.ClassificationTensorMd(
            name=kind, description=("class probabilities (softmax)" if kind == "probabilities"
                                    else "class logits: apply softmax for probabilities"),
            label_files=[metadata_info.LabelFileMd(LABEL_FILE)],
            tensor_type=writer_utils.get_output_tensor_types(model)[0])
    subgraph.outputTensorMetadata = [outputs.create_metadata()]
    general = metadata_info.GeneralMd(
        name=record["model"], version=record.get("version") or None,
        description=record.get("description") or (
            f"{record['model']} (MobileViT), patch sizes {record['patch_sizes']}, "
            f"{height}x{width} input: image "
            f"{'segmentation' if segmentation else 'classification'}"),
        author=record.get("author") or f"mvdeploy {record['mvdeploy']}",
        licenses=record.get("license") or None).create_metadata()
    general.subgraphMetadata = [subgraph]
    general.minParserVersion = (SEGMENTER_PARSER_VERSION if segmentation and scores_out
                                else MIN_PARSER_VERSION)
    builder = flatbuffers.Builder(0)
    builder.Finish(general.Pack(builder), b"M001")  # the metadata schema's file identifier
    return bytes(builder.Output())


def _segmenter_options(kind: str):
    """The SEGMENTER_METADATA custom metadata MediaPipe's ImageSegmenter reads its activation
    from (mediapipe/tasks/metadata/image_segmenter_metadata_schema.fbs, as its
    image_segmenter metadata writer fills it): softmax for logits, none for probabilities.
    Without it MediaPipe assumes none and logs a warning; its category mask is the argmax
    either way, its confidence masks are the activation's output."""
    import flatbuffers
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb

    options = seg.ImageSegmenterOptionsT()
    options.activation = seg.Activation.SOFTMAX if kind == "logits" else seg.Activation.NONE
    builder = flatbuffers.Builder(0)
    builder.Finish(options.Pack(builder), b"V001")  # that schema's file identifier
    custom = metadata_fb.CustomMetadataT()
    custom.name = "SEGMENTER_METADATA"
    custom.data = list(bytes(builder.Output()))
    return custom


def pack_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `files` in a zip appended to it (how associated files are stored)."""
    out = io.BytesIO(model)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def packed_files(model: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def read_standard_metadata(buffer: bytes, model: bytes) -> dict:
    """What the clients read: names, normalisation, colour space, label files and packed files."""
    try:
        metadata_fb, _, _ = _mediapipe()
    except MissingDependencyError as exc:
        return {"present": True, "note": str(exc)}
    md = metadata_fb.ModelMetadataT.InitFromPackedBuf(buffer, 0)

    def text(value) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    def tensor(t) -> dict:
        out = {"name": text(t.name), "description": text(t.description)}
        props = t.content and t.content.contentProperties
        if t.content and t.content.contentPropertiesType == \
                metadata_fb.ContentProperties.ImageProperties:
            space = {v: k for k, v in vars(metadata_fb.ColorSpaceType).items()
                     if not k.startswith("_")}
            out["color_space"] = space.get(props.colorSpace, props.colorSpace)
        for unit in t.processUnits or []:
            if unit.optionsType == metadata_fb.ProcessUnitOptions.NormalizationOptions:
                out["normalization"] = {"mean": [float(v) for v in unit.options.mean],
                                        "std": [float(v) for v in unit.options.std]}
        if t.associatedFiles:
            out["associated_files"] = [text(f.name) for f in t.associatedFiles]
        return out

    (subgraph,) = md.subgraphMetadata
    return {"name": text(md.name), "description": text(md.description),
            "version": text(md.version), "author": text(md.author),
            "license": text(md.license), "min_parser_version": text(md.minParserVersion),
            "inputs": [tensor(t) for t in subgraph.inputTensorMetadata or []],
            "outputs": [tensor(t) for t in subgraph.outputTensorMetadata or []],
            "packed_files": sorted(packed_files(model))}
