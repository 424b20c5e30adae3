"""The saved model folder and its one owner: `ModelFolder` writes and reads the manifest (`fmhub.json`: scenario,
backbone, labels, calibrated settings, test metrics) and checks that the label maps agree.

The folder itself is the ecosystem's standard layout (config.json with labels, model.safetensors, tokenizer or
processor files, README.md model card); the manifest adds what only fmhub uses. Reads are cached and re-read only
when the file changes, so a tab can ask for it on every request.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from fmhub.errors import FmhubError

MANIFEST = "fmhub.json"
_CACHE: dict[Path, tuple[int, dict]] = {}
_CACHE_LOCK = threading.Lock()


class ModelFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_fmhub_model(self) -> bool:
        return self.manifest_path.is_file()

    def is_model(self) -> bool:
        """An fmhub folder or any folder with a config.json (a model saved by other tools)."""
        return self.is_fmhub_model() or (self.path / "config.json").is_file()

    # -- the manifest ---------------------------------------------------------------------------------------------
    def read(self) -> dict:
        """The manifest; a clear error when the folder has none or it is damaged."""
        path = self.manifest_path
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            raise FmhubError(f"{self.path} is not an fmhub model folder (no {MANIFEST}); "
                             "train one with `fmhub train --output-dir ...`") from None
        key = path.resolve()
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise FmhubError(f"{self.path}: {MANIFEST} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise FmhubError(f"{self.path}: {MANIFEST} is not a JSON object")
        with _CACHE_LOCK:
            _CACHE[key] = (stamp, record)
        return record

    def read_or_empty(self) -> dict:
        return self.read() if self.is_fmhub_model() else {}

    def write(self, record: dict) -> None:
        from fmhub.reports import write_json

        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, record)

    @property
    def scenario(self) -> str | None:
        return self.read_or_empty().get("scenario")

    @property
    def label_names(self) -> list[str]:
        return list(self.read_or_empty().get("label_names") or [])

    def summary(self) -> dict:
        """Backbone, data and test metrics, for display."""
        record = self.read_or_empty()
        return {"backbone": record.get("backbone"), "data": record.get("data") or "embedded default",
                "test_metrics": record.get("test_metrics", {})}

    def check_trained_for(self, scenario: str, ref: str | None = None) -> None:
        trained_for = self.scenario
        if trained_for and trained_for != scenario:
            raise FmhubError(f"{ref or self.path} is a {trained_for} model, not a {scenario} one; "
                             f"pick --scenario {trained_for}")

    # -- consistency before anything leaves the machine ----------------------------------------------------------
    def check_label_maps(self) -> list[str]:
        """The label map must agree everywhere before anything is uploaded; returns the label names."""
        if not self.is_fmhub_model() or not (self.path / "config.json").is_file():
            raise FmhubError(f"{self.path} is not an fmhub model folder (needs {MANIFEST} and config.json); "
                             "train one with `fmhub train --output-dir ...`")
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise FmhubError(f"{self.path}: config.json is not valid JSON ({err})") from None
        names = self.label_names
        if "id2label" in config:
            id2label = {str(k): v for k, v in config["id2label"].items()}
            if id2label != {str(i): n for i, n in enumerate(names)}:
                raise FmhubError(f"label maps disagree: config.json id2label {list(id2label.values())[:4]}... vs "
                                 f"{MANIFEST} label_names {names[:4]}...; re-save the model with fmhub")
            label2id = config.get("label2id", {})
            if {k: int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
                raise FmhubError("label maps disagree: config.json label2id is not the inverse of id2label")
        if "label_names" in config and list(config["label_names"]) != names:
            raise FmhubError(f"label maps disagree: config.json label_names differs from {MANIFEST}")
        if not names or any(re.fullmatch(r"LABEL_\d+", str(n)) for n in names):
            raise FmhubError("the model has placeholder labels (LABEL_0, ...); give real label names before pushing")
        return names
