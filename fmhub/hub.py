"""Hugging Face Hub integration: model cards, resolving a folder or Hub id, pushing a saved folder."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from fmhub.errors import FmhubError
from fmhub.paths import default_model_dir

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


# -- resolving models ----------------------------------------------------------------------------------------------
def ensure_default_model(scenario: str, progress=None) -> Path:
    """The cached fine-tuned embedded default of `scenario`; trained on first use."""
    folder = default_model_dir(scenario)
    if (folder / "fmhub.json").is_file():
        return folder
    from fmhub.config import resolve_config
    from fmhub.runner import train
    from fmhub.scenarios import get_scenario

    print(f"fmhub: no cached {scenario} model yet; fine-tuning the embedded default (one time)...", file=sys.stderr)
    config = resolve_config(get_scenario(scenario).defaults, {}, {"scenario": scenario, "report_to": "none"})
    return train(config, progress=progress)


def resolve_model(ref: str | None, scenario: str) -> Path:
    """A local folder for `ref`: None -> the cached default, a folder -> itself, `user/name` -> a Hub download."""
    if ref is None:
        return ensure_default_model(scenario)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "fmhub.json").is_file() and not (path / "config.json").is_file():
            raise FmhubError(f"{ref} is not a model folder (no fmhub.json or config.json)")
        return path
    if path.exists():
        raise FmhubError(f"{ref} is a file; --model wants a saved model folder or a Hub id user/name")
    if not REPO_ID.match(ref):
        raise FmhubError(f"model not found: {ref!r} is neither a folder nor a Hub id of the form user/name")
    return download_model(ref)


def download_model(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RepositoryNotFoundError:
        raise FmhubError(f"Hub model {repo_id!r} does not exist (or is private and no token was given)") from None
    except LocalEntryNotFoundError:
        raise FmhubError(f"Hub model {repo_id!r} is not in the local cache and the Hub is unreachable "
                         "(HF_HUB_OFFLINE=1 or no network)") from None
    except HfHubHTTPError as err:
        raise FmhubError(f"downloading {repo_id!r} failed: {_redact(str(err).splitlines()[0])}") from None
    except OSError as err:
        raise FmhubError(f"downloading {repo_id!r} failed: {_redact(str(err))}") from None


def _redact(text: str, token: str | None = None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", text)


# -- model cards ---------------------------------------------------------------------------------------------------
def write_model_card(folder: Path, scenario, config, results: dict, extras: dict) -> None:
    """README.md with YAML metadata (model-index with the test metrics) and readable sections."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = scenario.card_info(config.data)
    name = Path(config.output_dir).name if config.output_dir else f"fmhub-{scenario.name}"
    dataset_name = config.data or f"fmhub embedded {scenario.name} data"
    metric_keys = [k for k in ("accuracy", "macro_f1", "roc_auc", "ece") if results.get(k) is not None]
    eval_results = [
        EvalResult(task_type=scenario.pipeline_tag, dataset_type=config.data or f"fmhub/{scenario.name}-embedded",
                   dataset_name=dataset_name, dataset_split="test", metric_type=key,
                   metric_name=key, metric_value=round(float(results[key]), 6))
        for key in metric_keys
    ]
    base_model = extras.get("backbone")
    data = ModelCardData(
        library_name=scenario.library_name, pipeline_tag=scenario.pipeline_tag, license=info.get("license"),
        tags=["fmhub", scenario.name, scenario.modality], datasets=info.get("datasets") or None,
        base_model=base_model if base_model and REPO_ID.match(base_model) else None,
        model_name=name, eval_results=eval_results,
    )
    per_class = "\n".join(
        f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for label, m in results["per_class"].items()
    )
    metric_rows = "\n".join(f"| {k} | {float(v):.4f} |" for k, v in results.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("num_examples",))
    cfg = "\n".join(f"{k}: {v}" for k, v in config.to_dict().items() if v is not None and k != "hub_repo_id")
    load = _load_snippet(scenario)
    content = f"""---
{data.to_yaml()}
---

# {name}

Fine-tuned with fmhub for the **{scenario.name}** scenario
({scenario.modality}, {scenario.pipeline_tag}), from `{base_model}`.

## Intended use and limits
{info.get('intended_use', '')}

{info.get('limitations', '')}

## Training data
{info.get('data_description', dataset_name)}

Labels: {', '.join(f'`{n}`' for n in extras['label_names'])}

## Training procedure
fmhub's Accelerate training loop; the resolved configuration:

```yaml
{cfg}
```

## Test results
Held-out test split ({results.get('num_examples')} examples):

| metric | value |
|---|---|
{metric_rows}

Per class:

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

![confusion matrix](confusion_matrix.png)

Calibration: expected calibration error {results.get('ece', float('nan')):.4f}
(15 bins, see `reliability_diagram.png`).

## How to use
```python
{load}
```

## Citation
```bibtex
@misc{{fmhub,
  title = {{fmhub: fine-tune foundation-model backbones and serve them as Gradio demos}},
  year = {{2026}}
}}
```
"""
    card = ModelCard(content)  # parses the YAML: a malformed card fails here, not on the Hub
    (folder / "README.md").write_text(str(card), encoding="utf-8")


