// DICOM in private mode: parsed by dicom-parser (vendored, loaded by index.html as a classic script) and rendered to
// 8-bit grey by the rules of the Python reader (serving/images.py dicom_to_image): the modality LUT (its table, or the
// rescale slope and intercept), then the VOI LUT table or the window, scaled by the range BitsStored allows (the data's own range when
// the values fall outside it), MONOCHROME1 inverted, rounded half up. Uncompressed transfer syntaxes only.

const UNCOMPRESSED = {
  "1.2.840.10008.1.2": true, // implicit VR little endian
  "1.2.840.10008.1.2.1": true, // explicit VR little endian
  "1.2.840.10008.1.2.2": false, // explicit VR big endian (retired)
};

export class DicomProblem extends Error {}

export function looksLikeDicom(bytes) {
  return bytes.length > 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM";
}

const number = (dataSet, tag, fallback) => (dataSet.elements[tag] ? dataSet.floatString(tag) : fallback);

// The stored values, as the Python reader's pixel_array gives them: signed or unsigned, BitsStored wide.
function storedValues(dataSet, byteArray, littleEndian) {
  const rows = dataSet.uint16("x00280010"), columns = dataSet.uint16("x00280011");
  const allocated = dataSet.uint16("x00280100"), bitsStored = dataSet.uint16("x00280101");
  const signed = dataSet.uint16("x00280103") === 1;
  const samples = dataSet.uint16("x00280002") ?? 1, frames = parseInt(dataSet.string("x00280008") ?? "1", 10);
  if (samples !== 1 || frames > 1) {
    throw new DicomProblem(`Expected one greyscale image in the DICOM file, found ${frames} frame(s) of ${samples} ` +
      "sample(s) per pixel.");
  }
  if (allocated !== 8 && allocated !== 16) {
    throw new DicomProblem(`This DICOM file stores ${allocated} bits per pixel; private mode reads 8 and 16. ` +
      "Use the Space or `python -m trainer.predict`.");
  }
  const element = dataSet.elements.x7fe00010;
  const view = new DataView(byteArray.buffer, byteArray.byteOffset + element.dataOffset, element.length);
  const count = rows * columns, values = new Float64Array(count), unused = allocated - bitsStored;
  for (let i = 0; i < count; i++) {
    const raw = allocated === 8 ? view.getUint8(i) : view.getUint16(2 * i, littleEndian);
    const shifted = (raw << (32 - allocated + unused)) >>> 0; // keep BitsStored bits at the top of 32
    values[i] = signed ? (shifted | 0) >> (32 - bitsStored) : shifted >>> (32 - bitsStored);
  }
  return { values, rows, columns, bitsStored, signed };
}

// The first table of a Modality or VOI LUT Sequence item, as pydicom applies it: values below the first mapped one
// take entry 0, above the last the last entry.
function lookUp(values, item, signed) {
  const entries = item.uint16("x00283002", 0) || 65536;
  const firstMap = signed ? item.int16("x00283002", 1) : item.uint16("x00283002", 1);
  const lut = Uint16Array.from({ length: entries }, (_, i) => item.uint16("x00283006", i));
  return values.map((v) => lut[v >= firstMap ? Math.min(Math.trunc(v - firstMap), entries - 1) : 0]);
}

const lutItem = (dataSet, tag) => {
  const item = dataSet.elements[tag]?.items?.[0]?.dataSet;
  return item?.elements.x00283002 && item.elements.x00283006 ? item : null;
};

function applyWindow(values, dataSet, bitsStored, signed, rescaled, modalityLut) {
  let center = number(dataSet, "x00281050"), width = number(dataSet, "x00281051");
  const fn = (dataSet.string("x00281056") ?? "LINEAR").trim().toUpperCase();
  let [yMin, yMax] = signed ? [-(2 ** (bitsStored - 1)), 2 ** (bitsStored - 1) - 1] : [0, 2 ** bitsStored - 1];
  if (modalityLut) [yMin, yMax] = [0, 2 ** modalityLut.uint16("x00283002", 2) - 1];
  if (rescaled) { // as pydicom's apply_windowing (a file has a Modality LUT table or a rescale, not both)
    const slope = number(dataSet, "x00281053"), intercept = number(dataSet, "x00281052");
    [yMin, yMax] = [yMin * slope + intercept, yMax * slope + intercept];
  }
  const range = yMax - yMin;
  if (fn === "SIGMOID") return values.map((v) => range / (1 + Math.exp((-4 * (v - center)) / width)) + yMin);
  if (fn === "LINEAR") [center, width] = [center - 0.5, width - 1];
  return values.map((v) => (v <= center - width / 2 ? yMin : v > center + width / 2 ? yMax
    : ((v - center) / width + 0.5) * range + yMin));
}

// {grey: Uint8ClampedArray RGBA, width, height} of a DICOM file's bytes, or a DicomProblem saying why not.
export function renderDicom(bytes) {
  const parser = globalThis.dicomParser;
  let dataSet;
  try {
    dataSet = parser.parseDicom(bytes);
  } catch (error) {
    throw new DicomProblem(`This DICOM file cannot be read (${error.exception ?? error.message ?? error}).`);
  }
  if (!dataSet.elements.x7fe00010) throw new DicomProblem("This DICOM file has no pixel data (no image inside).");
  const syntax = (dataSet.string("x00020010") ?? "1.2.840.10008.1.2").trim();
  if (!(syntax in UNCOMPRESSED)) {
    throw new DicomProblem(`The image in this DICOM file is compressed (transfer syntax ${syntax}), which private ` +
      "mode cannot decode; the Space and `python -m trainer.predict` read it.");
  }
  const { values, rows, columns, bitsStored, signed } = storedValues(dataSet, bytes, UNCOMPRESSED[syntax]);
  // Modality LUT: its table when there is one, else the rescale slope and intercept
  let pixels = values;
  const modalityLut = lutItem(dataSet, "x00283000");
  const rescaled = Boolean(dataSet.elements.x00281053 && dataSet.elements.x00281052);
  if (modalityLut) pixels = lookUp(pixels, modalityLut, signed);
  else if (rescaled) {
    const slope = number(dataSet, "x00281053"), intercept = number(dataSet, "x00281052");
    pixels = pixels.map((v) => v * slope + intercept);
  }
  // VOI: its table when there is one (pydicom's prefer_lut), else the window
  const voiLut = lutItem(dataSet, "x00283010");
  if (voiLut) pixels = lookUp(pixels, voiLut, signed);
  else if (dataSet.elements.x00281050 && dataSet.elements.x00281051) {
    pixels = applyWindow(pixels, dataSet, bitsStored, signed, rescaled, modalityLut);
  }
  let [low, high] = [0, 2 ** bitsStored - 1];
  let min = Infinity, max = -Infinity;
  for (const v of pixels) [min, max] = [Math.min(min, v), Math.max(max, v)];
  if (min < low || max > high) [low, high] = [min, max];
  const inverted = (dataSet.string("x00280004") ?? "MONOCHROME2").trim() === "MONOCHROME1";
  const rgba = new Uint8ClampedArray(4 * pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    let grey = ((pixels[i] - low) / Math.max(high - low, 1)) * 255;
    if (inverted) grey = 255 - grey;
    const value = Math.min(255, Math.max(0, Math.floor(grey + 0.5)));
    rgba.set([value, value, value, 255], 4 * i);
  }
  return { rgba, width: columns, height: rows };
}
