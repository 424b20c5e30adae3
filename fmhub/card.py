"""The model card: README.md with the Hub's YAML metadata (model-index = the test metrics) and readable sections."""

from __future__ import annotations

from pathlib import Path

from fmhub.hubids import is_hub_id

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
EXPORT_START, EXPORT_END = "<!-- fmhub:onnx -->", "<!-- /fmhub:onnx -->"


def export_section(report: dict) -> str:
    """The card's "ONNX export" section from `onnx/export.json` (`fmhub.export`)."""
    rows = []
    for name, info in report["files"].items():
        p = info["parity"]
        served = " (served by `--runtime onnx`)" if name == report.get("serve") else ""
        rows.append(f"| `onnx/{name}`{served} | {info['quantization']} | {info['bytes'] / 1e6:.1f} MB | "
                    f"{p['top_label_agreement']:.4f} | {p['max_probability_difference']:.4g} | "
                    f"{_number(p.get('accuracy_onnx'))} |")
    notes = "".join(f"\n- {n}" for n in report.get("notes") or [])
    return f"""{EXPORT_START}
## ONNX export
Exported with `torch.onnx` (opset {report['opset']}) and quantized with `onnxruntime.quantization`; parity with the
PyTorch model on {next(iter(report['files'].values()))['parity']['examples']} test examples
({report.get('parity_data')}):

| file | weights | size | top-label agreement | largest probability difference | accuracy |
|---|---|---|---|---|---|
{chr(10).join(rows)}
{notes}
```bash
fmhub predict --scenario {report['scenario']} --model {REPO_PLACEHOLDER} --runtime onnx \\
  --input-file in.jsonl --output out.jsonl
```
{EXPORT_END}
"""


def update_card_export(folder: Path, report: dict) -> None:
    """Put (or replace) the export section in the folder's README.md, before its citation."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if EXPORT_START in text and EXPORT_END in text:
        head, rest = text.split(EXPORT_START, 1)
        text = head + rest.split(EXPORT_END, 1)[1].lstrip("\n")
    section = export_section(report) + "\n"
    text = text.replace("## Citation", section + "## Citation", 1) if "## Citation" in text else text + "\n" + section
    path.write_text(text, encoding="utf-8")


def semi_supervised_section(report: dict | None) -> str:
    """The card's "Semi-supervised training" section, from all_results.json's `semi_supervised`."""
    if not report:
        return ""
    share = report.get("labels_per_class")
    labelled = f"{report['labelled_examples']} labelled training examples" + (
        f" ({_number(share) if share < 1 else int(share)} per class; the rest of the training split used as "
        "unlabelled)" if share else "")
    rows = "\n".join(
        f"| {r['round']} | {r['pool']} | {r['taken']} | "
        + ", ".join(f"{k}: {v}" for k, v in r["pseudo_labels_per_class"].items())
        + f" | {_pseudo_label_accuracy(r)} | "
        f"{_number(r['teacher_test_accuracy']) if r.get('teacher_test_accuracy') is not None else ''} |"
        for r in report.get("rounds") or []
    )
    head = ("| round | unlabelled pool | pseudo-labels taken | per class | pseudo-label accuracy | previous round's "
            "test accuracy |\n|---|---|---|---|---|---|")
    table = f"\n{head}\n{rows}\n" if rows else ""
    skipped = (f" {report['skipped_unreadable']} unreadable unlabelled example(s) were skipped."
               if report.get("skipped_unreadable") else "")
    given = report.get("unlabeled_data")
    source = f"(with `--unlabeled-data {given}`)" if given else "(from the training split)"
    return f"""
## Semi-supervised training
Method: {report['method']}. Trained on {labelled} and an unlabelled pool of {report['unlabeled_pool']} examples
{source}.{skipped} Validation and test data were never pseudo-labelled.
{table}"""


def write_model_card(folder: Path, scenario, config, results: dict, manifest: dict) -> None:
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
    backbone = info["base_model"] if "base_model" in info else manifest.get("backbone")
    if backbone in scenario.local_backbones:
        backbone = None
    warning = info.get("clinical_warning")
    warning_text = warning if isinstance(warning, str) else CLINICAL_WARNING
    tags = ["fmhub", scenario.name, scenario.modality] + (["not-for-clinical-use"] if warning else [])
    data = ModelCardData(
        library_name=scenario.library_name, pipeline_tag=scenario.pipeline_tag,
        license=info.get("license", scenario.license),
        tags=tags, datasets=[d for d in info.get("datasets") or [] if is_hub_id(d)] or None,
        base_model=backbone if is_hub_id(backbone) else None, model_name=name, eval_results=eval_results,
    )
    warning_block = f"> [!WARNING]\n> {warning_text}\n\n" if warning else ""
    source = f"from `{manifest['backbone']}`" if manifest.get("backbone") else "from a backbone built locally"
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

Labels: {', '.join(f'`{n}`' for n in manifest['label_names'])}

## Training procedure
fmhub's Accelerate training loop, with this configuration (`train_config.yaml`):

```yaml
{yaml.safe_dump(run_config, sort_keys=False).strip()}
```
{semi_supervised_section(results.get("semi_supervised"))}
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


def _pseudo_label_accuracy(entry: dict) -> str:
    if not entry["taken"]:
        return "–"
    accuracy = entry.get("pseudo_label_accuracy")
    return "unknown (no true labels)" if accuracy is None else _number(accuracy)


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _load_snippet(scenario) -> str:
    if scenario.library_name == "timm":
        return (f'import timm\nmodel = timm.create_model("hf-hub:{REPO_PLACEHOLDER}", pretrained=True)\n'
                f'# or: transformers.pipeline("image-classification", model="{REPO_PLACEHOLDER}")')
    return (f'from transformers import pipeline\n'
            f'clf = pipeline("{scenario.pipeline_tag}", model="{REPO_PLACEHOLDER}")')
