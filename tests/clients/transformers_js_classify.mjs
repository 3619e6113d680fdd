// What a web or Node app runs on an exported folder with transformers.js:
//   node transformers_js_classify.mjs PACKAGE_DIR FOLDER DTYPE PHOTO...
// prints {"labels", "logits": {photo: [...]}, "pixels": {photo: [...]}} as JSON (the pixels
// transformers.js' own image processor fed the model, so a test can tell resize from graph).
import { createRequire } from 'node:module';
import path from 'node:path';

const [packageDir, folder, dtype, ...photos] = process.argv.slice(2);
const require = createRequire(path.resolve(packageDir, 'package.json'));
const { env, AutoModelForImageClassification, AutoProcessor, RawImage } =
    require('@huggingface/transformers');
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + '/';
const name = path.basename(path.resolve(folder));
const model = await AutoModelForImageClassification.from_pretrained(name, { dtype });
const processor = await AutoProcessor.from_pretrained(name);
const logits = {};
const pixels = {};
for (const photo of photos) {
    const inputs = await processor(await RawImage.read(photo));
    const output = await model(inputs);
    logits[photo] = Array.from(output.logits.data);
    pixels[photo] = Array.from(inputs.pixel_values.data);
}
console.log(JSON.stringify({ labels: model.config.id2label, logits, pixels }));
