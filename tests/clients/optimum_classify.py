"""What a Hugging Face user runs on an exported folder with optimum: argv = FOLDER PHOTO...;
prints {"labels": id2label, "logits": {photo: [...]}} as JSON. Runs with optimum's own
transformers (4.57) first on PYTHONPATH, so it imports nothing from mvdeploy."""

import json
import sys

from optimum.onnxruntime import ORTModelForImageClassification
from PIL import Image
from transformers import AutoImageProcessor

folder, photos = sys.argv[1], sys.argv[2:]
model = ORTModelForImageClassification.from_pretrained(folder)
processor = AutoImageProcessor.from_pretrained(folder)
logits = {}
for photo in photos:
    with Image.open(photo) as image:
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
    logits[photo] = model(**inputs).logits[0].tolist()
print(json.dumps({"labels": model.config.id2label, "logits": logits}))