def _load_snippet(scenario) -> str:
    if scenario.library_name == "timm":
        return ('import timm\nmodel = timm.create_model("hf-hub:USER/NAME", pretrained=True)\n'
                '# or: transformers.pipeline("image-classification", model="USER/NAME")')
    return f'from transformers import pipeline\nclf = pipeline("{scenario.pipeline_tag}", model="USER/NAME")'


def card_summary(folder: Path) -> dict:
    """Name, data and test metrics for display in the app."""
    path = Path(folder) / "fmhub.json"
    extras = json.loads(path.read_text()) if path.is_file() else {}
    return {"backbone": extras.get("backbone"), "data": extras.get("data") or "embedded default",
            "test_metrics": extras.get("test_metrics", {})}


UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", ".tmp-*", ".tmp-*/**", "best_model.safetensors", "runs/**",
                 ".*.tmp"]


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise FmhubError(f"invalid repo id {repo_id!r}: use user/name (letters, digits, '-', '_', '.')")


def hub_token() -> str:
    """HF_TOKEN or the saved login; never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FmhubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again")
    return token


def check_label_maps(folder: Path) -> list[str]:
    """The label map must agree everywhere before anything is uploaded; returns the label names."""
    folder = Path(folder)
    if not (folder / "fmhub.json").is_file() or not (folder / "config.json").is_file():
        raise FmhubError(f"{folder} is not an fmhub model folder (needs fmhub.json and config.json); "
                         "train one with `fmhub train --output-dir ...`")
    extras = json.loads((folder / "fmhub.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    names = list(extras.get("label_names") or [])
    if "id2label" in config:
        id2label = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        label2id = config.get("label2id", {})
        if id2label != names:
            raise FmhubError(f"label maps disagree: config.json id2label {id2label[:4]}... vs fmhub.json {names[:4]}...")
        if {k: int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
            raise FmhubError("label maps disagree: config.json label2id is not the inverse of id2label")
    if "label_names" in config and list(config["label_names"]) != names:
        raise FmhubError("label maps disagree: config.json label_names differs from fmhub.json")
    if not names or any(re.fullmatch(r"LABEL_\d+", n) for n in names):
        raise FmhubError("the model has placeholder labels (LABEL_0, ...); give real label names before pushing")
    return names


def check_weights_finite(folder: Path) -> None:
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FmhubError(f"{folder} has no model.safetensors")
    import torch

    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            tensor = fh.get_tensor(key)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise FmhubError(f"refusing to push: weight {key} holds NaN/Inf values")


def push_model(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """create_repo(exist_ok=True) + upload_folder, after checking the repo id, token, labels and weights."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    folder = Path(folder)
    check_label_maps(folder)
    check_weights_finite(folder)
    token = hub_token()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message="Upload model trained with fmhub", ignore_patterns=UPLOAD_IGNORE)
    except HfHubHTTPError as err:
        raise FmhubError(f"push to {repo_id} failed: {_redact(str(err).splitlines()[0], token)} "
                         "(the local folder is unchanged; re-run to retry)") from None
    except (OSError, ConnectionError) as err:  # network errors, dropped connections
        raise FmhubError(f"push to {repo_id} failed: {_redact(type(err).__name__ + ': ' + str(err), token)} "
                         "(the local folder is unchanged; re-run to retry)") from None
    except Exception as err:  # httpx transport errors are not OSErrors
        if type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise FmhubError(f"push to {repo_id} failed: connection error ({type(err).__name__}); "
                             "the local folder is unchanged; re-run to retry") from None
        raise
    return getattr(info, "commit_url", None) or f"{api.endpoint}/{repo_id}"
