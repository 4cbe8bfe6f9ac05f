// The project's preprocessing and heatmap overlay, in the browser, with the numbers Python gets.
//
// Python resizes the whole image to the model's input with Pillow (torchvision's Resize on a PIL image),
// then scales to [0, 1] and normalises with the ImageNet mean and std (serving/preprocessing.py).
// `resize` is Pillow's separable resampling (Resample.c) for 8-bit images: the same filter,
// the same coefficients rounded to 22-bit fixed point, horizontal pass then vertical, each rounded
// to 8 bits; so the same decoded pixels give the same resized pixels.

const PRECISION_BITS = 22;
const FILTERS = {
  bilinear: { support: 1, weight: (x) => Math.max(0, 1 - Math.abs(x)) },
  bicubic: {
    support: 2,
    weight: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
};

// For each output position: the first input position and the fixed-point weights of the inputs it mixes.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const inverse = 1 / filterScale;
  const taps = [];
  for (let out = 0; out < outSize; out++) {
    const center = (out + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const last = Math.min(Math.trunc(center + support + 0.5), inSize);
    const weights = [];
    for (let x = first; x < last; x++) weights.push(filter.weight((x - center + 0.5) * inverse));
    const total = weights.reduce((sum, w) => sum + w, 0);
    const fixed = weights.map((w) => {
      const normalised = (total !== 0 ? w / total : w) * 2 ** PRECISION_BITS;
      return Math.trunc(normalised < 0 ? normalised - 0.5 : normalised + 0.5);
    });
    taps.push({ first, fixed });
  }
  return taps;
}

function clip8(sum) {
  if (sum >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / 2 ** PRECISION_BITS);
}

// One pass along an axis of interleaved RGBA pixels: `stride` steps between neighbours along the axis.
function resamplePass(pixels, width, height, outWidth, outHeight, horizontal, filter) {
  const taps = coefficients(horizontal ? width : height, horizontal ? outWidth : outHeight, filter);
  const out = new Uint8ClampedArray(outWidth * outHeight * 4);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const { first, fixed } = taps[horizontal ? x : y];
      for (let channel = 0; channel < 4; channel++) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let k = 0; k < fixed.length; k++) {
          const source = horizontal ? (y * width + first + k) : ((first + k) * width + x);
          sum += pixels[source * 4 + channel] * fixed[k];
        }
        out[(y * outWidth + x) * 4 + channel] = clip8(sum);
      }
    }
  }
  return out;
}

// RGBA pixels resized as Pillow resizes: a pass only along an axis whose size changes.
export function resize(pixels, width, height, outWidth, outHeight, interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation ${interpolation} is not implemented in the page`);
  if (outWidth !== width) {
    pixels = resamplePass(pixels, width, height, outWidth, height, true, filter);
  }
  if (outHeight !== height) {
    pixels = resamplePass(pixels, outWidth, height, outWidth, outHeight, false, filter);
  }
  return pixels;
}

// The model's input (1, 3, H, W) as a Float32Array: the whole image squashed to H×W, then ImageNet-normalised.
export function modelInput(pixels, width, height, preprocessing) {
  const [, inputHeight, inputWidth] = preprocessing.input_size;
  const resized = resize(pixels, width, height, inputWidth, inputHeight, preprocessing.interpolation);
  const plane = inputWidth * inputHeight;
  const input = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let channel = 0; channel < 3; channel++) {
      const value = Math.fround(resized[i * 4 + channel] / 255);
      input[channel * plane + i] = (value - preprocessing.mean[channel]) / preprocessing.std[channel];
    }
  }
  return input;
}

// A map (h, w) resized bilinearly (align_corners=False, as torch interpolates) and scaled to [0, 1].
function upsample(map, mapWidth, mapHeight, width, height) {
  const source = (out, inSize, outSize) => Math.max((out + 0.5) * (inSize / outSize) - 0.5, 0);
  const resized = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const sy = source(y, mapHeight, height), y0 = Math.floor(sy), y1 = Math.min(y0 + 1, mapHeight - 1), dy = sy - y0;
    for (let x = 0; x < width; x++) {
      const sx = source(x, mapWidth, width), x0 = Math.floor(sx), x1 = Math.min(x0 + 1, mapWidth - 1), dx = sx - x0;
      const top = map[y0 * mapWidth + x0] * (1 - dx) + map[y0 * mapWidth + x1] * dx;
      const bottom = map[y1 * mapWidth + x0] * (1 - dx) + map[y1 * mapWidth + x1] * dx;
      resized[y * width + x] = top * (1 - dy) + bottom * dy;
    }
  }
  let low = Infinity, high = -Infinity;
  for (const value of resized) { low = Math.min(low, value); high = Math.max(high, value); }
  return resized.map((value) => (value - low) / (1e-7 + (high - low)));
}

// The heatmap in the jet colours blended over the radiograph's RGBA pixels, as serving/heatmap.py's overlay().
export function overlay(pixels, width, height, map, mapWidth, mapHeight, jet, opacity) {
  const scaled = upsample(map, mapWidth, mapHeight, width, height);
  const blended = new Float32Array(width * height * 3);
  let brightest = 0;
  for (let i = 0; i < width * height; i++) {
    const colour = jet[Math.floor(255 * scaled[i])];
    for (let channel = 0; channel < 3; channel++) {
      const value = opacity * colour[channel] + (1 - opacity) * pixels[i * 4 + channel] / 255;
      blended[i * 3 + channel] = value;
      brightest = Math.max(brightest, value);
    }
  }
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    for (let channel = 0; channel < 3; channel++) out[i * 4 + channel] = Math.floor(255 * blended[i * 3 + channel] / brightest);
    out[i * 4 + 3] = 255;
  }
  return out;
}
