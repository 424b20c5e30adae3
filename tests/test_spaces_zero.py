"""Spaces: ZeroGPU placement and GPU calls (with a stand-in `spaces` package), the whole hub as one Space (build, run
in-process, deploy to `tests/hub_server.LocalHub`), and the `--static` wiring.

What the ZeroGPU tests check, and what they cannot: there is no GPU here and the real `spaces` package only acts on
a ZeroGPU Space. The stand-in `spaces` records which functions are decorated and with what duration, and marks the
thread while a decorated call runs; forward hooks on every module of every model record whether each forward pass
(Grad-CAM's included) ran inside such a call. The Space asks `Predictor.to("cuda")`: the tests record that request
and carry it out on CPU. That inputs follow the model's device is checked separately, on torch's "meta" device.
"""

from __future__ import annotations

import functools
import io
import json
import runpy
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from fmhub.cli import main
from fmhub.errors import FmhubError
from fmhub.predictors.base import MicroBatcher, Predictor

SCENARIOS = ("customer-service", "medical-image", "voice-command")


class StandInSpaces(types.ModuleType):
    """`import spaces` on a ZeroGPU Space, as far as fmhub uses it: `spaces.GPU(fn, duration=...)`."""

    def __init__(self):
        super().__init__("spaces")
        self.decorated: list[tuple[str, int | None]] = []  # (qualified name, duration) per decoration
        self.calls: list[str] = []
        self._state = threading.local()

    @property
    def inside_gpu_call(self) -> bool:
        return getattr(self._state, "depth", 0) > 0

    def GPU(self, task=None, *, duration=None):  # noqa: N802 - the real package's name
        if task is None:
            return functools.partial(self.GPU, duration=duration)
        self.decorated.append((task.__qualname__, duration))

        @functools.wraps(task)
        def gpu_call(*args, **kwargs):
            self.calls.append(task.__qualname__)
            self._state.depth = getattr(self._state, "depth", 0) + 1
            try:
                return task(*args, **kwargs)
            finally:
                self._state.depth -= 1

        return gpu_call


@pytest.fixture(scope="module")
def models(tiny_text_backbone, tiny_audio_backbone, tmp_path_factory) -> dict[str, str]:
    """One tiny model folder per scenario (these tests check where calls run, not what the models answer): text and
    image trained for one step on a few rows through the real CLI; the audio one saved untrained, as a training run
    would first spend minutes building the embedded speech corpus."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    from fmhub.data import speech_corpus
    from fmhub.data.audio_data import SILENCE, UNKNOWN

    quick = ["--max-samples-per-class", "4", "--epochs", "1", "--max-steps", "1", "--report-to", "none"]
    backbones = {"customer-service": [str(tiny_text_backbone)],
                 "medical-image": ["test_efficientnet", "--no-pretrained", "--image-size", "64"]}
    folders = {}
    for name, (backbone, *extra) in backbones.items():
        folders[name] = str(tmp_path_factory.mktemp(name))
        assert main(["train", "--scenario", name, "--model", backbone, *extra, *quick,
                     "--output-dir", folders[name]]) == 0
    voice = tmp_path_factory.mktemp("voice-command")
    labels = [*speech_corpus.COMMANDS, UNKNOWN, SILENCE]
    config = WhisperConfig.from_pretrained(tiny_audio_backbone, id2label=dict(enumerate(labels)),
                                           label2id={n: i for i, n in enumerate(labels)})
    WhisperForAudioClassification(config).save_pretrained(voice)
    WhisperFeatureExtractor.from_pretrained(tiny_audio_backbone).save_pretrained(voice)
    (voice / "fmhub.json").write_text(json.dumps({"scenario": "voice-command", "label_names": labels}))
    folders["voice-command"] = str(voice)
    return folders


@pytest.fixture
def zero_gpu(monkeypatch):
    """A ZeroGPU Space here: SPACES_ZERO_GPU set, the stand-in `spaces` importable, `Predictor.to` recorded (the
    device asked for, the thread that asked) and carried out on CPU, and fresh predictors (no cached ones)."""
    from fmhub import serving

    spaces = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(serving, "_CACHE", {})
    spaces.placements = []
    original_to = Predictor.to

    def recorded_to(self, device):
        spaces.placements.append((self.scenario_name, device, threading.current_thread() is threading.main_thread()))
        return original_to(self, "cpu")

    monkeypatch.setattr(Predictor, "to", recorded_to)
    return spaces


def watch_forward_passes(model, spaces: StandInSpaces) -> list[tuple[bool, set[str]]]:
    """(inside a GPU call, devices of the tensor inputs) for every forward of every module of `model`."""
    import torch

    seen = []

    def hook(module, args, kwargs):
        tensors = [v for v in (*args, *kwargs.values()) if torch.is_tensor(v)]
        seen.append((spaces.inside_gpu_call, {t.device.type for t in tensors}))

    for module in model.modules():
        module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def api(demo, name: str):
    """The function behind the app's `api_name=name` event (called in-process, as Gradio would)."""
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == name)


