"""Hugging Face Hub integration: model cards, resolving a folder or Hub id, pushing a saved folder."""

from __future__ import annotations

import contextlib
import json
import logging
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
    elif path.exists():
        raise FmhubError(f"{ref} is a file; --model wants a saved model folder or a Hub id user/name")
    elif not REPO_ID.match(ref):
        raise FmhubError(f"model not found: {ref!r} is neither a folder nor a Hub id of the form user/name")
    else:
        path = download_model(ref)
    extras = path / "fmhub.json"
    trained_for = json.loads(extras.read_text()).get("scenario") if extras.is_file() else None
    if trained_for and trained_for != scenario:
        raise FmhubError(f"{ref} is a {trained_for} model, not a {scenario} one; pick --scenario {trained_for}")
    return path


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """The Hub repo's files, through huggingface_hub's cache (`HF_HOME`); `HF_HUB_OFFLINE=1` uses the cache only."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RepositoryNotFoundError:
        raise FmhubError(f"Hub model {repo_id!r} does not exist (or is private and your token cannot read it); "
                         "check the id, or pass a local folder") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FmhubError(f"Hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE=1 is set; "
                             "download it once online, or pass a local folder") from None
        raise FmhubError(f"Hub model {repo_id!r} is not in the local cache and the Hub ({constants.ENDPOINT}) "
                         "is unreachable; try again online, or pass a local folder") from None
    except HfHubHTTPError as err:
        raise FmhubError(f"downloading {repo_id!r} failed: {_hub_error(err)}") from None
    except OSError as err:
        raise FmhubError(f"downloading {repo_id!r} failed: {_redact(str(err))}") from None


def _redact(text: str, token: str | None = None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", text)


def _hub_error(err: Exception, token: str | None = None) -> str:
    """One line for a failed Hub call: HTTP errors by status, connection errors by kind. Never the token."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        if status == 401:
            return "the Hub refused the token (HTTP 401); check HF_TOKEN or run `hf auth login`"
        if status == 403:
            return "this token may not write there (HTTP 403); use your own namespace or an organisation you belong to"
        if status >= 500:
            return f"the Hub is unavailable (HTTP {status})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return _redact(f"HTTP {status}: {first}", token)
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return _redact(f"could not reach the Hub ({type(err).__name__}{': ' + detail if detail else ''})", token)


# -- model cards ---------------------------------------------------------------------------------------------------
REPO_PLACEHOLDER = "USER/NAME"  # the card's load snippets; `push_model` puts the real repo id in the uploaded copy
CLINICAL_WARNING = (
    "**Not for clinical use.** This model is a research and education demo. It is not a medical device, has not "
    "been clinically validated, and must not be used to diagnose, treat, triage or screen patients."
)
# all_results.json key -> (metric type as the Hub's `evaluate` ids, its config) for the card's model-index
CARD_METRICS = {
    "accuracy": ("accuracy", None), "macro_f1": ("f1", "macro"), "macro_precision": ("precision", "macro"),
    "macro_recall": ("recall", "macro"), "roc_auc": ("roc_auc", "macro, one-vs-rest"), "ece": ("ece", None),
}
_RUN_KEYS = ("num_examples", "train_seconds", "train_steps", "num_processes")


def is_hub_id(ref: str | None) -> bool:
    """`user/name` that is not a local path: what the Hub's metadata (`base_model`, `datasets`, `models`) accepts."""
    return bool(ref) and bool(REPO_ID.match(ref)) and not Path(ref).expanduser().exists()


