"""Static Hugging Face Spaces: the demo page runs the int8 ONNX models in the visitor's browser, with no server.

`build_static_space(scenario, folder)` writes a folder that any static web host serves as is:

    README.md                      the Spaces YAML (`sdk: static`, the Hub models it uses, COOP/COEP headers)
    index.html                     one tab per scenario (fmhub/static/index.html)
    space.json                     the scenarios in this build and where their model files are
    app/                           the page's scripts and stylesheet (fmhub/static/: common.js draws the tabs;
                                   wordpiece.js + chat.js, image.js + image_tab.js, voice.js + voice_tab.js)
    ort/                           onnxruntime-web's wasm backend, vendored from the npm package (.ci/install-web)
    models/<scenario>/onnx/....gz  the graph `--runtime onnx` serves (int8 unless the export refused it), gzipped
    models/<scenario>/settings.json, tokenizer.json, ...   labels, calibrated thresholds, preprocessing

Every visitor downloads the whole page before the first answer, and the Hub serves files as they are: the two large
kinds, the ONNX graphs and the wasm runtime, are stored gzip-compressed (`NAME.gz`) and inflated in the page by the
browser's own DecompressionStream. The runtime shrinks by three quarters, int8 graphs by 10-30 %.

Nothing on the page comes from another site (no CDN; a Content-Security-Policy says so too). A scenario is built
when its scripts are in fmhub/static/ (SCENARIO_SCRIPTS); with "all", a scenario without them gets a "not built" tab
and its model is neither trained nor copied. A model folder without an ONNX export is exported first (`fmhub.export`).
`deploy_static_space` builds into a temporary folder and uploads it as a static Space in one commit.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from fmhub.errors import FmhubError
from fmhub.hubids import check_repo_id, is_hub_id
from fmhub.model_folder import ModelFolder, OutputFolder, write_errors
from fmhub.registry import list_scenarios, scenario_class

ALL = "all"
STATIC_ASSETS = Path(__file__).resolve().parent / "static"
# a scenario's scripts, in load order after common.js; it is built when all of them are in fmhub/static/
SCENARIO_SCRIPTS = {
    "customer-service": ("wordpiece.js", "chat.js"),
    "medical-image": ("image.js", "image_tab.js"),
    "voice-command": ("voice.js", "voice_tab.js"),
}
SHELL_FILES = ("common.js", "style.css")
ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.31.1"  # keep in step with .ci/install-web
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # wasm backend only
ORT_WEB_BINARY = "ort-wasm-simd-threaded.wasm"  # stored gzipped; the page hands it to ort as env.wasm.wasmBinary
GZIP = ".gz"
INSTALL_HINT = (f"bash .ci/install-web (or: npm install --prefix ~/.local/share/fmhub "
                f"{ORT_WEB_PACKAGE}@{ORT_WEB_VERSION})")
# image.js and voice.js read their preprocessing from settings.json: these fmhub.static_assets functions write it
BROWSER_CONFIGS = {"medical-image": "image_preprocessing_config", "voice-command": "voice_features_config"}
# static Spaces may set these headers: cross-origin isolation gives the wasm backend its threads
SPACE_HEADERS = {"cross-origin-embedder-policy": "require-corp", "cross-origin-opener-policy": "same-origin",
                 "cross-origin-resource-policy": "cross-origin"}


# -- the JavaScript runtime --------------------------------------------------------------------------------------
def node_modules() -> Path:
    """Where .ci/install-web puts npm packages: FMHUB_NODE_MODULES, else ${FMHUB_NODE_PREFIX:-~/.local/share/fmhub}/
    node_modules (the GnuSpeech voices live there too)."""
    if os.environ.get("FMHUB_NODE_MODULES"):
        return Path(os.environ["FMHUB_NODE_MODULES"]).expanduser()
    prefix = os.environ.get("FMHUB_NODE_PREFIX") or Path.home() / ".local" / "share" / "fmhub"
    return Path(prefix).expanduser() / "node_modules"


def ort_web_dist() -> Path:
    """onnxruntime-web's dist/ folder, checked: the files the page loads and the version the page was written for."""
    package = node_modules() / ORT_WEB_PACKAGE
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise FmhubError(f"static Spaces need {ORT_WEB_PACKAGE} (npm), not found in {package.parent}; install it "
                         f"with `{INSTALL_HINT}`") from None
    if version != ORT_WEB_VERSION:
        raise FmhubError(f"{package} is {ORT_WEB_PACKAGE} {version}; static Spaces are built with {ORT_WEB_VERSION}: "
                         f"`{INSTALL_HINT}`")
    missing = [name for name in ORT_WEB_FILES if not (package / "dist" / name).is_file()]
    if missing:
        raise FmhubError(f"{package} lacks {', '.join(missing)} (a broken install?); reinstall with `{INSTALL_HINT}`")
    return package / "dist"