def tab_ids(demo) -> list[str]:
    """The ids of the app's tabs (the scenario names; tabs inside a scenario's tab have none)."""
    tabs = [c["props"].get("id") for c in demo.get_config_file()["components"] if c["type"] == "tabitem"]
    return [tab for tab in tabs if tab is not None]


def image_bytes() -> bytes:
    from PIL import Image

    from fmhub.data import medical_synth

    images, _, _ = medical_synth.generate(2, size=96, seed=3, split="test")
    out = io.BytesIO()
    Image.fromarray(images[0]).save(out, format="PNG")
    return out.getvalue()


def speech_clip(folder: Path, seconds: float = 1.0) -> str:
    from fmhub import audio

    rng = np.random.default_rng(0)
    path = folder / "clip.wav"
    audio.write_wav(path, (0.1 * rng.standard_normal(int(seconds * audio.SAMPLE_RATE))).astype(np.float32))
    return str(path)


# -- ZeroGPU ---------------------------------------------------------------------------------------------------------
def test_zero_gpu_hub_space_places_models_at_start_up_and_runs_every_forward_pass_in_a_gpu_call(
        zero_gpu, models, monkeypatch, tmp_path):
    from fmhub import explain, serving
    from fmhub.ui.space import build_hub_space_demo

    demo = build_hub_space_demo(models)
    assert tab_ids(demo) == list(SCENARIOS)
    # placed at build time (the Space's module level), on the main thread, one request for cuda per model
    assert sorted(zero_gpu.placements) == [(s, "cuda", True) for s in SCENARIOS]
    assert sorted(zero_gpu.decorated) == sorted([
        ("TextIntentPredictor.predict", 20), ("MedicalImagePredictor.predict", 30),
        ("VoiceCommandPredictor.predict", 30), ("VoiceCommandPredictor.predict_windows", 20)])

    predictors = {key[0]: p for key, p in serving._CACHE.items()}
    assert {key[3] for key in serving._CACHE} == {"cuda"}
    for predictor in predictors.values():
        assert not isinstance(predictor.predict, MicroBatcher)  # the GPU call runs in the request's thread
    seen = {name: watch_forward_passes(p.model, zero_gpu) for name, p in predictors.items()}
    gradcam_inside = []
    original_gradcam = explain.gradcam
    monkeypatch.setattr(explain, "gradcam", lambda *a, **k: gradcam_inside.append(zero_gpu.inside_gpu_call)
                        or original_gradcam(*a, **k))

    assert api(demo, "classify_intent")("where is my package")["label"]
    scores, overlay, _, _ = api(demo, "classify_image")(image_bytes())
    assert scores and overlay.ndim == 3
    clip = speech_clip(tmp_path)
    verdict, result, *_ = api(demo, "classify_audio")(clip, None)
    assert result["label"]
    heard, *_ = api(demo, "stream_audio")(speech_clip(tmp_path, 2.0), None)
    assert "Listening" in heard

    assert gradcam_inside == [True]
    for name, passes in seen.items():
        assert passes, name
        assert all(inside for inside, _ in passes), name  # no forward pass outside a GPU call
        assert {d for _, devices in passes for d in devices} == {"cpu"}  # the device the stand-in placed it on
    assert zero_gpu.calls.count("VoiceCommandPredictor.predict_windows") >= 1  # the stream's own entry point


def test_zero_gpu_single_scenario_space_and_a_default_not_ready_stays_on_cpu(zero_gpu, models, monkeypatch):
    from fmhub.ui import space
    from fmhub.ui.models import BOOTSTRAP

    requested = []
    monkeypatch.setattr(BOOTSTRAP, "request", requested.append)
    demo = space.build_space_demo("customer-service", models["customer-service"])
    assert zero_gpu.placements == [("customer-service", "cuda", True)]
    assert zero_gpu.decorated == [("TextIntentPredictor.predict", 20)]
    assert api(demo, "classify_intent")("hello")["label"] and zero_gpu.calls == ["TextIntentPredictor.predict"]

    # an embedded default that is not fine-tuned yet: nothing placed now, fine-tuning requested, served on CPU later
    space.build_space_demo("medical-image")
    assert len(zero_gpu.placements) == 1 and [s.scenario for s in requested] == ["medical-image"]


