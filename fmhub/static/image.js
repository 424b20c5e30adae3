// fmhub's medical-image model in the browser: an image -> `pixel_values` exactly as fmhub's Python preprocessing makes
// it (timm's eval transform over Pillow), the ONNX model, then the calibrated softmax and the predictor's decision.
//
// Load as a plain <script> (the API is `window.FmhubImage`) or `require()` it in Node.js (the same object).
// `config` is what the static-Space builder writes from `fmhub.static_assets.image_preprocessing_config(folder)`:
//   {input_name, output_name, input_size: [3, H, W], interpolation, crop_pct, crop_mode, mean, std,
//    label_names, temperature, notice}
//
// API
//   FmhubImage.classify(session, image, config, {ort, topK})  -> Promise<result>
//       session: an onnxruntime-web InferenceSession of the folder's onnx/model*.onnx; ort: the onnxruntime-web
//       namespace (default: the global `ort`). result: {label, score, scores: {label: p}, top: [{label, score}],
//       notice}: label, score and scores as `MedicalImagePredictor.predict` returns them (rounded to 6 decimals).
//   FmhubImage.pixelValues(image, config)  -> {data: Float32Array, dims: [1, 3, H, W]}
//       image: an ImageData or any {data: RGBA bytes, width, height}; in a browser also an HTMLImageElement,
//       ImageBitmap, HTMLCanvasElement or OffscreenCanvas (drawn onto a canvas at its natural size first).
//   FmhubImage.decide(logits, config, topK = 3)  -> result (as above) from one row of logits
//   FmhubImage.softmax(logits, temperature = 1)  -> Float64Array of probabilities
//   FmhubImage.rgbaToRgb(rgba, width, height)  -> Uint8Array RGB: transparency over black, as `fmhub.imaging` does
//   FmhubImage.resizeRgb(rgb, width, height, outWidth, outHeight, interpolation)  -> Uint8Array RGB, Pillow's
//       `Image.resize` to the byte (antialiased box / bilinear / hamming / bicubic / lanczos, 8-bit fixed point)
//   FmhubImage.preprocessRgb(rgb, width, height, config)  -> Float32Array [3 * H * W], channel-major
//
// The Python side, step by step: `fmhub.imaging.open_image` (8-bit RGB; RGBA and LA composited over opaque black,
// greyscale repeated into three channels), then timm's `transforms_imagenet_eval`: for crop_mode "center" (fmhub's
// default) the shorter side is resized to floor(size / crop_pct) with Pillow (torchvision skips the resize when the
// image already has that size), then a centre crop (zero padding where the image is smaller); "squash" resizes both
// sides to floor(size / crop_pct) before the crop; then /255 and (x - mean) / std per RGB channel, in float32.
// fmhub's embedded test images are 128 x 128 and its default model takes 128 px at crop_pct 1.0: for them the resize
// and the crop are no-ops, but both are implemented as Pillow and torchvision do them for any other size.
//
// What a browser does differently before the pixels reach this file, and this file cannot undo: canvases store
// premultiplied alpha, so semi-transparent pixels read back with getImageData may be off by a level; browsers apply
// ICC colour profiles and reduce 16-bit PNGs to 8 bits their own way (fmhub scales 16-bit images by their maximum);
// EXIF orientation is applied by both. Opaque 8-bit sRGB images (the common case) arrive identical.
;(function (root, factory) {
  const api = factory(root)
  if (typeof module !== 'undefined' && module.exports) module.exports = api
  else root.FmhubImage = api
})(typeof globalThis !== 'undefined' ? globalThis : this, function (root) {
  'use strict'

  const PRECISION_BITS = 22 // Pillow's 8-bit resampling: coefficients in 32 - 8 - 2 bits of fixed point
  const ONE = 2 ** PRECISION_BITS
  const HALF = 2 ** (PRECISION_BITS - 1)

  // Pillow's resampling filters (support in source pixels at scale 1); the hamming window uses C float constants
  const FILTERS = {
    box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
    bilinear: { support: 1, weight: (x) => Math.max(0, 1 - Math.abs(x)) },
    hamming: {
      support: 1,
      weight: (x) => {
        x = Math.abs(x)
        if (x === 0) return 1
        if (x >= 1) return 0
        x *= Math.PI
        return (Math.sin(x) / x) * (Math.fround(0.54) + Math.fround(0.46) * Math.cos(x))
      },
    },
    bicubic: {
      support: 2,
      weight: (x) => {
        const a = -0.5
        x = Math.abs(x)
        if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1
        if (x < 2) return (((x - 5) * x + 8) * x - 4) * a
        return 0
      },
    },
    lanczos: { support: 3, weight: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
  }

  function sinc(x) {
    if (x === 0) return 1
    x *= Math.PI
    return Math.sin(x) / x
  }

  function fail(message) {
    throw new Error(`fmhub image: ${message}`)
  }

  // Python's round(): halves go to the even neighbour (torchvision's centre crop and timm's keep-ratio resize use it)
  function roundHalfEven(x) {
    const r = Math.round(x)
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
  }

  // -- decoding -------------------------------------------------------------------------------------------------
  function imageData(image) {
    if (image && image.data && Number.isInteger(image.width) && Number.isInteger(image.height)) return image
    if (image && typeof document !== 'undefined') {
      const width = image.naturalWidth || image.videoWidth || image.width
      const height = image.naturalHeight || image.videoHeight || image.height
      if (!width || !height) fail('the image has no pixels (not loaded yet?)')
      const canvas = typeof OffscreenCanvas !== 'undefined'
        ? new OffscreenCanvas(width, height)
        : Object.assign(document.createElement('canvas'), { width, height })
      const context = canvas.getContext('2d', { willReadFrequently: true })
      context.drawImage(image, 0, 0, width, height)
      return context.getImageData(0, 0, width, height)
    }
    fail('expected an ImageData or {data, width, height} with RGBA bytes (or, in a browser, an image element)')
  }

  // RGBA -> RGB with transparent areas over opaque black, integer for integer as Pillow's alpha_composite
  function rgbaToRgb(rgba, width, height) {
    const n = width * height
    if (!(width > 0 && height > 0)) fail('the image has no pixels')
    if (rgba.length !== 4 * n) fail(`expected ${4 * n} RGBA bytes for ${width} x ${height}, got ${rgba.length}`)
    const rgb = new Uint8Array(3 * n)
    for (let i = 0; i < n; i++) {
      const alpha = rgba[4 * i + 3]
      for (let c = 0; c < 3; c++) {
        let v = rgba[4 * i + c]
        if (alpha !== 255) {
          const t = v * alpha * 128 + (128 << 7) // Pillow: 7 extra bits, then a rounded division by 255
          v = alpha === 0 ? 0 : (((t >> 8) + t) >> 8) >> 7
        }
        rgb[3 * i + c] = v
      }
    }
    return rgb
  }

  // -- Pillow's resize ------------------------------------------------------------------------------------------
  // For each output pixel along one axis: the first source pixel and the fixed-point weights of the ones it covers
  function coefficients(inSize, outSize, filter) {
    const scale = inSize / outSize
    const filterScale = Math.max(1, scale) // downscaling widens the filter: that is the antialiasing
    const support = filter.support * filterScale
    const first = new Int32Array(outSize)
    const weights = []
    for (let xx = 0; xx < outSize; xx++) {
      const centre = (xx + 0.5) * scale
      const lo = Math.max(0, Math.trunc(centre - support + 0.5))
      const hi = Math.min(inSize, Math.trunc(centre + support + 0.5))
      const w = new Float64Array(Math.max(0, hi - lo))
      let total = 0
      for (let x = 0; x < w.length; x++) {
        w[x] = filter.weight((x + lo - centre + 0.5) / filterScale)
        total += w[x]
      }
      const fixed = new Int32Array(w.length)
      for (let x = 0; x < w.length; x++) {
        const k = total !== 0 ? w[x] / total : w[x]
        fixed[x] = Math.trunc(k < 0 ? k * ONE - 0.5 : k * ONE + 0.5)
      }
      first[xx] = lo
      weights.push(fixed)
    }
    return { first, weights }
  }

  function clip8(sum) {
    return Math.min(255, Math.max(0, Math.floor(sum / ONE)))
  }

  function resizeRgb(rgb, width, height, outWidth, outHeight, interpolation) {
    const filter = FILTERS[interpolation]
    if (!filter) {
      fail(`interpolation "${interpolation}" is not supported here (${Object.keys(FILTERS).join(', ')} are)`)
    }
    if (outWidth === width && outHeight === height) return rgb
    let src = rgb
    let w = width
    if (outWidth !== width) { // horizontal pass first, into 8 bits, as Pillow does
      const { first, weights } = coefficients(width, outWidth, filter)
      const out = new Uint8Array(3 * outWidth * height)
      for (let y = 0; y < height; y++) {
        for (let xx = 0; xx < outWidth; xx++) {
          const k = weights[xx]
          for (let c = 0; c < 3; c++) {
            let sum = HALF
            for (let x = 0; x < k.length; x++) sum += src[3 * (y * width + first[xx] + x) + c] * k[x]
            out[3 * (y * outWidth + xx) + c] = clip8(sum)
          }
        }
      }
      src = out
      w = outWidth
    }
    if (outHeight === height) return src
    const { first, weights } = coefficients(height, outHeight, filter)
    const out = new Uint8Array(3 * w * outHeight)
    for (let yy = 0; yy < outHeight; yy++) {
      const k = weights[yy]
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = HALF
          for (let y = 0; y < k.length; y++) sum += src[3 * ((first[yy] + y) * w + x) + c] * k[y]
          out[3 * (yy * w + x) + c] = clip8(sum)
        }
      }
    }
    return out
  }

  // -- timm's eval transform ------------------------------------------------------------------------------------
  // The size (width, height) the image is resized to before the centre crop
  function resizedSize(width, height, config) {
    const [, targetH, targetW] = config.input_size
    const cropPct = config.crop_pct || 0.875 // timm: a missing or zero crop_pct means its default
    const scaleH = Math.floor(targetH / cropPct)
    const scaleW = Math.floor(targetW / cropPct)
    const mode = config.crop_mode || 'center'
    if (mode === 'squash') return [scaleW, scaleH]
    if (mode === 'border') fail('crop_mode "border" is not supported in the browser')
    if (scaleH === scaleW) { // torchvision's Resize(int): the shorter side to the size, the other in proportion
      const short = Math.min(width, height)
      const long = Math.max(width, height)
      const other = Math.floor((scaleH * long) / short)
      return width <= height ? [scaleH, other] : [other, scaleH]
    }
    const ratio = Math.min(height / scaleH, width / scaleW) // timm's ResizeKeepRatio, longest=0
    return [roundHalfEven(width / ratio), roundHalfEven(height / ratio)]
  }

  // torchvision's center_crop: zero padding where the image is smaller, then a crop at the rounded middle
  function centreCrop(rgb, width, height, cropW, cropH) {
    const padLeft = cropW > width ? Math.floor((cropW - width) / 2) : 0
    const padTop = cropH > height ? Math.floor((cropH - height) / 2) : 0
    const paddedW = cropW > width ? cropW : width
    const paddedH = cropH > height ? cropH : height
    const top = roundHalfEven((paddedH - cropH) / 2)
    const left = roundHalfEven((paddedW - cropW) / 2)
    const out = new Uint8Array(3 * cropW * cropH)
    for (let y = 0; y < cropH; y++) {
      const sy = y + top - padTop
      if (sy < 0 || sy >= height) continue
      for (let x = 0; x < cropW; x++) {
        const sx = x + left - padLeft
        if (sx < 0 || sx >= width) continue
        for (let c = 0; c < 3; c++) out[3 * (y * cropW + x) + c] = rgb[3 * (sy * width + sx) + c]
      }
    }
    return out
  }

  function checkConfig(config) {
    if (!config || !Array.isArray(config.input_size) || config.input_size.length !== 3 || config.input_size[0] !== 3) {
      fail('config.input_size must be [3, H, W] (from fmhub.static_assets.image_preprocessing_config)')
    }
    for (const key of ['mean', 'std']) {
      if (!Array.isArray(config[key]) || config[key].length !== 3) fail(`config.${key} must hold 3 numbers`)
    }
  }

  function preprocessRgb(rgb, width, height, config) {
    checkConfig(config)
    const [, targetH, targetW] = config.input_size
    const [newW, newH] = resizedSize(width, height, config)
    const resized = resizeRgb(rgb, width, height, newW, newH, config.interpolation || 'bilinear')
    const cropped = centreCrop(resized, newW, newH, targetW, targetH)
    const plane = targetW * targetH
    const out = new Float32Array(3 * plane)
    for (let c = 0; c < 3; c++) { // ToTensor then Normalize, each step rounded to float32 as torch computes it
      const mean = Math.fround(config.mean[c])
      const std = Math.fround(config.std[c])
      for (let i = 0; i < plane; i++) {
        out[c * plane + i] = Math.fround(Math.fround(Math.fround(cropped[3 * i + c] / 255) - mean) / std)
      }
    }
    return out
  }

  function pixelValues(image, config) {
    const data = imageData(image)
    const rgb = rgbaToRgb(data.data, data.width, data.height)
    const [, h, w] = config.input_size
    return { data: preprocessRgb(rgb, data.width, data.height, config), dims: [1, 3, h, w] }
  }

  // -- decision -------------------------------------------------------------------------------------------------
  function softmax(logits, temperature = 1) {
    if (!(temperature > 0)) fail(`the temperature must be positive, got ${temperature}`)
    const z = Float64Array.from(logits, (v) => v / temperature)
    const top = Math.max(...z)
    let total = 0
    for (let i = 0; i < z.length; i++) total += (z[i] = Math.exp(z[i] - top))
    for (let i = 0; i < z.length; i++) z[i] /= total
    return z
  }

  // Python's round(p, 6) for a probability: the nearest millionth, exact halves to the even neighbour
  function round6(p) {
    const exact = p.toFixed(100) // the double's exact decimal expansion
    const rest = exact.slice(exact.indexOf('.') + 7)
    if (/^50*$/.test(rest)) {
      const down = Number(exact.slice(0, exact.indexOf('.') + 7))
      return Number((down + (Math.round(down * 1e6) % 2 ? 1e-6 : 0)).toFixed(6))
    }
    return Number(p.toFixed(6))
  }

  function decide(logits, config, topK = 3) {
    const names = config.label_names
    if (!Array.isArray(names) || names.length !== logits.length) {
      fail(`the model gave ${logits.length} logits for ${names ? names.length : 'no'} label names`)
    }
    const probs = softmax(logits, Number(config.temperature ?? 1))
    let best = 0
    for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i // first maximum, as numpy's argmax
    const scores = {}
    names.forEach((name, i) => { scores[name] = round6(probs[i]) })
    const top = names.map((label, i) => ({ label, score: round6(probs[i]) }))
      .sort((a, b) => b.score - a.score).slice(0, topK)
    return { label: names[best], score: round6(probs[best]), scores, top, notice: config.notice ?? null }
  }

  async function classify(session, image, config, { ort = root.ort, topK = 3 } = {}) {
    if (!session || typeof session.run !== 'function') fail('expected an onnxruntime-web InferenceSession')
    if (!ort || typeof ort.Tensor !== 'function') fail('pass the onnxruntime-web namespace as {ort} (or load ort.js)')
    const { data, dims } = pixelValues(image, config)
    const outputs = await session.run({ [config.input_name || 'pixel_values']: new ort.Tensor('float32', data, dims) })
    const logits = outputs[config.output_name || 'logits'] || Object.values(outputs)[0]
    return decide(Array.from(logits.data), config, topK)
  }

  return { classify, pixelValues, decide, softmax, rgbaToRgb, resizeRgb, preprocessRgb, resizedSize }
})
