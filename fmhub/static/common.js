/* fmhub static Space: the page shell shared by every scenario (tabs, model files, ONNX Runtime sessions).
 *
 * The page runs the models in the visitor's browser with onnxruntime-web (wasm backend), vendored by
 * `fmhub spaces build --static` under ort/: nothing is fetched from outside this site.
 *
 * A scenario is one script beside this one (chat.js, image.js, voice.js) that calls
 *
 *     fmhub.register("customer-service", async (panel, model) => { ... });
 *
 * `panel` is the scenario's tab panel (an empty <section>); `model` gives the scenario's files under
 * models/<scenario>/: `model.settings` (settings.json: labels, temperature, thresholds, ...), `model.url(name)`,
 * `model.json(name)`, `model.bytes(name)` and `model.session()` (the InferenceSession of its ONNX graph, created
 * once). The shell reads space.json (the scenarios in this build, their titles and model folders), draws one tab per
 * scenario and mounts each registered one; a scenario without a script shows "not built".
 */
"use strict";

(function () {
  const registry = new Map();
  const sessions = new Map();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  async function fetchOk(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response;
  }

  // The large files (ONNX graphs, the wasm runtime) are stored gzipped (NAME.gz): inflated here by the browser's own
  // DecompressionStream, unless the host already did (a gzip stream starts with the bytes 1f 8b).
  async function fetchBytes(url) {
    const raw = new Uint8Array(await (await fetchOk(url)).arrayBuffer());
    if (!url.endsWith(".gz") || raw[0] !== 0x1f || raw[1] !== 0x8b) return raw;
    const inflated = new Blob([raw]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(inflated).arrayBuffer());
  }

  async function configureRuntime(space) {
    if (typeof ort === "undefined") throw new Error("ort/ort.wasm.min.js did not load");
    ort.env.wasm.wasmPaths = new URL("ort/", document.baseURI).href;  // the vendored files, never a CDN
    if (space.wasm) ort.env.wasm.wasmBinary = await fetchBytes(new URL(space.wasm, document.baseURI).href);
    // threads need cross-origin isolation (the Space's COOP/COEP headers); without it one thread
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(2, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = "error";
  }

  function modelFiles(name, entry) {
    const base = entry.folder.endsWith("/") ? entry.folder : entry.folder + "/";
    const url = (file) => new URL(base + file, document.baseURI).href;
    return {
      name,
      base,
      settings: null,
      url,
      json: async (file) => (await fetchOk(url(file))).json(),
      bytes: async (file) => fetchBytes(url(file)),
      session() {
        if (!sessions.has(name)) {
          sessions.set(name, (async () => {
            const graph = await this.bytes(entry.onnx);
            return ort.InferenceSession.create(graph, {executionProviders: ["wasm"], graphOptimizationLevel: "all"});
          })());
        }
        return sessions.get(name);
      },
    };
  }

  function softmax(logits, temperature) {
    const t = temperature || 1;
    let top = -Infinity;
    for (const z of logits) top = Math.max(top, z / t);
    const exps = Array.from(logits, (z) => Math.exp(z / t - top));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / total);
  }

  function argmax(values) {
    let best = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
  }

  const percent = (p) => `${Math.round(p * 100)}%`;

  function showTab(buttons, panels, index) {
    buttons.forEach((b, i) => b.setAttribute("aria-selected", String(i === index)));
    panels.forEach((p, i) => { p.hidden = i !== index; });
  }

  async function start() {
    const root = document.getElementById("fmhub-app");
    const status = document.getElementById("fmhub-status");
    let space;
    try {
      space = await (await fetchOk("space.json")).json();
      await configureRuntime(space);
    } catch (err) {
      status.textContent = `This page could not start: ${err.message}`;
      throw err;
    }
    const tabs = el("div", {class: "tabs", role: "tablist"});
    const buttons = [], panels = [], mounted = [];
    for (const [name, entry] of Object.entries(space.scenarios)) {
      const id = `tab-${name}`;
      const button = el("button", {role: "tab", id, "aria-controls": `panel-${name}`, text: entry.title});
      const panel = el("section", {role: "tabpanel", id: `panel-${name}`, "aria-labelledby": id,
                                   "data-scenario": name});
      button.addEventListener("click", () => showTab(buttons, panels, buttons.indexOf(button)));
      buttons.push(button);
      panels.push(panel);
      tabs.append(button);
      const mount = registry.get(name);
      if (!mount || !entry.folder) {
        panel.append(el("p", {class: "not-built", text: `${entry.title}: not built into this page yet.`}));
        continue;
      }
      const model = modelFiles(name, entry);
      mounted.push((async () => {
        model.settings = await model.json("settings.json");
        await mount(panel, model);
      })().catch((err) => {
        panel.append(el("p", {class: "error", text: `${entry.title} could not start: ${err.message}`}));
        console.error(err);
      }));
    }
    if (buttons.length > 1) root.append(tabs);
    root.append(...panels);
    showTab(buttons, panels, 0);
    status.textContent = "";
    await Promise.all(mounted);
  }

  window.fmhub = Object.assign(window.fmhub || {}, {
    register: (name, mount) => registry.set(name, mount),
    el, softmax, argmax, percent,
  });
  // resolves once every scenario's tab is drawn (models may still be loading: each scenario says when it is ready)
  window.fmhubStarted = new Promise((resolve, reject) => {
    document.addEventListener("DOMContentLoaded", () => start().then(resolve, reject));
  });
})();
