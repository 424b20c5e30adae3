"""ONNX Runtime behind the PyTorch model's call, for `--runtime onnx`: the export layout's names, CPU sessions with
thread settings for small machines, and `OnnxModel`. The export itself (`fmhub export`) is `fmhub.export`; this module
is a leaf the predictors import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
REPORT_FILE = "export.json"
RUNTIMES = ("torch", "onnx")
QUANTIZE = ("int8", "none")


def onnx_dir(folder: Path) -> Path:
    return Path(folder) / ONNX_DIR


def serving_file(folder: Path) -> Path:
    """The graph `--runtime onnx` serves: the int8 one when the export kept it, else fp32."""
    folder = onnx_dir(folder)
    report = read_report(folder.parent)
    name = (report or {}).get("serve") or (INT8_FILE if (folder / INT8_FILE).is_file() else FP32_FILE)
    return folder / name


def read_report(folder: Path) -> dict | None:
    path = onnx_dir(folder) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- ONNX Runtime -------------------------------------------------------------------------------------------------
def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with thread settings for small machines: intra-op threads = the cores this
    process may use (at most 4), no inter-op pool, no spinning; one clear line for a missing, corrupt or unsupported
    file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FmhubError(f"no ONNX model at {path}: export one with `fmhub export --model {path.parent.parent}`")
    options = ort.SessionOptions()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options.intra_op_num_threads = int(threads or min(4, cores))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # idle pool threads sleep instead of spinning: a server's own threads (tokenizers, Gradio, numpy) need the cores
    # between runs; with spinning, 8 concurrent text requests on 2 cores ran 1.4x slower (benchmarks/onnx_runtime.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, NotImplemented, ...)
        text = " ".join(str(err).split())
        if "opset" in text.lower() or "NOT_IMPLEMENTED" in text or "NotImplemented" in type(err).__name__:
            raise FmhubError(f"ONNX Runtime {ort.__version__} cannot run {path.name} (an operator or opset it "
                             f"lacks): {text[:200]}; re-export with `fmhub export`") from None
        raise FmhubError(f"cannot load {path}: the file is not a valid ONNX model ({text[:200]}); "
                         "re-export it with `fmhub export`") from None


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session behind the PyTorch model's call: `model(**inputs)` returns an output with `logits`
    (and, for text graphs, `hidden_states` ending with the last hidden state). `config` is the folder's transformers
    config when it has one. Holds no weights: `parameters()` yields one empty tensor, for code that asks the device."""

    def __init__(self, path: Path, config=None, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.config = config
        self._anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        feed = {}
        for name in self.input_names:
            if name not in inputs:
                if name == "token_type_ids" and "input_ids" in inputs:
                    feed[name] = np.zeros(tuple(inputs["input_ids"].shape), np.int64)
                    continue
                raise FmhubError(f"the ONNX model needs input {name!r}")
            value = inputs[name]
            value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            feed[name] = value.astype(np.int64 if name in ("input_ids", "attention_mask", "token_type_ids")
                                      else np.float32, copy=False)
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        hidden = outputs.get("last_hidden_state")
        return SequenceClassifierOutput(logits=torch.from_numpy(outputs["logits"]),
                                        hidden_states=None if hidden is None else (torch.from_numpy(hidden),))


def load_onnx(scenario, folder: Path):
    """(OnnxModel, processor) for `--runtime onnx`; the processor is the one the PyTorch folder uses."""
    folder = Path(folder)
    path = serving_file(folder)
    if not path.is_file():
        raise FmhubError(f"{folder} has no ONNX export ({ONNX_DIR}/{path.name}); run `fmhub export --model {folder}` "
                         "or serve it with --runtime torch")
    processor, config = scenario.load_processor(folder)
    return OnnxModel(path, config), processor


def check_runtime(runtime: str | None) -> str:
    runtime = (runtime or os.environ.get("FMHUB_RUNTIME") or "torch").strip().lower()
    if runtime not in RUNTIMES:
        raise FmhubError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime
