// Private mode: load the model repo's ONNX graph, then analyse X-rays picked by the visitor, all in this tab.
// model_repo.json (written by `python -m trainer.push_space --static`) names the Hub endpoint and model repo;
// nothing but the page's own files and that repo's onnx/ files is ever requested.

import * as ort from "./vendor/ort.wasm.bundle.min.mjs";
import { DicomProblem, looksLikeDicom, renderDicom } from "./dicom.js";
import { modelInput, overlay } from "./preprocessing.js";

// The bundle carries its WebAssembly loader; only the binary is fetched, from the page's own vendor/ folder.
ort.env.wasm.wasmPaths = { wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href };
// WebAssembly threads need a cross-origin isolated page (the static Space's custom_headers, or
// `python -m trainer.static_server`): then every core the browser offers; elsewhere one thread, which works too.
ort.env.wasm.numThreads = self.crossOriginIsolated ? navigator.hardwareConcurrency : 1;

const DISPLAY_SIZE = 1024; // the radiograph is shown at most this large, at its own aspect ratio (as in the Space)
const $ = (id) => document.getElementById(id);
let model = null; // {session, config}
let latest = 0; // the newest pick wins when several are analysed at once
let shown = null; // what the opacity slider redraws: {radiograph pixels, heatmap}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function fetchOrExplain(url, what) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${what} could not be downloaded from ${url} (HTTP ${response.status}). Push the model with ` +
      "`python -m trainer.push`, which adds onnx/ for private mode, and check the Space's model_repo.json.");
  }
  return response;
}

async function loadModel() {
  const repo = await (await fetchOrExplain("model_repo.json", "The Space's settings")).json();
  const base = `${repo.endpoint}/${repo.model_id}/resolve/${repo.revision}/`;
  const config = await (await fetchOrExplain(base + "onnx/config.json", "The model's private-mode config")).json();
  const graph = await (await fetchOrExplain(base + "onnx/model.onnx", "The model")).arrayBuffer();
  const session = await ort.InferenceSession.create(new Uint8Array(graph), { executionProviders: ["wasm"] });
  $("model").textContent = `Model: ${repo.model_id} (${(graph.byteLength / 1e6).toFixed(1)} MB), run by ONNX Runtime Web ` +
    `${ort.env.versions.common} on ${ort.env.wasm.numThreads || 1} thread(s).`;
  return { session, config };
}

// The image's RGBA pixels at `width` × `height` (its own size unless given), decoded as the file stores them.
function pixelsOf(bitmap, width = bitmap.width, height = bitmap.height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  return context.getImageData(0, 0, width, height);
}

async function analyse(bitmap) {
  const { session, config } = model;
  const [, height, width] = config.preprocessing.input_size;
  const input = modelInput(pixelsOf(bitmap).data, bitmap.width, bitmap.height, config.preprocessing);
  const outputs = await session.run({ [config.input]: new ort.Tensor("float32", input, [1, 3, height, width]) });
  const [, mapHeight, mapWidth] = outputs.heatmap.dims;
  const looksLikeXray = Boolean(outputs.looks_like_xray.data[0]);
  return {
    probabilities: Object.fromEntries(config.labels.map((label, i) => [label, outputs.probabilities.data[i]])),
    // the answer, as every entry point gives it: a class, or not_a_chest_xray for an image the guard refuses
    decision: looksLikeXray ? config.labels[Number(outputs.decision.data[0])] : config.not_a_chest_xray,
    guardDistance: outputs.guard_distance.data[0],
    looksLikeXray,
    heatmap: { map: outputs.heatmap.data, width: mapWidth, height: mapHeight },
  };
}

function drawRadiograph(bitmap) {
  const scale = Math.min(1, DISPLAY_SIZE / bitmap.width, DISPLAY_SIZE / bitmap.height);
  const width = Math.max(1, Math.round(bitmap.width * scale)), height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = $("radiograph");
  [canvas.width, canvas.height] = [width, height];
  const pixels = pixelsOf(bitmap, width, height);
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return pixels;
}

function drawOverlay() {
  const { radiograph, heatmap } = shown;
  const canvas = $("overlay");
  [canvas.width, canvas.height] = [radiograph.width, radiograph.height];
  const blended = overlay(radiograph.data, radiograph.width, radiograph.height, heatmap.map, heatmap.width,
    heatmap.height, model.config.jet, Number($("opacity").value));
  canvas.getContext("2d").putImageData(new ImageData(blended, radiograph.width, radiograph.height), 0, 0);
}