# -- which scenarios, which models -------------------------------------------------------------------------------
def has_page(scenario: str) -> bool:
    """Whether fmhub/static/ holds the scenario's scripts (and, for image and voice, fmhub.static_assets exists)."""
    scripts = SCENARIO_SCRIPTS.get(scenario)
    if scenario in BROWSER_CONFIGS and not (Path(__file__).resolve().parent / "static_assets.py").is_file():
        return False  # image.js and voice.js come with the module that writes their settings
    return bool(scripts) and all((STATIC_ASSETS / name).is_file() for name in scripts)


def _scenarios(scenario: str) -> list[str]:
    if scenario == ALL:
        return list_scenarios()
    scenario_class(scenario)  # an unknown name fails here, with the registered ones listed
    if not has_page(scenario):
        raise FmhubError(f"no static page for {scenario} yet (fmhub/static/ lacks "
                         f"{', '.join(SCENARIO_SCRIPTS.get(scenario, ('its script',)))}); build --scenario all for a "
                         "page with a placeholder tab, or a Gradio Space without --static")
    return [scenario]


def _check_models(models: dict[str, str | None] | None, scenarios: list[str]) -> dict[str, str | None]:
    models = dict(models or {})
    unknown = sorted(set(models) - set(scenarios))
    if unknown:
        raise FmhubError(f"models given for {', '.join(unknown)}, which this build does not hold "
                         f"({', '.join(scenarios)})")
    return models


def _model_folder(scenario: str, ref: str | None, scratch: Path) -> Path:
    """A local folder with the ONNX graph `--runtime onnx` serves: exported when missing. A Hub download is exported
    in a copy (the Hub cache is never written); a local folder or the cached default in place, as `fmhub export`."""
    from fmhub.defaults import model_folder_for
    from fmhub.onnx_runtime import ONNX_DIR, serving_file

    folder = model_folder_for(ref, scenario)
    if serving_file(folder).is_file():
        return folder
    from fmhub.export import export_model

    if is_hub_id(ref):
        copy = scratch / scenario
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(ONNX_DIR, ".fmhub-*"))
        folder = copy
    print(f"fmhub: {scenario}: no ONNX export in {folder}; exporting it (int8)...", file=sys.stderr)
    export_model(folder, log=lambda line: print(f"fmhub: {line}", file=sys.stderr))
    if not serving_file(folder).is_file():  # pragma: no cover - export_model raises when it cannot write a graph
        raise FmhubError(f"the ONNX export of {folder} wrote no graph to serve")
    return folder


# -- what each page reads ----------------------------------------------------------------------------------------
def _base_settings(scenario: str, manifest: dict) -> dict:
    cls = scenario_class(scenario)
    settings = {"scenario": scenario, "title": cls.title, "description": cls.description, "notice": cls.notice,
                "label_names": manifest.get("label_names"), "temperature": float(manifest.get("temperature", 1.0))}
    if not settings["label_names"]:
        raise FmhubError(f"the {scenario} model has no label_names in its fmhub.json; retrain it with fmhub")
    return settings


