/* fmhub static Space, customer-service tab: a chat answered by the intent model running in the browser.
 *
 * The decision is the Python predictor's (fmhub/predictors/text.py): the message is cleaned as the server cleans it,
 * tokenized (wordpiece.js), classified by the int8 ONNX graph; the top intent's probability (softmax of the logits
 * over the calibrated temperature) under `oos_threshold`, or the message's distance to every intent's training
 * messages (fmhub/ood.py, when the model has one) over `ood_threshold`, makes it out of scope: handed off to a
 * human, as the `human_agent` intent is. Otherwise the answer is the intent's FAQ entry.
 *
 * `window.fmhubClassify(text)` returns the same object the Python predictor does (label, score, scores, intent,
 * answer, handoff, out_of_scope), for scripts and tests.
 */
"use strict";

(function () {
  const {el, softmax, argmax, percent} = window.fmhub;
  const HUMAN_INTENT = "human_agent";
  const SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;  // lone halves
  const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]/g;
  const SPACES = /[\t-\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;  // str.split()
  const EXAMPLES = ["where is my parcel?", "I was charged twice for one order", "can I talk to a person please"];

  /** What the server does to a message first (predictors/text.py clean_text): printable, NFC, spaces collapsed. */
  function cleanText(text, maxChars) {
    if (text === null || text === undefined) return "";
    let t = Array.from(String(text).replace(SURROGATE, "")).slice(0, maxChars * 2).join("");
    t = t.replace(CONTROL, " ").normalize("NFC");
    return Array.from(t.split(SPACES).filter(Boolean).join(" ")).slice(0, maxChars).join("");
  }

  /** safetensors (F32 tensors) -> {name: {shape, data: Float32Array}} */
  function readSafetensors(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const headerSize = Number(view.getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerSize)));
    const tensors = {};
    for (const [name, info] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      if (info.dtype !== "F32") throw new Error(`${name}: ${info.dtype} tensors are not read here (F32 only)`);
      const [begin, end] = info.data_offsets;
      const copy = bytes.slice(8 + headerSize + begin, 8 + headerSize + end);  // aligned for Float32Array
      tensors[name] = {shape: info.shape, data: new Float32Array(copy.buffer)};
    }
    return tensors;
  }

  /** Squared Mahalanobis distance to the nearest intent mean under the shared precision (fmhub/ood.py). */
  class DistanceScorer {
    constructor({means, precision}) {
      [this.classes, this.width] = means.shape;
      this.means = means.data;
      this.precision = precision.data;
      this.meansTerm = [];  // m'Pm of every class mean
      for (let c = 0; c < this.classes; c++) {
        const m = this.means.subarray(c * this.width, (c + 1) * this.width);
        const pm = this.project(m);
        this.meansTerm.push(pm.reduce((sum, v, i) => sum + v * m[i], 0));
      }
    }

    project(x) {  // x'P (P is symmetric)
      const h = this.width, out = new Float64Array(h);
      for (let i = 0; i < h; i++) {
        const xi = x[i], row = i * h;
        for (let j = 0; j < h; j++) out[j] += xi * this.precision[row + j];
      }
      return out;
    }

    score(x) {
      const px = this.project(x);
      const own = px.reduce((sum, v, i) => sum + v * x[i], 0);
      let best = Infinity;
      for (let c = 0; c < this.classes; c++) {
        let cross = 0;
        for (let i = 0; i < this.width; i++) cross += px[i] * this.means[c * this.width + i];
        best = Math.min(best, Math.max(own - 2 * cross + this.meansTerm[c], 0));
      }
      return best;
    }
  }

  /** the last hidden state [1, T, H] averaged over the message's tokens (all real: one unpadded message) */
  function meanPool(hidden) {
    const [, tokens, width] = hidden.dims;
    const out = new Float64Array(width);
    for (let t = 0; t < tokens; t++) for (let i = 0; i < width; i++) out[i] += hidden.data[t * width + i];
    return out.map((v) => v / Math.max(tokens, 1));
  }

  class IntentModel {
    constructor(settings, tokenizer, session, scorer) {
      Object.assign(this, {settings, tokenizer, session, scorer});
      this.queue = Promise.resolve();  // one run at a time: a wasm session does not take concurrent runs
    }

    async probsAndDistance(text) {
      const ids = this.tokenizer.encode(text);
      const tensor = (values) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, ids.length]);
      const feeds = {};
      for (const name of this.session.inputNames) {
        if (name === "input_ids") feeds[name] = tensor(ids);
        else if (name === "attention_mask") feeds[name] = tensor(ids.map(() => 1));
        else if (name === "token_type_ids") feeds[name] = tensor(ids.map(() => 0));
        else throw new Error(`the model wants an input this page does not make: ${name}`);
      }
      const wanted = this.scorer ? ["logits", "last_hidden_state"] : ["logits"];
      const run = this.queue.then(() => this.session.run(feeds, wanted));
      this.queue = run.catch(() => {});
      const out = await run;
      const probs = softmax(out.logits.data, this.settings.temperature);
      const distance = this.scorer ? this.scorer.score(meanPool(out.last_hidden_state)) : null;
      return {probs, distance};
    }

    async classify(text) {
      const s = this.settings;
      const cleaned = cleanText(text, s.max_text_chars);
      if (!cleaned) {
        return {label: "empty", score: 0, scores: {}, intent: null, answer: s.empty_message, handoff: false};
      }
      const {probs, distance} = await this.probsAndDistance(cleaned);
      return this.decide(probs, distance);
    }

    decide(probs, distance) {
      const s = this.settings;
      const best = argmax(probs);
      const intent = s.label_names[best], score = probs[best];
      const distanceThreshold = s.ood_threshold ?? Infinity;
      const far = distance !== null && distance > distanceThreshold;
      const outOfScope = score < s.oos_threshold || far;
      const decidedBy = !outOfScope ? null : score < s.oos_threshold ? "confidence" : "distance";
      return {
        label: outOfScope ? "out_of_scope" : intent,
        score,
        scores: Object.fromEntries(s.label_names.map((name, i) => [name, probs[i]])),
        intent,
        answer: outOfScope ? s.handoff_message : (s.faq[intent] || `(intent: ${intent})`),
        handoff: outOfScope || intent === HUMAN_INTENT,
        out_of_scope: {
          decided_by: decidedBy, confidence: score, confidence_threshold: s.oos_threshold,
          distance, distance_threshold: this.scorer ? distanceThreshold : null,
        },
      };
    }
  }

  async function loadIntentModel(model) {
    const s = model.settings;
    const [tokenizerJson, session, stats] = await Promise.all([
      model.json(s.tokenizer.file),
      model.session(),
      s.distance_file ? model.bytes(s.distance_file) : null,
    ]);
    const tokenizer = new window.fmhub.WordPieceTokenizer(tokenizerJson.model.vocab, s.tokenizer);
    return new IntentModel(s, tokenizer, session, stats ? new DistanceScorer(readSafetensors(stats)) : null);
  }

  function tagLine(result) {
    if (result.label === "out_of_scope") {
      return `out of scope (closest intent ${result.intent}, confidence ${percent(result.score)}) · handed off`;
    }
    let tag = `intent ${result.intent} · confidence ${percent(result.score)}`;
    if (result.handoff) tag += " · handed off to a human";
    return tag;
  }

  function buildChat(panel, ready, settings) {
    const log = el("div", {id: "cs-log", class: "chat-log", role: "log", "aria-live": "polite"});
    const status = el("p", {id: "cs-status", class: "status", text: "Loading the model in your browser…"});
    const box = el("textarea", {id: "cs-message", rows: "2", maxlength: String(settings.max_text_chars),
                                placeholder: "Ask about an order, a delivery, a refund…", "aria-label": "Message"});
    const send = el("button", {id: "cs-send", type: "submit", text: "Send"});
    const form = el("form", {id: "cs-form", class: "chat-form"}, box, send);
    const examples = el("div", {class: "examples"});
    for (const text of EXAMPLES) {
      const chip = el("button", {type: "button", class: "example", text});
      chip.addEventListener("click", () => { box.value = text; form.requestSubmit(); });
      examples.append(chip);
    }
    panel.append(el("p", {class: "caption", text: settings.description}), log, status, form, examples);

    const say = (who, text) => {
      const bubble = el("div", {class: `msg ${who}`}, el("div", {class: "text", text}));
      log.append(bubble);
      log.scrollTop = log.scrollHeight;
      return bubble;
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = box.value;
      box.value = "";
      if (text.trim()) say("user", text);
      const bubble = say("bot pending", "…");
      try {
        const result = await (await ready).classify(text);
        bubble.className = "msg bot";
        bubble.dataset.label = result.label;
        bubble.dataset.handoff = String(result.handoff);
        bubble.firstChild.textContent = result.answer;
        if (result.label !== "empty") bubble.append(el("div", {class: "tag", text: tagLine(result)}));
      } catch (err) {
        bubble.className = "msg bot error";
        bubble.firstChild.textContent = `Something went wrong in this page: ${err.message}`;
        console.error(err);
      }
    });
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    ready.then(
      () => { status.textContent = "The model runs in your browser: nothing you type leaves this page."; },
      (err) => { status.textContent = `The model could not load: ${err.message}`; status.classList.add("error"); });
  }

  window.fmhub.register("customer-service", async (panel, model) => {
    const ready = loadIntentModel(model);
    buildChat(panel, ready, model.settings);
    window.fmhubClassify = async (text) => (await ready).classify(text);
    // the ids the model is fed for `text` (after the server's cleaning), to check the tokenizer against Python's
    window.fmhubTokenize = async (text) => (await ready).tokenizer.encode(cleanText(text, model.settings.max_text_chars));
    window.fmhubClassifyMany = async (texts) => {
      const results = [];
      for (const text of texts) results.push(await window.fmhubClassify(text));
      return results;
    };
    await ready;
  });
})();