function showAnswer(name, prediction, milliseconds) {
  const { config } = model;
  const pneumonia = prediction.probabilities[config.positive_label];
  const result = $("result");
  Object.assign(result.dataset, {
    file: name, pneumonia: String(pneumonia), decision: prediction.decision,
    looksLikeXray: String(prediction.looksLikeXray), guardDistance: String(prediction.guardDistance),
    milliseconds: String(milliseconds),
  });
  const rows = Object.entries(prediction.probabilities).sort(([label]) => (label === prediction.decision ? -1 : 1));
  $("probabilities").tBodies[0].replaceChildren(...rows.map(([label, p]) => {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${label}</td><td>${(100 * p).toFixed(1)}%</td>`;
    return row;
  }));
  if (!prediction.looksLikeXray) {
    $("answer").innerHTML = "<strong>This does not look like a chest X-ray.</strong> The model only knows frontal " +
      "chest radiographs, so it gives no diagnosis for this image (its features are " +
      `${prediction.guardDistance.toFixed(1)} from the training X-rays; limit ${config.guard_threshold.toFixed(1)}).`;
  } else {
    $("answer").innerHTML = `<strong>Model output: ${prediction.decision}</strong> (P(${config.positive_label}) = ` +
      `${pneumonia.toFixed(3)}, decision threshold ${config.decision_threshold.toFixed(2)}). ` +
      "Research demo, not for clinical use.";
  }
  $("probabilities").hidden = $("evidence").hidden = !prediction.looksLikeXray;
  result.hidden = false;
}

// Why the picked image cannot be analysed (the limits every entry point applies), or null.
function unusable(name, bitmap) {
  const { max_pixels: maxPixels, min_side: minSide } = model.config.limits;
  if (bitmap.width * bitmap.height > maxPixels) {
    return `${name} is ${bitmap.width}x${bitmap.height} pixels, too large to process (limit ` +
      `${maxPixels.toLocaleString("en")} pixels). Please use a smaller export.`;
  }
  if (Math.min(bitmap.width, bitmap.height) < minSide) {
    return `${name} is only ${bitmap.width}x${bitmap.height} pixels; a chest X-ray needs at least ${minSide} ` +
      "pixels a side.";
  }
  return null;
}

// The picked file as the model and the eye see it: a DICOM rendered to grey (dicom.js), else the browser's decode.
async function decode(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (looksLikeDicom(bytes) || /\.dcm$/i.test(file.name)) {
    const { rgba, width, height } = renderDicom(bytes);
    return createImageBitmap(new ImageData(rgba, width, height), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  }
  return createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

async function onPick() {
  const file = $("xray").files[0];
  if (!file) return;
  const pick = ++latest;
  $("result").hidden = true;
  setStatus(`Analysing ${file.name} on this computer…`);
  let bitmap;
  try {
    bitmap = await decode(file);
  } catch (error) {
    setStatus(error instanceof DicomProblem ? `${file.name}: ${error.message}` : `${file.name} could not be read as a ` +
      "JPEG, PNG or DICOM image (damaged, or another format). Private mode reads JPEG, PNG and uncompressed DICOM; " +
      "the Space and `python -m trainer.predict` read compressed DICOM too.", true);
    return;
  }
  const problem = unusable(file.name, bitmap);
  if (problem) {
    setStatus(problem, true);
    return;
  }
  const started = performance.now();
  const prediction = await analyse(bitmap);
  const milliseconds = performance.now() - started;
  if (pick !== latest) return;
  shown = { radiograph: drawRadiograph(bitmap), heatmap: prediction.heatmap };
  if (prediction.looksLikeXray) drawOverlay();
  showAnswer(file.name, prediction, milliseconds);
  setStatus(`Analysed ${file.name} in ${milliseconds.toFixed(0)} ms, in this browser.`);
}

async function start() {
  try {
    model = await loadModel();
  } catch (error) {
    setStatus(`The model could not be loaded: ${error.message}`, true);
    return;
  }
  $("opacity").value = model.config.heatmap_opacity;
  $("opacity").addEventListener("input", () => shown && drawOverlay());
  $("xray").addEventListener("change", onPick);
  $("xray").disabled = false;
  setStatus("Ready. Pick an X-ray: it stays on this computer.");
}

start();