def _wordpiece_settings(folder: Path, target: Path) -> dict:
    """The tokenizer's options for wordpiece.js, and its tokenizer.json written to `target`; only BERT WordPiece
    tokenizers are done in the browser so far."""
    from fmhub.registry import get_scenario

    tokenizer, config = get_scenario("customer-service").load_processor(folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FmhubError(f"{folder} has no fast tokenizer (tokenizer.json), which the static page reads; save the "
                         "model with a fast tokenizer, or deploy a Gradio Space (without --static)")
    spec = json.loads(backend.to_str())
    kinds = ((spec.get("model") or {}).get("type"), (spec.get("normalizer") or {}).get("type"),
             (spec.get("pre_tokenizer") or {}).get("type"))
    if kinds != ("WordPiece", "BertNormalizer", "BertPreTokenizer"):
        raise FmhubError(f"the static page tokenizes like BERT (WordPiece, BertNormalizer, BertPreTokenizer); this "
                         f"model's tokenizer is {'/'.join(str(k) for k in kinds)}: deploy a Gradio Space instead "
                         "(without --static)")
    probe = tokenizer("a")["input_ids"]
    if probe[0] != tokenizer.cls_token_id or probe[-1] != tokenizer.sep_token_id:
        raise FmhubError(f"{folder}'s tokenizer does not frame messages as [CLS] ... [SEP] as the static page does")
    normalizer, model = spec["normalizer"], spec["model"]
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    # the predictor truncates to min(model_max_length, 512); the position table is a hard limit of the graph
    max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    max_length = min(max_length, int(getattr(config, "max_position_embeddings", max_length) or max_length))
    (target / "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
    return {
        "file": "tokenizer.json",
        "clean_text": bool(normalizer.get("clean_text", True)),
        "handle_chinese_chars": bool(normalizer.get("handle_chinese_chars", True)),
        "strip_accents": lowercase if strip is None else bool(strip),  # None: as lowercase says (BertNormalizer)
        "lowercase": lowercase,
        "unk_token": model.get("unk_token", "[UNK]"),
        "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
        "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
        "cls_token": tokenizer.cls_token,
        "sep_token": tokenizer.sep_token,
        "special_tokens": sorted(t["content"] for t in spec.get("added_tokens", [])
                                 if t.get("special") and not t.get("normalized")),
        "max_length": max_length,
    }


def _chat_settings(folder: Path, manifest: dict, target: Path) -> dict:
    """What chat.js needs to decide as fmhub/predictors/text.py does."""
    from fmhub.ood import STATS_FILE
    from fmhub.predictors.text import EMPTY_MESSAGE, HANDOFF_MESSAGE, MAX_TEXT_CHARS

    settings = _base_settings("customer-service", manifest)
    settings.update({
        "oos_threshold": float(manifest.get("oos_threshold", 0.0)),
        "faq": manifest.get("faq") or {},
        "handoff_message": HANDOFF_MESSAGE,
        "empty_message": EMPTY_MESSAGE,
        "max_text_chars": MAX_TEXT_CHARS,
        "tokenizer": _wordpiece_settings(folder, target),
        "ood_threshold": None,
        "distance_file": None,
    })
    if "ood_threshold" in manifest and (folder / STATS_FILE).is_file():  # as the predictor: both or no distance
        shutil.copy2(folder / STATS_FILE, target / STATS_FILE)
        settings.update(ood_threshold=float(manifest["ood_threshold"]), distance_file=STATS_FILE)
    return settings


def _browser_config_settings(scenario: str) -> Callable[[Path, dict, Path], dict]:
    """settings.json of the image and voice pages: fmhub.static_assets' config of the folder, which image.js and
    voice.js take as it is, with the tab's title and description."""

    def write(folder: Path, manifest: dict, target: Path) -> dict:
        from fmhub import static_assets

        config = getattr(static_assets, BROWSER_CONFIGS[scenario])(folder)
        return {**_base_settings(scenario, manifest), **config}

    return write


SETTINGS_WRITERS: dict[str, Callable[[Path, dict, Path], dict]] = {
    "customer-service": _chat_settings,
    **{scenario: _browser_config_settings(scenario) for scenario in BROWSER_CONFIGS},
}


def copy_gzipped(source: Path, target_dir: Path) -> str:
    """`source` gzip-compressed into `target_dir` as NAME.gz; returns that name. Deterministic (no file name or time
    in the header), so a rebuild uploads nothing new."""
    name = source.name + GZIP
    with open(source, "rb") as src, open(target_dir / name, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return name


def _write_model(scenario: str, folder: Path, target: Path) -> str:
    """The served graph, settings.json and preprocessing files under `target`; returns the graph's relative path."""
    from fmhub.onnx_runtime import ONNX_DIR, serving_file

    graph = serving_file(folder)
    (target / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    stored = copy_gzipped(graph, target / ONNX_DIR)
    settings = SETTINGS_WRITERS[scenario](folder, ModelFolder(folder).read(), target)
    settings["onnx"] = f"{ONNX_DIR}/{stored}"
    (target / "settings.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return settings["onnx"]


# -- the page and its card ---------------------------------------------------------------------------------------
def _title(scenarios: list[str]) -> str:
    return scenario_class(scenarios[0]).title if len(scenarios) == 1 else "fmhub demo hub"


def static_readme(scenarios: list[str], models: dict[str, str | None]) -> str:
    """README.md with the static Spaces YAML; `models:` lists the Hub ids (a local folder is no Hub model)."""
    classes = [scenario_class(s) for s in scenarios]
    licenses = {cls.license for cls in classes}
    short = classes[0].description if len(classes) == 1 else "fmhub demos whose models run in your browser"
    meta = {
        "title": _title(scenarios), "emoji": classes[0].emoji if len(classes) == 1 else "🤗", "colorFrom": "indigo",
        "colorTo": "blue", "sdk": "static", "app_file": "index.html", "pinned": False,
        "license": licenses.pop() if len(licenses) == 1 else "other", "short_description": short,
        "tags": ["fmhub", "onnx", "static", *scenarios], "custom_headers": dict(SPACE_HEADERS),
    }
    hub_models = [ref for s in scenarios if is_hub_id(ref := models.get(s))]
    if hub_models:
        meta["models"] = hub_models
    notices = "".join(f"\n**{cls.notice}**\n" for cls in classes if cls.notice)
    lines = [f"- {cls.title}: {_model_link(models.get(s)) if has_page(s) else 'not built into this page yet'}"
             for s, cls in zip(scenarios, classes)]
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n# {meta['title']}\n\n{short}.\n"
            f"{notices}\nBuilt with fmhub: a static page whose int8 ONNX models run in the visitor's browser with "
            f"ONNX Runtime Web {ORT_WEB_VERSION} (WebAssembly), vendored here: no server, and nothing is sent to "
            "another site.\n\n" + "\n".join(lines) + "\n")


def _model_link(ref: str | None) -> str:
    if is_hub_id(ref):
        return f"[{ref}](https://huggingface.co/{ref})"
    return "a local model folder" if ref else "the fmhub embedded default"


def _index_html(title: str, scripts: list[str]) -> str:
    template = (STATIC_ASSETS / "index.html").read_text(encoding="utf-8")
    tags = "\n".join(f'<script src="app/{name}" defer></script>' for name in scripts)
    return template.replace("{{title}}", html.escape(title)).replace("{{scripts}}", tags)


def _clear_previous_build(folder: Path) -> None:
    """Rebuilding an fmhub-owned folder: what the last build wrote goes first, so no scenario or file lingers."""
    for name in ("app", "ort", "models"):
        shutil.rmtree(folder / name, ignore_errors=True)


def build_static_space(scenario: str, folder: Path, models: dict[str, str | None] | None = None,
                       overwrite: bool = False) -> Path:
    """Write the static Space of `scenario` (or "all") to `folder`; `models` maps scenario -> model folder or Hub id
    (missing or None: the cached embedded default, fine-tuned on first use). Returns the folder.

    A non-empty folder fmhub did not create is refused (nothing written) unless `overwrite`.
    """
    scenarios = _scenarios(scenario)
    models = _check_models(models, scenarios)
    dist = ort_web_dist()
    target = OutputFolder(folder)
    target.check_writable(overwrite)
    folder = target.path
    with tempfile.TemporaryDirectory(prefix="fmhub-static-") as scratch:
        built = {s: _model_folder(s, models.get(s), Path(scratch)) for s in scenarios if has_page(s)}
        with write_errors(f"the static Space folder {folder}"):
            owned = target.is_owned()
            target.claim()
            if owned:
                _clear_previous_build(folder)
            (folder / "app").mkdir(exist_ok=True)
            (folder / "ort").mkdir(exist_ok=True)
            for name in ORT_WEB_FILES:
                if name == ORT_WEB_BINARY:
                    copy_gzipped(dist / name, folder / "ort")
                else:
                    shutil.copy2(dist / name, folder / "ort" / name)
            (folder / "ort" / "NOTICE.txt").write_text(
                f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION} (npm), MIT License, Copyright (c) Microsoft Corporation.\n")
            scripts = []
            for name in SHELL_FILES + tuple(f for s in built for f in SCENARIO_SCRIPTS[s]):
                shutil.copy2(STATIC_ASSETS / name, folder / "app" / name)
                if name.endswith(".js") and name != "common.js":
                    scripts.append(name)
            entries = {}
            for s in scenarios:
                entry = {"title": scenario_class(s).title, "folder": None, "onnx": None,
                         "model": models.get(s) if is_hub_id(models.get(s)) else None}
                if s in built:
                    entry["folder"] = f"models/{s}/"
                    entry["onnx"] = _write_model(s, built[s], folder / "models" / s)
                entries[s] = entry
            space = {"format": 1, "onnxruntime_web": ORT_WEB_VERSION, "wasm": f"ort/{ORT_WEB_BINARY}{GZIP}",
                     "scenarios": entries}
            (folder / "space.json").write_text(json.dumps(space, indent=2) + "\n", encoding="utf-8")
            (folder / "index.html").write_text(_index_html(_title(scenarios), scripts), encoding="utf-8")
            (folder / "README.md").write_text(static_readme(scenarios, models), encoding="utf-8")
    return folder


def folder_size(folder: Path) -> int:
    """Bytes of the files a deploy uploads (fmhub's own marker aside)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".fmhub-"))


# -- deploy --------------------------------------------------------------------------------------------------------
def deploy_static_space(scenario: str, space_id: str, models: dict[str, str | None] | None = None,
                        private: bool = False) -> str:
    """Build the static Space, create the Space repo (static SDK) and upload the folder in one commit; returns the
    Space's URL. Local model folders are fine here: their files go into the Space itself."""
    from huggingface_hub import HfApi

    from fmhub.hub import hub_token, publish_space

    check_repo_id(space_id, "Space id")
    for ref in (models or {}).values():
        if ref is not None and not Path(ref).expanduser().exists():
            check_repo_id(ref, "model id")
    token = hub_token()
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="fmhub-static-space-") as tmp:
        folder = build_static_space(scenario, Path(tmp) / "space", models)
        publish_space(api, token, space_id, folder, "static", f"Deploy fmhub {scenario} static Space", private)
    return f"{api.endpoint}/spaces/{space_id}"