def write_model_card(folder: Path, scenario, config, results: dict, extras: dict) -> None:
    """README.md: YAML metadata (model-index = the test metrics of all_results.json) and readable sections.

    `scenario.card_info(data)` supplies the facts only the scenario knows: `license`, `datasets` (Hub ids; local paths
    stay out of the metadata), `data_description`, `intended_use`, `limitations`, optionally `citation` (BibTeX of the
    data set), `base_model` (overrides the backbone, None for a backbone that is not on the Hub) and
    `clinical_warning` (True, or the warning's text: a not-for-clinical-use block at the top of the card).
    """
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = scenario.card_info(config.data)
    name = Path(config.output_dir).name if config.output_dir else f"fmhub-{scenario.name}"
    dataset_name = config.data or f"fmhub embedded {scenario.name} data"
    eval_results = [
        EvalResult(task_type=scenario.pipeline_tag, dataset_type=config.data or f"fmhub/{scenario.name}-embedded",
                   dataset_name=dataset_name, dataset_split="test", metric_type=kind, metric_config=metric_config,
                   metric_name=key, metric_value=float(results[key]))
        for key, (kind, metric_config) in CARD_METRICS.items() if results.get(key) is not None
    ]
    backbone = info["base_model"] if "base_model" in info else extras.get("backbone")
    if backbone in scenario.local_backbones:
        backbone = None
    warning = info.get("clinical_warning")
    warning_text = warning if isinstance(warning, str) else CLINICAL_WARNING
    tags = ["fmhub", scenario.name, scenario.modality] + (["not-for-clinical-use"] if warning else [])
    data = ModelCardData(
        library_name=scenario.library_name, pipeline_tag=scenario.pipeline_tag, license=info.get("license"),
        tags=tags, datasets=[d for d in info.get("datasets") or [] if is_hub_id(d)] or None,
        base_model=backbone if is_hub_id(backbone) else None, model_name=name, eval_results=eval_results,
    )
    warning_block = f"> [!WARNING]\n> {warning_text}\n\n" if warning else ""
    source = f"from `{extras['backbone']}`" if extras.get("backbone") else "from a backbone built locally"
    scalar = {k: v for k, v in results.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _RUN_KEYS}
    metric_rows = "\n".join(f"| {k} | {_number(v)} |" for k, v in scalar.items())
    per_class = results.get("per_class") or {}
    specificity = bool(per_class) and all("specificity" in m for m in per_class.values())
    spec_head, spec_rule = (" specificity |", "---|") if specificity else ("", "")
    per_class_rows = "\n".join(
        f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |"
        + (f" {m['specificity']:.3f} |" if specificity else "") + f" {m['support']} |"
        for label, m in per_class.items()
    )
    calibration = (f"\nCalibration: expected calibration error {results['ece']:.4f} (15 bins"
                   + (", see `reliability_diagram.png`).\n\n![reliability diagram](reliability_diagram.png)\n"
                      if (Path(folder) / "reliability_diagram.png").is_file() else ").\n")
                   if results.get("ece") is not None else "")
    run_config = {k: v for k, v in config.to_dict().items()
                  if v is not None and k not in ("output_dir", "push_to_hub", "hub_repo_id", "hub_private")}
    citation = f"\n\nThe data:\n\n```bibtex\n{info['citation'].strip()}\n```" if info.get("citation") else ""
    content = f"""---
{data.to_yaml()}
---

# {name}

{warning_block}Fine-tuned with fmhub for the **{scenario.name}** scenario
({scenario.modality}, {scenario.pipeline_tag}), {source}.

## Intended use and limits
{info.get('intended_use', '')}

{info.get('limitations', '')}
{f"{chr(10)}{warning_text}{chr(10)}" if warning else ""}
## Training data
{info.get('data_description', dataset_name)}

Labels: {', '.join(f'`{n}`' for n in extras['label_names'])}

## Training procedure
fmhub's Accelerate training loop, with this configuration (`train_config.yaml`):

```yaml
{yaml.safe_dump(run_config, sort_keys=False).strip()}
```

## Evaluation results
Held-out test split ({results.get('num_examples')} examples); the same numbers are in `all_results.json`:

| metric | value |
|---|---|
{metric_rows}

Per class:

| class | precision | recall | F1 |{spec_head} support |
|---|---|---|---|{spec_rule}---|
{per_class_rows}

![confusion matrix](confusion_matrix.png)
{calibration}
## How to use
```python
{_load_snippet(scenario)}
```

With fmhub (adds the scenario's post-processing):

```bash
fmhub predict --scenario {scenario.name} --model {REPO_PLACEHOLDER} --input-file in.jsonl --output out.jsonl
```

## Citation
```bibtex
@misc{{fmhub,
  title = {{fmhub: fine-tune foundation-model backbones and serve them as Gradio demos}},
  year = {{2026}}
}}
```{citation}
"""
    card = ModelCard(content)  # parses the YAML: a malformed card fails here, not on the Hub
    (Path(folder) / "README.md").write_text(str(card), encoding="utf-8")


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _load_snippet(scenario) -> str:
    if scenario.library_name == "timm":
        return (f'import timm\nmodel = timm.create_model("hf-hub:{REPO_PLACEHOLDER}", pretrained=True)\n'
                f'# or: transformers.pipeline("image-classification", model="{REPO_PLACEHOLDER}")')
    return (f'from transformers import pipeline\n'
            f'clf = pipeline("{scenario.pipeline_tag}", model="{REPO_PLACEHOLDER}")')


