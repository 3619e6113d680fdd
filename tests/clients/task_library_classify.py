"""What an Android app does with the TFLite Task Library, in its Python binding (the same C++
library): argv = MODEL SHORTER_SIDE CROP_HEIGHT CROP_WIDTH RESAMPLE PHOTO...; each photo is
resized and centre-cropped as the checkpoint was trained (the app's own Bitmap code), then
classified; prints {"metadata": displayer JSON, "packed": [...], "top": {photo: [label,
score]}} as JSON. Runs with tflite-support's own protobuf 3 first on PYTHONPATH."""

import json
import sys

import numpy as np
from PIL import Image
from tflite_support import metadata
from tflite_support.task import core, processor, vision

model, shorter, height, width, resample, *photos = sys.argv[1:]
shorter, height, width = int(shorter), int(height), int(width)
displayer = metadata.MetadataDisplayer.with_model_file(model)
classifier = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
    base_options=core.BaseOptions(file_name=model),
    classification_options=processor.ClassificationOptions(max_results=1)))
top = {}
for photo in photos:
    with Image.open(photo) as image:
        image = image.convert("RGB")
    w, h = image.size  # the longer side truncated, as `mvdeploy snippet` writes it
    size = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    size = (max(width, size[0]), max(height, size[1]))
    image = image.resize(size, getattr(Image.Resampling, resample.upper()))
    left, upper = (image.width - width) // 2, (image.height - height) // 2
    crop = np.asarray(image.crop((left, upper, left + width, upper + height)), np.uint8)
    result = classifier.classify(vision.TensorImage.create_from_array(crop))
    best = result.classifications[0].categories[0]
    top[photo] = [best.category_name, best.score]
print(json.dumps({"metadata": json.loads(displayer.get_metadata_json()),
                  "packed": displayer.get_packed_associated_file_list(), "top": top}))
