// fmhub's voice-command model in the browser: 16 kHz samples -> Whisper log-mel `input_features` exactly as
// transformers' WhisperFeatureExtractor computes them for fmhub's 1 s clips, the ONNX model, then the calibrated
// softmax and the keyword-spotting decision of `fmhub.predictors.audio.VoiceCommandPredictor.classify`.
//
// Load as a plain <script> (the API is `window.FmhubVoice`) or `require()` it in Node.js (the same object).
// `config` is what the static-Space builder writes from `fmhub.static_assets.voice_features_config(folder)`:
//   {input_name, output_name, sampling_rate, n_samples, n_fft, hop_length, feature_size, nb_max_frames,
//    padding_value, mel_filters: {dtype: "float32", shape: [n_fft / 2 + 1, feature_size], base64},
//    label_names, temperature, detection_threshold, hop_seconds, refractory_seconds, confirm_windows,
//    min_seconds, max_seconds, silent_peak, silence_label, unknown_label}
// (mel_filters may also be a nested array [n_fft / 2 + 1][feature_size] or a Float32Array of that layout).
//
// API
//   FmhubVoice.classify(session, samples, config, {ort, sampleRate = 16000, batchSize = 16})  -> Promise<result>
//       session: an onnxruntime-web InferenceSession of the folder's onnx/model*.onnx; ort: the onnxruntime-web
//       namespace (default: the global `ort`); samples: mono Float32Array. result, as the Python predictor's:
//       {label, score, scores: {label: p}, command (a command label or null), detections: [{label, time, score}],
//        duration, windows, threshold} (+ note for a silent clip). Clips of at most 1 s are one window (centred
//       and zero-padded); longer ones are scanned with a 1 s window every hop_seconds, and a command needs
//       confirm_windows consecutive windows at the threshold, with refractory_seconds between detections.
//   FmhubVoice.logMel(samples, config)  -> Float32Array [feature_size * frames], mel-major: one clip's input_features
//       (padded with zeros or cut to n_samples; frames = n_samples / hop_length)
//   FmhubVoice.decideWindows(probs, starts, length, config)  -> result from window probabilities [[p per label]],
//       their start samples and the clip's length in samples (what classify does after the model)
//   FmhubVoice.findDetections(probs, times, labelNames, threshold, refractoryS, confirm, state)
//       -> {detections, state}: fmhub.keyword_spotting.find_detections; state carries a stream across calls
//   FmhubVoice.softmax(logits, temperature = 1)  -> Float64Array
//   FmhubVoice.fitClip(samples, length = 16000)  -> Float32Array: centred zero padding, or the loudest `length`
//   FmhubVoice.windowStarts(length, window = 16000, hop = 4000)  -> start samples of the sliding windows
//   FmhubVoice.toMono(channels)  -> Float32Array: the average of an AudioBuffer's channels (or arrays of samples),
//       brought back into [-1, 1] when it peaks above 1, as fmhub.audio.to_mono_float does
//   FmhubVoice.resample(samples, fromRate, toRate = 16000)  -> Float32Array, windowed-sinc and clipped to [-1, 1].
//       fmhub resamples with soxr: on speech the two differ by at most about 1e-3 from 44.1/48 kHz and 7e-3 up
//       from 8 kHz, not to the bit, so features of resampled audio are close to fmhub's but not equal.
//   FmhubVoice.decodeToMono16k(arrayBuffer)  -> Promise<Float32Array> (browser only): a file's bytes decoded by
//       WebAudio, which also brings them to 16 kHz with the browser's own resampler (decodeAudioData returns the
//       context's rate), then averaged to mono. `resample` is for samples the page holds at another rate, such as
//       a microphone stream at 48 kHz.
//
// Features: Whisper's recipe with torch's STFT: a periodic Hann window of n_fft samples, frames every hop_length
// samples over the clip reflect-padded by n_fft / 2 at both ends, the power spectrum (the FFT runs in float64 here),
// the last frame dropped, the mel filters, log10 of at least 1e-10, everything below (maximum - 8) raised to it,
// then (x + 4) / 4. fmhub computes them in float32: on real speech the two differ by at most 3e-5.
;(function (root, factory) {
  const api = factory(root)
  if (typeof module !== 'undefined' && module.exports) module.exports = api
  else root.FmhubVoice = api
})(typeof globalThis !== 'undefined' ? globalThis : this, function (root) {
  'use strict'

  const SAMPLE_RATE = 16000
  const HOP_S = 0.25 // the detector's defaults, when the config has none (fmhub.keyword_spotting)
  const REFRACTORY_S = 1.0
  const CONFIRM_WINDOWS = 2

  function fail(message) {
    throw new Error(`fmhub voice: ${message}`)
  }

  // Python's round(x, digits): the nearest decimal, exact halves to the even neighbour
  function pyRound(x, digits) {
    if (!Number.isFinite(x)) return x
    const exact = Math.abs(x).toFixed(100) // the double's exact decimal expansion (it ends long before 100 digits)
    const point = exact.indexOf('.')
    const rest = exact.slice(point + 1 + digits)
    if (rest[0] === '5' && /^50*$/.test(rest)) {
      const truncated = exact.slice(0, digits ? point + 1 + digits : point)
      const last = Number(truncated[truncated.length - 1])
      const up = last % 2 === 1 ? 10 ** -digits : 0
      return Math.sign(x) * Number((Number(truncated) + up).toFixed(digits))
    }
    return Number(x.toFixed(digits))
  }

  // -- samples --------------------------------------------------------------------------------------------------
  function toMono(channels) {
    if (channels && typeof channels.getChannelData === 'function') {
      channels = Array.from({ length: channels.numberOfChannels }, (_, c) => channels.getChannelData(c))
    }
    if (!Array.isArray(channels) || !channels.length) fail('expected an AudioBuffer or a list of channels')
    const n = channels[0].length
    const out = new Float32Array(n)
    let peak = 0
    for (let i = 0; i < n; i++) {
      let sum = 0
      for (const channel of channels) sum += channel[i]
      const v = Number.isFinite(sum) ? sum / channels.length : 0
      out[i] = v
      peak = Math.max(peak, Math.abs(v))
    }
    if (peak > 1) for (let i = 0; i < n; i++) out[i] /= peak
    return out
  }

  function gcd(a, b) {
    return b ? gcd(b, a % b) : a
  }

  // A Blackman-windowed sinc low-pass at just under the lower Nyquist rate, 32 zero crossings to each side
  function resample(samples, fromRate, toRate = SAMPLE_RATE) {
    if (!(Number.isInteger(fromRate) && Number.isInteger(toRate) && fromRate > 0 && toRate > 0)) {
      fail(`invalid sample rates ${fromRate} -> ${toRate} (whole numbers of Hz)`)
    }
    if (fromRate === toRate || !samples.length) return Float32Array.from(samples)
    const cutoff = 0.5 * Math.min(1, toRate / fromRate) * 0.98 // cycles per input sample
    const half = Math.ceil(32 / (2 * cutoff)) // input samples to each side of an output sample
    const kernel = (d) => {
      const arg = 2 * cutoff * d
      const window = 0.42 + 0.5 * Math.cos((Math.PI * d) / half) + 0.08 * Math.cos((2 * Math.PI * d) / half)
      return 2 * cutoff * (arg === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg)) * window
    }
    // output i sits at input position i * fromRate / toRate: its fraction takes `phases` values, tabulated once
    const phases = toRate / gcd(fromRate, toRate)
    const taps = 2 * half + 1
    const table = phases <= 4096 ? new Float64Array(phases * taps) : null
    if (table) {
      for (let ph = 0; ph < phases; ph++) {
        for (let k = 0; k < taps; k++) table[ph * taps + k] = kernel(ph / phases + half - k)
      }
    }
    const out = new Float32Array(Math.round((samples.length * toRate) / fromRate))
    for (let i = 0; i < out.length; i++) {
      const whole = Math.floor((i * fromRate) / toRate)
      const phase = (i * fromRate) % toRate / (toRate / phases) // exact: an integer below `phases`
      let sum = 0
      for (let k = 0; k < taps; k++) { // input sample whole - half + k, at distance phase / phases + half - k
        const j = whole - half + k
        if (j < 0 || j >= samples.length) continue
        sum += samples[j] * (table ? table[phase * taps + k] : kernel(phase / phases + half - k))
      }
      out[i] = Math.max(-1, Math.min(1, sum))
    }
    return out
  }

  async function decodeToMono16k(arrayBuffer) {
    if (typeof OfflineAudioContext === 'undefined') fail('decodeToMono16k needs a browser (WebAudio)')
    const decoded = await new OfflineAudioContext(1, 1, SAMPLE_RATE).decodeAudioData(arrayBuffer.slice(0))
    return resample(toMono(decoded), decoded.sampleRate, SAMPLE_RATE) // a no-op where the browser followed the spec
  }

  function fitClip(samples, length = SAMPLE_RATE) {
    const n = samples.length
    if (n === length) return Float32Array.from(samples)
    const out = new Float32Array(length)
    if (n < length) {
      out.set(samples, Math.floor((length - n) / 2))
      return out
    }
    const running = new Float64Array(n + 1) // energy of every window from a running sum, as fmhub.audio.fit_clip
    for (let i = 0; i < n; i++) running[i + 1] = running[i] + samples[i] * samples[i]
    const step = Math.max(1, Math.floor(length / 100))
    let best = 0
    let bestEnergy = -Infinity
    for (let start = 0; start <= n - length; start += step) {
      const energy = running[start + length] - running[start]
      if (energy > bestEnergy) {
        bestEnergy = energy
        best = start
      }
    }
    out.set(samples.slice(best, best + length))
    return out
  }

  function windowStarts(length, window = SAMPLE_RATE, hop = SAMPLE_RATE / 4) {
    if (length <= window) return [0]
    const starts = []
    for (let s = 0; s <= length - window; s += hop) starts.push(s)
    if (starts[starts.length - 1] !== length - window) starts.push(length - window)
    return starts
  }

  // -- FFT (mixed radix, any length) ----------------------------------------------------------------------------
  const plans = new Map()

  function fftPlan(n) {
    if (plans.has(n)) return plans.get(n)
    const factors = []
    let m = n
    for (const p of [4, 2, 3, 5]) while (m % p === 0) { factors.push(p); m /= p }
    for (let p = 7; m > 1; p += 2) while (m % p === 0) { factors.push(p); m /= p }
    const cos = new Float64Array(n)
    const sin = new Float64Array(n)
    for (let k = 0; k < n; k++) { // W^k = exp(-2 pi i k / n)
      cos[k] = Math.cos((2 * Math.PI * k) / n)
      sin[k] = -Math.sin((2 * Math.PI * k) / n)
    }
    const scratch = factors.map((p) => ({ re: new Float64Array(p), im: new Float64Array(p) })) // one per level
    const plan = { n, factors, cos, sin, scratch }
    plans.set(n, plan)
    return plan
  }

  // Decimation in time: the DFT of in[offset + stride * t], t < size, written to out[at .. at + size)
  function fftInto(plan, inRe, offset, stride, outRe, outIm, at, size, level) {
    if (size === 1) {
      outRe[at] = inRe[offset]
      outIm[at] = 0
      return
    }
    const p = plan.factors[level]
    const m = size / p
    for (let j = 0; j < p; j++) fftInto(plan, inRe, offset + j * stride, stride * p, outRe, outIm, at + j * m, m, level + 1)
    const step = plan.n / size // W_size^e = W_n^(e * step)
    const { re: tRe, im: tIm } = plan.scratch[level] // deeper levels are done with theirs by now
    for (let k = 0; k < m; k++) {
      for (let j = 0; j < p; j++) { // the j-th sub-transform's k-th value, turned by W_size^(j k)
        const e = (j * k * step) % plan.n
        const re = outRe[at + j * m + k]
        const im = outIm[at + j * m + k]
        tRe[j] = re * plan.cos[e] - im * plan.sin[e]
        tIm[j] = re * plan.sin[e] + im * plan.cos[e]
      }
      for (let q = 0; q < p; q++) { // a DFT of size p over those: X[k + m q]
        let re = 0
        let im = 0
        for (let j = 0; j < p; j++) {
          const e = ((j * q) % p) * m * step
          re += tRe[j] * plan.cos[e] - tIm[j] * plan.sin[e]
          im += tRe[j] * plan.sin[e] + tIm[j] * plan.cos[e]
        }
        outRe[at + k + m * q] = re
        outIm[at + k + m * q] = im
      }
    }
  }

  // -- Whisper log-mel ------------------------------------------------------------------------------------------
  const filterCache = new WeakMap()

  function decodeBase64(text) {
    if (typeof atob === 'function') return Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
    return new Uint8Array(Buffer.from(text, 'base64'))
  }

  // The mel filters ({weights: Float32Array [bins * mels], bin-major; first, end: each filter's non-zero bins}),
  // from any of the accepted layouts
  function melFilters(config) {
    const bins = config.n_fft / 2 + 1
    const mels = config.feature_size
    const given = config.mel_filters
    if (given && typeof given === 'object' && filterCache.has(given)) return filterCache.get(given)
    let flat
    if (given && typeof given.base64 === 'string') {
      if (given.dtype !== 'float32') fail(`mel_filters must be float32, got ${given.dtype}`)
      const bytes = decodeBase64(given.base64)
      flat = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
      if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) fail('a big-endian machine cannot read mel_filters')
    } else if (Array.isArray(given) && Array.isArray(given[0])) {
      flat = Float32Array.from(given.flat())
    } else if (given instanceof Float32Array || Array.isArray(given)) {
      flat = Float32Array.from(given)
    } else {
      fail('config.mel_filters is missing (from fmhub.static_assets.voice_features_config)')
    }
    if (flat.length !== bins * mels) fail(`mel_filters hold ${flat.length} values, expected ${bins} x ${mels}`)
    const filters = { weights: flat, first: new Int32Array(mels), end: new Int32Array(mels) }
    for (let m = 0; m < mels; m++) { // each filter's non-zero bins: the sum skips only exact zeros
      let f = 0
      while (f < bins && flat[f * mels + m] === 0) f++
      let end = bins
      while (end > f && flat[(end - 1) * mels + m] === 0) end--
      filters.first[m] = f
      filters.end[m] = end
    }
    if (given && typeof given === 'object') filterCache.set(given, filters)
    return filters
  }

  function hann(n) { // periodic, as torch.hann_window
    return Float64Array.from({ length: n }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / n))
  }

  function logMel(samples, config) {
    const nFft = config.n_fft
    const hop = config.hop_length
    const length = config.n_samples
    const mels = config.feature_size
    if (!(nFft > 0 && hop > 0 && length > nFft / 2 && mels > 0)) {
      fail('config needs n_fft, hop_length, n_samples and feature_size (from voice_features_config)')
    }
    const filters = melFilters(config)
    const pad = nFft / 2
    const x = new Float32Array(length).fill(config.padding_value || 0) // the extractor's float32 input, padded or cut
    x.set(samples.length > length ? samples.slice(0, length) : samples)
    const padded = new Float64Array(length + 2 * pad) // torch.stft(center=True): reflect padding at both ends
    for (let i = 0; i < padded.length; i++) {
      let j = i - pad
      if (j < 0) j = -j
      if (j >= length) j = 2 * (length - 1) - j
      padded[i] = x[j]
    }
    const frames = Math.floor(length / hop) // 1 + length / hop frames, the last one dropped
    const bins = nFft / 2 + 1
    const window = hann(nFft)
    const plan = fftPlan(nFft)
    const frame = new Float64Array(nFft)
    const re = new Float64Array(nFft)
    const im = new Float64Array(nFft)
    const power = new Float64Array(bins)
    const out = new Float32Array(mels * frames)
    const logs = new Float64Array(mels * frames)
    let top = -Infinity
    for (let t = 0; t < frames; t++) {
      for (let i = 0; i < nFft; i++) frame[i] = padded[t * hop + i] * window[i]
      fftInto(plan, frame, 0, 1, re, im, 0, nFft, 0)
      for (let f = 0; f < bins; f++) power[f] = re[f] * re[f] + im[f] * im[f]
      for (let m = 0; m < mels; m++) {
        let sum = 0
        for (let f = filters.first[m]; f < filters.end[m]; f++) sum += filters.weights[f * mels + m] * power[f]
        const v = Math.log10(Math.max(sum, 1e-10))
        logs[m * frames + t] = v
        if (v > top) top = v
      }
    }
    for (let i = 0; i < logs.length; i++) out[i] = (Math.max(logs[i], top - 8) + 4) / 4
    return out
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

  function argmax(values) { // the first maximum, as numpy's argmax
    let best = 0
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i
    return best
  }

  function firstMax(items, key) { // Python's max(items, key=...): the first of the largest
    return items.reduce((best, item) => (key(item) > key(best) ? item : best))
  }

  function isCommand(name, config) {
    return name !== (config.silence_label || '_silence_') && name !== (config.unknown_label || '_unknown_')
  }

  function findDetections(probs, times, labelNames, threshold, refractoryS = REFRACTORY_S,
    confirm = CONFIRM_WINDOWS, state = null) {
    const commands = labelNames.map((n) => n !== '_silence_' && n !== '_unknown_')
    let { lastTime, runLabel, runLength } = state || { lastTime: -Infinity, runLabel: -1, runLength: 0 }
    let runScores = []
    const detections = []
    probs.forEach((row, i) => {
      const k = argmax(row)
      const score = row[k]
      const start = times[i]
      if (commands[k] && score >= threshold) {
        runLength = k === runLabel ? runLength + 1 : 1
        runScores = k === runLabel ? [...runScores, score].slice(-confirm) : [score]
        runLabel = k
      } else {
        runLabel = -1
        runLength = 0
        runScores = []
      }
      if (runLength >= confirm && start - lastTime >= refractoryS) {
        const spacing = times.length > 1 ? times[1] - times[0] : HOP_S
        const first = start - (confirm - 1) * spacing
        const scores = runScores.length ? runScores : [score]
        detections.push({
          label: labelNames[k],
          time: pyRound((first + start) / 2 + 0.5, 2),
          score: pyRound(scores.reduce((a, b) => a + b, 0) / scores.length, 4),
        })
        lastTime = start
      }
    })
    return { detections, state: { lastTime, runLabel, runLength } }
  }

  function scoresDict(names, probs) {
    const scores = {}
    names.forEach((name, i) => { scores[name] = pyRound(probs[i], 6) })
    return scores
  }

  function decideWindows(probs, starts, length, config) {
    const names = config.label_names
    const rate = config.sampling_rate || SAMPLE_RATE
    const threshold = Number(config.detection_threshold ?? 0.5)
    const duration = length / rate
    const times = starts.map((s) => s / rate)
    const confirm = probs.length === 1 ? 1 : config.confirm_windows || CONFIRM_WINDOWS
    let { detections } = findDetections(probs, times, names, threshold, config.refractory_seconds ?? REFRACTORY_S,
      confirm)
    let window
    if (probs.length === 1) {
      window = probs[0]
      detections = detections.map((d) => ({ ...d, time: pyRound(Math.min(duration, 1) / 2, 2) }))
    } else if (detections.length) {
      const best = firstMax(detections, (d) => d.score)
      const distance = times.map((t) => Math.abs(t + 0.5 - best.time))
      window = probs[distance.indexOf(Math.min(...distance))]
    } else {
      window = names.map((_, c) => probs.reduce((sum, row) => sum + row[c], 0) / probs.length)
    }
    let label = names[argmax(window)]
    if (probs.length > 1 && !detections.length && isCommand(label, config)) {
      // nothing confident enough fired anywhere: the likelier non-command class, if the model has one
      const others = names.map((n, i) => i).filter((i) => !isCommand(names[i], config))
      if (others.length) label = names[firstMax(others, (i) => window[i])]
    }
    const bestDetection = detections.length ? firstMax(detections, (d) => d.score) : null
    if (bestDetection && probs.length > 1) label = bestDetection.label
    return {
      label,
      score: pyRound(window[names.indexOf(label)], 6),
      scores: scoresDict(names, window),
      command: bestDetection ? bestDetection.label : null,
      detections,
      duration: pyRound(duration, 3),
      windows: probs.length,
      threshold,
    }
  }

  function checkClip(wave, config) {
    const rate = config.sampling_rate || SAMPLE_RATE
    const seconds = wave.length / rate
    if (!wave.length) fail('the recording is empty: record or upload at least a fraction of a second')
    const minimum = config.min_seconds ?? 0.1
    if (seconds < minimum) {
      fail(`the clip is only ${seconds.toFixed(2)} s long: too short for a command (send at least ${minimum} s)`)
    }
    const maximum = config.max_seconds ?? 60
    if (seconds > maximum + 0.5) {
      fail(`the audio is ${seconds.toFixed(1)} s long; the limit is ${maximum.toFixed(0)} s. ` +
        'Trim it to the part with the commands and try again.')
    }
  }

  function silentResult(wave, config) {
    const names = config.label_names
    const silence = config.silence_label || '_silence_'
    const rate = config.sampling_rate || SAMPLE_RATE
    return {
      label: silence,
      score: 1.0,
      scores: scoresDict(names, names.map((n) => (n === silence ? 1 : 0))),
      command: null,
      detections: [],
      duration: pyRound(wave.length / rate, 3),
      windows: 0,
      threshold: Number(config.detection_threshold ?? 0.5),
      note: 'no signal above -60 dBFS',
    }
  }

  async function classify(session, samples, config, { ort = root.ort, sampleRate = SAMPLE_RATE, batchSize = 16 } = {}) {
    if (!session || typeof session.run !== 'function') fail('expected an onnxruntime-web InferenceSession')
    if (!ort || typeof ort.Tensor !== 'function') fail('pass the onnxruntime-web namespace as {ort} (or load ort.js)')
    const rate = config.sampling_rate || SAMPLE_RATE
    const wave = sampleRate === rate ? Float32Array.from(samples) : resample(samples, sampleRate, rate)
    checkClip(wave, config)
    let peak = 0
    for (const v of wave) peak = Math.max(peak, Math.abs(v))
    if (config.label_names.includes(config.silence_label || '_silence_') && peak < (config.silent_peak ?? 1e-3)) {
      return silentResult(wave, config)
    }
    const clip = config.n_samples
    const hop = Math.round((config.hop_seconds ?? HOP_S) * rate)
    const starts = windowStarts(wave.length, clip, hop)
    const frames = Math.floor(clip / config.hop_length)
    const probs = []
    for (let i = 0; i < starts.length; i += batchSize) {
      const part = starts.slice(i, i + batchSize)
      const features = new Float32Array(part.length * config.feature_size * frames)
      part.forEach((s, b) => {
        const window = wave.length <= clip ? fitClip(wave, clip) : wave.subarray(s, s + clip)
        features.set(logMel(window, config), b * config.feature_size * frames)
      })
      const tensor = new ort.Tensor('float32', features, [part.length, config.feature_size, frames])
      const outputs = await session.run({ [config.input_name || 'input_features']: tensor })
      const logits = outputs[config.output_name || 'logits'] || Object.values(outputs)[0]
      const classes = config.label_names.length
      if (logits.data.length !== part.length * classes) {
        fail(`the model gave ${logits.data.length / part.length} logits for ${classes} label names`)
      }
      for (let b = 0; b < part.length; b++) {
        probs.push(softmax(Array.from(logits.data.slice(b * classes, (b + 1) * classes)), config.temperature ?? 1))
      }
    }
    return decideWindows(probs, starts, wave.length, config)
  }

  return {
    classify, logMel, decideWindows, findDetections, softmax, fitClip, windowStarts, toMono, resample,
    decodeToMono16k, pyRound,
  }
})
