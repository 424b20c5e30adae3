"""ONNX export of a saved model folder, checked against PyTorch, and the ONNX Runtime model that serves it.

`export_model(folder)` writes, inside the model folder, the layout transformers.js and Optimum read:

    onnx/model.onnx             fp32, dynamic batch (and sequence) axes, exported with `torch.onnx`
    onnx/model_quantized.onnx   int8 (`onnxruntime.quantization`): dynamic for text and audio, static QDQ with
                                calibration images for image models
    onnx/export.json            sizes, quantization used, parity with PyTorch on the test split

Text graphs also return the last hidden state, from which the out-of-scope distance score (`fmhub.ood`) is computed
as in PyTorch. Parity is measured at export on the model's test split (or given data): top-label agreement with the
PyTorch model and the largest probability difference. An fp32 graph that disagrees is refused; an int8 graph below
the bar falls back to per-channel weights, then to fp32 only, and says so.

`fmhub.onnx_runtime.OnnxModel` stands in for the PyTorch model behind the same call (`model(**inputs)` -> an output
with `.logits`), so the predictors, `fmhub evaluate` and the scenario metrics run unchanged on ONNX Runtime
(`--runtime onnx`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError
from fmhub.onnx_runtime import (  # noqa: F401 (the layout's names, also read from here)
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    QUANTIZE,
    REPORT_FILE,
    OnnxModel,
    onnx_dir,
)

OPSET = 17
PARITY_EXAMPLES = 512  # test examples compared at export (all of them when fewer)
INT8_MIN_AGREEMENT = 0.99  # int8 top labels that must agree with PyTorch, else the next, safer export is tried
INT8_MAX_DROP = 0.005  # ... and the most test accuracy it may lose
FP32_MIN_AGREEMENT = 0.999
FP32_MAX_PROB_DIFF = 1e-3
CALIBRATION_EXAMPLES = 64  # images fed to static int8 calibration


# -- the graph --------------------------------------------------------------------------------------------------
class _TextGraph(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs, strict=True)), output_hidden_states=True)
        return out.logits, out.hidden_states[-1]


class _LogitsGraph(torch.nn.Module):
    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        out = self.model(**{self.key: x})
        return out["logits"] if isinstance(out, dict) else out.logits


def _graph(scenario, model, processor):
    """(module, example inputs, input names, output names, dynamic axes) for the scenario's modality."""
    if scenario.modality == "text":
        names = [n for n in getattr(processor, "model_input_names", ["input_ids", "attention_mask"])
                 if n in ("input_ids", "attention_mask", "token_type_ids")]
        enc = processor(["an example message", "another one"], padding=True, return_tensors="pt")
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
        axes.update({"logits": {0: "batch_size"}, "last_hidden_state": {0: "batch_size", 1: "sequence_length"}})
        return (_TextGraph(model, names), tuple(enc[n] for n in names), names, ["logits", "last_hidden_state"], axes)
    if scenario.modality == "image":
        size = tuple(processor["input_size"])
        return (_LogitsGraph(model, "pixel_values"), (torch.randn(2, *size),), ["pixel_values"], ["logits"],
                {"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}})
    if scenario.modality == "audio":
        from fmhub import audio

        inputs = audio.features(processor, [np.zeros(audio.SAMPLE_RATE, np.float32)] * 2)
        key = "input_features" if "input_features" in inputs else "input_values"
        return (_LogitsGraph(model, key), (inputs[key],), [key], ["logits"],
                {key: {0: "batch_size"}, "logits": {0: "batch_size"}})
    raise FmhubError(f"no ONNX export for {scenario.modality} models")


def _export_fp32(scenario, model, processor, path: Path) -> None:
    import warnings

    module, example, names, outputs, axes = _graph(scenario, model, processor)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes: the axes are declared
        torch.onnx.export(module, example, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # pragma: no cover - not called by the calibrators used here
        pass


def _quantize(scenario, fp32: Path, out: Path, per_channel: bool, calibration: list[dict]) -> str:
    """Write the int8 graph; returns how it was quantized, in words."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        return _quantize_graph(scenario, fp32, out, per_channel, calibration)
    finally:
        root.setLevel(level)


def _quantize_graph(scenario, fp32: Path, out: Path, per_channel: bool, calibration: list[dict]) -> str:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scenario.modality == "image":
        prepared = out.with_name("prepared.onnx")
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        prepared.unlink(missing_ok=True)
        return f"int8 static (QDQ, {'per-channel' if per_channel else 'per-tensor'} weights, " \
               f"{len(calibration)} calibration images)"
    ops = ["MatMul", "Gemm"] + (["Gather"] if scenario.modality == "text" else [])  # text: the token table too
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=ops)
    return f"int8 dynamic ({'per-channel' if per_channel else 'per-tensor'} weights; {'/'.join(ops)})"


# -- parity -----------------------------------------------------------------------------------------------------
def _parity_batches(scenario, folder: Path, processor, data: str | None, limit: int):
    """Input batches (dicts without labels) and their labels, from the test split of the model's data."""
    from fmhub.config import TrainConfig
    from fmhub.model_folder import ModelFolder
    from fmhub.training.loaders import build_dataloader

    settings = ModelFolder(folder).read()
    label_names = settings["label_names"]
    if data is None:
        data = settings.get("data")
    config = TrainConfig(scenario=scenario.name, data=data, eval_batch_size=32, report_to="none",
                         **{k: v for k, v in scenario.defaults.items() if k in ("max_length", "image_size")})
    split = scenario.load_eval_split(config, label_names)
    if len(split) > limit:
        split = split.shuffle(seed=0).select(range(limit))
    dataset = scenario.make_dataset(split, processor, config, train=False)
    loader = build_dataloader(dataset, config, scenario.collate_fn(processor, config), train=False)
    batches = []
    for batch in loader:
        labels = batch.pop("labels")
        batches.append(({k: v for k, v in batch.items()}, labels.numpy()))
    return batches


@torch.no_grad()
def _probs(model, batches, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    for inputs, y in batches:
        out = model(**inputs)
        logits = (out["logits"] if isinstance(out, dict) else out.logits).float()
        probs.append((logits / temperature).softmax(-1).numpy())
        labels.append(y)
    return np.concatenate(probs), np.concatenate(labels)


def parity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """Top-label agreement on the rows of the model's classes (rows outside them, such as out-of-scope messages,
    have no right label to flip between: they are counted apart), the largest probability difference, accuracy."""
    inside = labels >= 0
    same = reference.argmax(1) == candidate.argmax(1)
    return {
        "examples": int(len(labels)),
        "top_label_agreement": round(float(same[inside].mean() if inside.any() else same.mean()), 4),
        "top_label_agreement_all_rows": round(float(same.mean()), 4),
        "max_probability_difference": round(float(np.abs(reference - candidate).max()), 5),
        "accuracy_torch": round(float((reference.argmax(1) == labels)[inside].mean()), 4) if inside.any() else None,
        "accuracy_onnx": round(float((candidate.argmax(1) == labels)[inside].mean()), 4) if inside.any() else None,
    }


def _close_enough(result: dict) -> bool:
    """The int8 bar: top labels agree on >= INT8_MIN_AGREEMENT of the rows and accuracy drops <= INT8_MAX_DROP."""
    drop = (result["accuracy_torch"] or 0.0) - (result["accuracy_onnx"] or 0.0)
    return result["top_label_agreement"] >= INT8_MIN_AGREEMENT and drop <= INT8_MAX_DROP + 1e-9


# -- the command ----------------------------------------------------------------------------------------------------
def export_model(folder: Path, quantize: str = "int8", data: str | None = None, log=None) -> dict:
    """Export `folder` to `folder/onnx/` (see the module docstring); returns the report written to export.json."""
    import onnxruntime as ort

    from fmhub.model_folder import ModelFolder
    from fmhub.models.auto import load_checked
    from fmhub.registry import get_scenario

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = Path(folder).expanduser()
    if quantize not in QUANTIZE:
        raise FmhubError(f"--quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    settings = ModelFolder(folder).read()
    scenario = get_scenario(settings["scenario"])
    model, processor = load_checked(scenario, folder)
    model.eval()
    temperature = float(settings.get("temperature", 1.0))
    t0 = time.perf_counter()
    log(f"export: reading the parity data ({scenario.name} test split)")
    batches = _parity_batches(scenario, folder, processor, data, PARITY_EXAMPLES)
    reference, labels = _probs(model, batches, temperature)

    final = onnx_dir(folder)
    work = folder / f".{ONNX_DIR}-export-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        log(f"export: tracing the fp32 graph (opset {OPSET})")
        _export_fp32(scenario, model, processor, work / FP32_FILE)
        config = getattr(model, "config", None)
        fp32 = parity(reference, _probs(OnnxModel(work / FP32_FILE, config), batches, temperature)[0], labels)
        log(f"export: fp32 parity on {fp32['examples']} test examples: top-label agreement "
            f"{fp32['top_label_agreement']:.4f}, largest probability difference {fp32['max_probability_difference']}")
        if fp32["top_label_agreement"] < FP32_MIN_AGREEMENT or fp32["max_probability_difference"] > FP32_MAX_PROB_DIFF:
            raise FmhubError(f"the fp32 ONNX graph does not match PyTorch (agreement {fp32['top_label_agreement']}, "
                             f"probability difference {fp32['max_probability_difference']}); export refused")
        files = {FP32_FILE: {"bytes": (work / FP32_FILE).stat().st_size, "quantization": "none (fp32)",
                             "parity": fp32}}
        serve, notes = FP32_FILE, []
        if quantize == "int8":
            calibration = [{k: v.numpy() for k, v in inputs.items()} for inputs, _ in batches]
            calibration = [{k: v[i:i + 1] for k, v in feed.items()} for feed in calibration
                           for i in range(len(next(iter(feed.values()))))][:CALIBRATION_EXAMPLES]
            for per_channel in (False, True):
                how = _quantize(scenario, work / FP32_FILE, work / INT8_FILE, per_channel, calibration)
                int8 = parity(reference, _probs(OnnxModel(work / INT8_FILE, config), batches, temperature)[0], labels)
                log(f"export: {how}: agreement {int8['top_label_agreement']:.4f}, largest probability difference "
                    f"{int8['max_probability_difference']}")
                if _close_enough(int8):
                    files[INT8_FILE] = {"bytes": (work / INT8_FILE).stat().st_size, "quantization": how,
                                        "parity": int8}
                    serve = INT8_FILE
                    break
                notes.append(f"{how} refused: top-label agreement {int8['top_label_agreement']}, accuracy "
                             f"{int8['accuracy_torch']} -> {int8['accuracy_onnx']}")
            else:
                (work / INT8_FILE).unlink(missing_ok=True)
                notes.append("int8 refused: the fp32 graph is served")
                log(f"export: int8 fell below the bar (agreement {INT8_MIN_AGREEMENT}, accuracy -{INT8_MAX_DROP}): "
                    "fp32 served")
        report = {"scenario": scenario.name, "opset": OPSET, "onnxruntime": ort.__version__,
                  "torch": torch.__version__, "quantize": quantize, "serve": serve, "files": files, "notes": notes,
                  "parity_data": data or settings.get("data") or "embedded test split",
                  "seconds": round(time.perf_counter() - t0, 1)}
        (work / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        old = folder / f".{ONNX_DIR}-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from fmhub.card import update_card_export

    update_card_export(folder, report)
    sizes = ", ".join(f"{name} {info['bytes'] / 1e6:.1f} MB" for name, info in files.items())
    log(f"export: wrote {final} ({sizes}; serving {serve})")
    return report

