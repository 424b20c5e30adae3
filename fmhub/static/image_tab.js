/* fmhub static Space, medical-image tab: pick an image, the model classifies it in the browser.
 *
 * The preprocessing and the decision are image.js's (`window.FmhubImage`: timm's eval transform as Pillow does it,
 * the calibrated softmax); this file only draws the tab. settings.json is image.js's config (written by the builder
 * from `fmhub.static_assets.image_preprocessing_config`) plus the tab's title and description.
 * `window.fmhubClassifyImage({data, width, height})` (RGBA bytes) returns what image.js's classify returns;
 * `window.fmhubClassifyImageBytes(bytes, mime)` (a file's bytes: a Uint8Array or base64) decodes them as an upload
 * does (an <img> from a blob URL, drawn onto a canvas by image.js) and returns the same.
 */
"use strict";

(function () {
  const {el, percent} = window.fmhub;

  function render(box, result) {
    box.replaceChildren(
      el("p", {class: "verdict", text: `${result.label} (${percent(result.score)})`}),
      el("ul", {class: "scores"}, ...Object.entries(result.scores)
        .sort((a, b) => b[1] - a[1])
        .map(([label, p]) => el("li", {text: `${label}: ${percent(p)}`}))));
    box.dataset.label = result.label;
  }

  // a file's bytes as a Uint8Array, or base64 (what a test can pass through Playwright's evaluate)
  const asBytes = (bytes) => (typeof bytes === "string" ? Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0)) : bytes);

  window.fmhub.register("medical-image", async (panel, model) => {
    const s = model.settings;
    const notice = el("p", {id: "mi-notice", class: "notice", text: s.notice || ""});
    const input = el("input", {id: "mi-file", type: "file", accept: "image/*", "aria-label": "Image"});
    const preview = el("img", {id: "mi-preview", alt: "", hidden: ""});
    const result = el("div", {id: "mi-result", class: "result", "aria-live": "polite"});
    const status = el("p", {id: "mi-status", class: "status", text: "Loading the model in your browser…"});
    panel.append(el("p", {class: "caption", text: s.description}), notice, input, preview, result, status);
    const session = model.session();
    const classify = async (image) => window.FmhubImage.classify(await session, image, s);
    window.fmhubClassifyImage = classify;
    // the upload's path: the browser decodes the file into `image` (the preview, or a detached <img>), then classify
    const classifyBlob = async (blob, image = new Image()) => {
      const url = URL.createObjectURL(blob);
      image.src = url;
      await image.decode();
      return classify(image);
    };
    window.fmhubClassifyImageBytes = async (bytes, mime) => {
      const image = new Image();
      try {
        return await classifyBlob(new Blob([asBytes(bytes)], {type: mime || ""}), image);
      } finally {
        URL.revokeObjectURL(image.src);
      }
    };
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (!file) return;
      input.disabled = true;
      result.replaceChildren(el("p", {class: "status", text: "Classifying…"}));
      delete result.dataset.label;
      try {
        if (preview.src) URL.revokeObjectURL(preview.src);
        preview.hidden = false;
        render(result, await classifyBlob(file, preview));
      } catch (err) {
        result.replaceChildren(el("p", {class: "error", text: `This image could not be classified: ${err.message}`}));
        console.error(err);
      } finally {
        input.disabled = false;
      }
    });
    await session;
    status.textContent = "The model runs in your browser: the image never leaves this page.";
  });
})();
