// fmhub's bridge to GnuSpeech (npm @echogarden/gnuspeech-wasm), run by fmhub.data.voice_families.
// Usage: node gnuspeech_worker.mjs NODE_MODULES_DIR. Reads one JSON request per line on stdin:
//   {"text": "left", "out": "/tmp/x.wav", "control": {"tempo": 1.1, ...}, "voice": {"vocal_tract_length": 16.2, ...}}
// "control" overrides keys of the TRM control model, "voice" keys of the male voice file; the voice is written as
// voice_fmhub.txt so each request can be a different speaker. Answers one JSON line per request: {"ok": true} or
// {"ok": false, "error": "..."}.
import { writeFileSync } from 'fs'
import { createInterface } from 'readline'

const modules = process.argv[2]
const pkg = `${modules}/@echogarden/gnuspeech-wasm`
const { wrapEmscriptenModuleHeap } = await import(`${modules}/wasm-heap-manager/dist/exports/WasmHeapManager.js`)
const { default: init } = await import(`${pkg}/wasm/gnuspeech.js`)
const { defaultTrmControlModelFileContent } = await import(`${pkg}/dist/utilities/DefaultTrmControlModel.js`)

const m = await init()
const heap = wrapEmscriptenModuleHeap(m)
const dir = '/data/en'
const maleVoice = new TextDecoder().decode(m.FS.readFile(`${dir}/voice_male.txt`))

function setKeys(text, values) {
  for (const [key, value] of Object.entries(values || {})) {
    if (!/^[a-z_0-9]+$/.test(key) || typeof value !== 'number' || !Number.isFinite(value)) {
      throw new Error(`bad setting ${key}`)
    }
    const line = new RegExp(`^#?\\s*${key} = .*$`, 'm')
    if (!line.test(text)) throw new Error(`unknown setting ${key}`)
    text = text.replace(line, `${key} = ${value}`)
  }
  return text
}

function synthesize(request) {
  const control = setKeys(defaultTrmControlModelFileContent, request.control).replace(/^voice_name = .*$/m, 'voice_name = fmhub')
  m.FS.writeFile(`${dir}/trm_control_model.txt`, control)
  m.FS.writeFile(`${dir}/voice_fmhub.txt`, setKeys(maleVoice, request.voice))
  const refs = [request.text, '/out.wav', dir, '/out-params.txt'].map((s) => heap.allocNullTerminatedUtf8String(s))
  try {
    m._GnuSpeech_synthesizeToFile(refs[0].address, refs[1].address, refs[2].address, refs[3].address, false)
  } finally {
    refs.forEach((r) => r.free())
  }
  writeFileSync(request.out, m.FS.readFile('/out.wav'))
  m.FS.unlink('/out.wav')
}

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (!line.trim()) continue
  let answer
  try {
    synthesize(JSON.parse(line))
    answer = { ok: true }
  } catch (err) {
    answer = { ok: false, error: String(err && err.message ? err.message : err) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
