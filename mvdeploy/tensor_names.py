"""The tensor names every artifact uses, so app code can call a model by name."""

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
PROBS_NAME = "probabilities"  # the output when softmax is folded into the artifact
MASK_NAME = "mask"  # segmentation with export.mask: class index per pixel of the input
