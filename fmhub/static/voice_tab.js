/* fmhub static Space, voice-command tab: pick a recording, the keyword spotter listens to it in the browser.
 *
 * Decoding, features and the detector are voice.js's (`window.FmhubVoice`: WebAudio decode at 16 kHz, Whisper
 * log-mel, sliding windows, calibrated threshold); this file only draws the tab. settings.json is voice.js's config
 * (written by the builder from `fmhub.static_assets.voice_features_config`) plus the tab's title and description.
 * `window.fmhubClassifyAudio(samples)` (16 kHz mono numbers) returns what voice.js's classify returns;
 * `window.fmhubClassifyAudioBytes(bytes)` (a file's bytes: a Uint8Array or base64) decodes them as an upload does
 * (WebAudio, to 16 kHz mono) and returns the same.
 */
"use strict";

(function () {
  const {el, percent} = window.fmhub;

  function render(box, result, settings) {
    const heard = result.command ? `Heard “${result.command}” (${percent(result.score)})`
      : result.label === settings.silence_label ? "Silence: no command heard"
        : `No command heard (closest: ${result.label}, ${percent(result.score)})`;
    box.replaceChildren(
      el("p", {class: "verdict", text: heard}),
      el("p", {class: "status", text: `${result.duration.toFixed(2)} s of audio, ${result.windows} window(s)`}));
    box.dataset.label = result.label;
    box.dataset.command = result.command || "";
  }

  // a file's bytes as a Uint8Array, or base64 (what a test can pass through Playwright's evaluate)
  const asBytes = (bytes) => (typeof bytes === "string" ? Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0)) : bytes);

  window.fmhub.register("voice-command", async (panel, model) => {
    const s = model.settings;
    const input = el("input", {id: "vc-file", type: "file", accept: "audio/*", "aria-label": "Recording"});
    const player = el("audio", {id: "vc-player", controls: "", hidden: ""});
    const result = el("div", {id: "vc-result", class: "result", "aria-live": "polite"});
    const status = el("p", {id: "vc-status", class: "status", text: "Loading the model in your browser…"});
    panel.append(el("p", {class: "caption", text: s.description}), input, player, result, status);
    const session = model.session();
    const classify = async (samples) => window.FmhubVoice.classify(await session, Float32Array.from(samples), s);
    window.fmhubClassifyAudio = classify;
    // the upload's path: WebAudio decodes the file's bytes to 16 kHz mono, then classify
    const classifyBuffer = async (buffer) => classify(await window.FmhubVoice.decodeToMono16k(buffer));
    window.fmhubClassifyAudioBytes = async (bytes) => {
      const view = asBytes(bytes);
      return classifyBuffer(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
    };
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (!file) return;
      input.disabled = true;
      result.replaceChildren(el("p", {class: "status", text: "Listening…"}));
      delete result.dataset.label;
      try {
        if (player.src) URL.revokeObjectURL(player.src);
        player.src = URL.createObjectURL(file);
        player.hidden = false;
        render(result, await classifyBuffer(await file.arrayBuffer()), s);
      } catch (err) {
        result.replaceChildren(el("p", {class: "error", text: `This recording could not be read: ${err.message}`}));
        console.error(err);
      } finally {
        input.disabled = false;
      }
    });
    await session;
    status.textContent = "The model runs in your browser: the recording never leaves this page.";
  });
})();