def test_cpu_spaces_are_unchanged(models, monkeypatch):
    """No SPACES_ZERO_GPU: `spaces` is never imported, models load on first use, on CPU, micro-batched."""
    from fmhub import serving
    from fmhub.ui.space import build_space_demo

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "spaces", None)  # importing it would fail
    monkeypatch.setattr(serving, "_CACHE", {})
    demo = build_space_demo("customer-service", models["customer-service"])
    assert serving._CACHE == {}
    assert api(demo, "classify_intent")("hello")["label"]
    (key, predictor), = serving._CACHE.items()
    assert key[3] == "cpu" and predictor.device == "cpu" and isinstance(predictor.predict, MicroBatcher)


def test_zero_gpu_without_the_spaces_package_says_what_to_install(models, monkeypatch):
    from fmhub.ui.space import build_space_demo

    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setitem(sys.modules, "spaces", None)
    with pytest.raises(FmhubError, match="pip install spaces"):
        build_space_demo("customer-service", models["customer-service"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_inputs_follow_the_model_device(scenario, models, tmp_path):
    """`Predictor.to(device)`: what reaches the model is on that device (torch's "meta" device stands in for cuda;
    the first forward is stopped there, since meta tensors hold no values)."""
    import torch

    from fmhub.registry import get_scenario

    class Reached(Exception):
        pass

    predictor = get_scenario(scenario).predictor(Path(models[scenario])).to("meta")
    devices = []

    def stop(module, args, kwargs):
        devices.extend(v.device.type for v in (*args, *kwargs.values()) if torch.is_tensor(v))
        raise Reached

    predictor.model.register_forward_pre_hook(stop, with_kwargs=True)
    item = {"customer-service": "where is my package", "medical-image": image_bytes(),
            "voice-command": speech_clip(tmp_path)}[scenario]
    with pytest.raises(Reached):
        predictor.predict([item])
    assert devices and set(devices) == {"meta"}


# -- the whole hub as one Space --------------------------------------------------------------------------------------
HUB_IDS = {"customer-service": "tester/cs-model", "medical-image": "tester/mi-model",
           "voice-command": "tester/vc-model"}


def test_hub_space_folder_files_and_yaml(tmp_path):
    from huggingface_hub import SpaceCard

    from fmhub.spaces import GRADIO_VERSION

    out = tmp_path / "hub"
    flags = [f"--model={name}={ref}" for name, ref in HUB_IDS.items() if name != "medical-image"]
    assert main(["spaces", "build", "--scenario", "all", "--output-dir", str(out), *flags]) == 0
    assert {"app.py", "README.md", "requirements.txt", "fmhub_space.json"} <= {p.name for p in out.iterdir()}
    assert (out / "fmhub" / "ui" / "space.py").is_file()
    meta = SpaceCard.load(out / "README.md").data.to_dict()
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == GRADIO_VERSION and meta["app_file"] == "app.py"
    assert meta["models"] == ["tester/cs-model", "tester/vc-model"]  # the default is no Hub model
    assert len(meta["short_description"]) <= 60 and set(SCENARIOS) <= set(meta["tags"])
    assert json.loads((out / "fmhub_space.json").read_text()) == {
        "scenario": "all", "models": {**HUB_IDS, "medical-image": None}}
    assert "build_hub_space_demo(" in (out / "app.py").read_text()


def test_hub_space_app_runs_in_process_with_the_hub_apps_tabs_and_limits(models, tmp_path, monkeypatch):
    """The built folder's app.py, run in this process; FMHUB_<SCENARIO>_MODEL points the tabs at the tiny models."""
    from fmhub import serving
    from fmhub.spaces import write_space_folder
    from fmhub.ui.app import CONCURRENCY, QUEUE_MAX_SIZE, AppConfig, build_app, model_variable

    folder = write_space_folder("all", tmp_path / "hub", HUB_IDS)
    for name, ref in models.items():
        monkeypatch.setenv(model_variable(name), ref)
    monkeypatch.setattr(sys, "path", list(sys.path))  # app.py puts its folder first
    monkeypatch.setattr(serving, "_CACHE", {})
    demo = runpy.run_path(str(folder / "app.py"))["demo"]
    assert tab_ids(demo) == list(SCENARIOS)
    local, _ = build_app(AppConfig(models=models, bootstrap=False))
    assert tab_ids(demo) == tab_ids(local)  # the same tabs as `python app.py`
    assert demo._queue.max_size == QUEUE_MAX_SIZE and demo._queue.default_concurrency_limit == CONCURRENCY
    assert not demo.api_open
    assert api(demo, "classify_intent")("where is my package")["label"]
    assert {key[1] for key in serving._CACHE} == {models["customer-service"]}


@pytest.mark.parametrize("flags, message", [
    (["--model", "tester/cs"], "with --scenario all, say which tab it is for"),
    (["--model", "defect=tester/cs"], "unknown scenario 'defect'"),
    (["--model", "customer-service=a/b", "--model", "customer-service=c/d"], "given twice for customer-service"),
    (["--model", "customer-service="], "names no model"),
])
def test_bad_model_mappings_fail_with_one_line(flags, message, tmp_path, capsys):
    assert main(["spaces", "build", "--scenario", "all", "--output-dir", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmhub spaces: error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_single_scenario_spaces_take_a_bare_model_or_their_own_name(tmp_path, capsys):
    from fmhub.spaces import parse_model_flags

    assert parse_model_flags("customer-service", ["user/cs"]) == {"customer-service": "user/cs"}
    assert parse_model_flags("customer-service", ["customer-service=user/cs"]) == {"customer-service": "user/cs"}
    assert parse_model_flags("customer-service", None) == {"customer-service": None}
    with pytest.raises(FmhubError, match="is for medical-image, not for this customer-service Space"):
        parse_model_flags("customer-service", ["medical-image=user/mi"])
    with pytest.raises(FmhubError, match="given twice"):
        parse_model_flags("customer-service", ["user/a", "user/b"])


def test_hub_space_deploy_refuses_a_local_folder(tmp_path, capsys):
    assert main(["spaces", "deploy", "--scenario", "all", "--space-id", "tester/hub",
                 "--model", f"medical-image={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"--model 'medical-image={tmp_path}' is not a Hub model id" in err and "fmhub push" in err


def test_hub_space_deploys_in_one_commit_linking_every_model(tmp_path):
    from hub_server import LocalHub
    from test_hub import TOKEN, USER, assert_token_not_logged, client_env, run_cli, run_client

    with LocalHub(token=TOKEN, users=(USER,)) as hub:
        env = client_env(hub, tmp_path / "hf_home")
        run_client(f"""
            from huggingface_hub import HfApi
            for repo in {sorted(HUB_IDS.values())!r}:
                HfApi().create_repo(repo)
        """, env)
        space_id = f"{USER}/fmhub-hub"
        flags = [arg for name, ref in HUB_IDS.items() for arg in ("--model", f"{name}={ref}")]
        ran = run_cli(["spaces", "deploy", "--scenario", "all", "--space-id", space_id, *flags], env)
        assert ran.code == 0, ran.err
        assert ran.out.strip() == f"deployed to {hub.url}/spaces/{space_id}"
        commits = [p for m, p, _ in hub.requests_log if m == "POST" and f"/spaces/{space_id}/commit/" in p]
        assert len(commits) == 1
        assert hub.commits(space_id, repo_type="space")[0][1] == "Deploy fmhub hub (all tabs) Space"
        files = hub.files(space_id, repo_type="space")
        for name in ("app.py", "README.md", "requirements.txt", "fmhub_space.json", "fmhub/ui/space.py"):
            assert name in files, name
        assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
        assert json.loads(files["fmhub_space.json"]) == {"scenario": "all", "models": HUB_IDS}
        res = run_client(f"""
            from huggingface_hub import HfApi, SpaceCard
            result["sdk"] = HfApi().space_info({space_id!r}).sdk
            result["models"] = SpaceCard.load({space_id!r}, repo_type="space").data.models
        """, env)
        assert res == {"sdk": "gradio", "models": list(HUB_IDS.values())}
        assert_token_not_logged(hub)


# -- --static wiring -------------------------------------------------------------------------------------------------
@pytest.fixture
def static_space(monkeypatch):
    """A stand-in `fmhub.static_space` (the real one may be absent) that records its calls."""
    module = types.ModuleType("fmhub.static_space")
    module.calls = []

    def build_static_space(scenario, folder, models, overwrite):
        module.calls.append(("build", scenario, folder, models, overwrite))
        return folder

    def deploy_static_space(scenario, space_id, models, private):
        module.calls.append(("deploy", scenario, space_id, models, private))
        return f"https://huggingface.co/spaces/{space_id}"

    module.build_static_space, module.deploy_static_space = build_static_space, deploy_static_space
    monkeypatch.setitem(sys.modules, "fmhub.static_space", module)
    return module


def test_static_flag_calls_the_static_space_builder(static_space, tmp_path, capsys):
    assert main(["spaces", "build", "--scenario", "all", "--output-dir", str(tmp_path / "s"), "--static",
                 "--model", "customer-service=user/cs"]) == 0
    assert main(["spaces", "deploy", "--scenario", "medical-image", "--space-id", "user/mi", "--static",
                 "--private"]) == 0
    assert static_space.calls == [
        ("build", "all", tmp_path / "s", {"customer-service": "user/cs", "medical-image": None,
                                          "voice-command": None}, False),
        ("deploy", "medical-image", "user/mi", {"medical-image": None}, True),
    ]
    assert capsys.readouterr().out.splitlines()[-1] == "deployed to https://huggingface.co/spaces/user/mi"