def card_summary(folder: Path) -> dict:
    """Name, data and test metrics for display in the app."""
    path = Path(folder) / "fmhub.json"
    extras = json.loads(path.read_text()) if path.is_file() else {}
    return {"backbone": extras.get("backbone"), "data": extras.get("data") or "embedded default",
            "test_metrics": extras.get("test_metrics", {})}


# run by-products that never go to the Hub: checkpoints (optimizer state, pickles), best-weights copy, TensorBoard logs
UPLOAD_IGNORE = ["checkpoint-*", ".tmp-*", ".old-*", "best_model.safetensors", "runs/*", "*.tmp"]


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise FmhubError(f"invalid {what} {repo_id!r}: use user/name (letters, digits, '-', '_', '.')")


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
    try:
        extras = json.loads((folder / "fmhub.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FmhubError(f"{folder}: fmhub.json or config.json is not valid JSON ({err})") from None
    names = list(extras.get("label_names") or [])
    if "id2label" in config:
        id2label = {str(k): v for k, v in config["id2label"].items()}
        if id2label != {str(i): n for i, n in enumerate(names)}:
            raise FmhubError(f"label maps disagree: config.json id2label {list(id2label.values())[:4]}... vs "
                             f"fmhub.json label_names {names[:4]}...; re-save the model with fmhub")
        label2id = config.get("label2id", {})
        if {k: int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
            raise FmhubError("label maps disagree: config.json label2id is not the inverse of id2label")
    if "label_names" in config and list(config["label_names"]) != names:
        raise FmhubError("label maps disagree: config.json label_names differs from fmhub.json")
    if not names or any(re.fullmatch(r"LABEL_\d+", str(n)) for n in names):
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


def upload_operations(folder: Path, repo_id: str) -> list:
    """One commit's files: the folder minus UPLOAD_IGNORE, the card's USER/NAME replaced by `repo_id`."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    operations = []
    for rel in filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE + DEFAULT_IGNORE_PATTERNS):
        content = str(folder / rel)
        if rel == "README.md":
            content = (folder / rel).read_text(encoding="utf-8").replace(REPO_PLACEHOLDER, repo_id).encode()
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
    return operations


def push_model(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """create_repo(exist_ok=True) + one commit of the folder, after checking the repo id, labels, weights, token.

    The local folder is only read. A failed push changes nothing on the Hub either (the commit is one request), so
    re-running the same command is the retry.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    folder = Path(folder)
    check_label_maps(folder)
    check_weights_finite(folder)
    token = hub_token()
    api = HfApi(token=token)
    operations = upload_operations(folder, repo_id)
    try:
        with quiet_hub_logs():
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.create_commit(repo_id, operations, revision=revision,
                                     commit_message=f"Upload {folder.name} (fine-tuned with fmhub)")
    except Exception as err:
        reason = describe_hub_failure(err, token)
        if reason is None:
            raise
        raise FmhubError(f"push to {repo_id} failed: {reason}; the local folder is unchanged, retry with "
                         f"`fmhub push --model {folder} --repo-id {repo_id}`") from None
    return getattr(info, "commit_url", None) or f"{api.endpoint}/{repo_id}"


@contextlib.contextmanager
def quiet_hub_logs():
    """huggingface_hub's retry and "nothing changed" warnings off: a push or deploy ends with one line of its own."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def describe_hub_failure(err: Exception, token: str | None = None) -> str | None:
    """One line for an error from the Hub or the network; None for anything else (a bug: let it raise)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return _hub_error(err, token)
    if isinstance(err, ValueError) and "metadata" in str(err):  # the Hub's /api/validate-yaml refused the card
        return _redact(" ".join(str(err).split()), token)
    if isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests"):
        return _hub_error(err, token)
    return None
