"""Hub and Spaces end to end against `tests/hub_server.LocalHub`: push, model cards, load by id, Spaces, faults.

The real `huggingface_hub` client (and `transformers` on top of it) talks to the local fake Hub. `huggingface_hub`
reads `HF_ENDPOINT` when it is imported, so everything that talks to the Hub runs in a subprocess started with
`LocalHub.client_env(...)`; checks that need no network (bad input, card contents) run in this process.

Scenarios are rows of `CASES`: adding one is a `HubCase(...)` entry naming its pipeline task, a session fixture with
a model trained by `fmhub train`, the inputs to compare on, and the Space endpoint that answers one input.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmhub.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
USER = "tester"
TOKEN = "hf_fmhubLeakCanary0123456789abcdef"  # recognisable: it must never show up outside the Authorization header
RESULT_MARK = "@@RESULT@@"
_CLIENT_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class HubCase:
    scenario: str
    task: str  # transformers pipeline task that loads the pushed repo by id
    model_fixture: str  # session fixture: a folder written by `fmhub train --output-dir`
    make_rows: Callable[[Path], list[dict]]  # `fmhub predict` rows ({"text"} or {"path"}); files go under the dir
    space_api: str  # gradio_client endpoint of the Space that answers one input
    space_label: Callable[[object], str] = operator.itemgetter("label")  # the label in the Space's answer
    clinical: bool = False  # the card must carry the not-for-clinical-use block


def _intent_rows(_folder: Path) -> list[dict]:
    return [{"text": t} for t in ("where is my package", "I want to talk to a human", "hello there",
                                  "my card was charged twice", "cancel my order please")]


def _image_rows(folder: Path) -> list[dict]:
    """Synthetic test-split images (one with a lesion first, then a normal one) as PNG files."""
    import numpy as np
    from PIL import Image

    from fmhub.data import medical_synth

    images, labels, _ = medical_synth.generate(6, size=96, seed=5, split="test")
    order = [int(np.flatnonzero(labels == 1)[0]), int(np.flatnonzero(labels == 0)[0])]
    rows = []
    for n, i in enumerate(order):
        Image.fromarray(images[i]).save(folder / f"image{n}.png")
        rows.append({"path": str(folder / f"image{n}.png")})
    return rows


def _audio_rows(folder: Path) -> list[dict]:
    """Held-out-voice clips of the embedded speech corpus as 16 kHz WAV files."""
    from fmhub import audio
    from fmhub.data import speech_corpus
    from fmhub.data.audio_data import embedded_corpus_path

    waves, labels, _ = speech_corpus.load_corpus(embedded_corpus_path())["test"]
    rows = []
    for word in ("yes", "stop", "_silence_"):
        audio.write_wav(folder / f"{word}.wav", waves[labels.index(word)])
        rows.append({"path": str(folder / f"{word}.wav")})
    return rows


CASES = [
    HubCase("customer-service", "text-classification", "tiny_intent_model", _intent_rows, "/classify_intent"),
    HubCase("medical-image", "image-classification", "tiny_image_model", _image_rows, "/classify_image",
            space_label=lambda answer: answer[0]["label"], clinical=True),
    HubCase("voice-command", "audio-classification", "tiny_audio_model", _audio_rows, "/classify_audio",
            space_label=lambda answer: answer[1]["label"]),
]
SPACE_DIRS = sorted(p for p in (ROOT / "spaces").iterdir() if (p / "README.md").is_file())


# -- helpers ---------------------------------------------------------------------------------------------------------
def client_env(hub: LocalHub | None, hf_home: Path, **overrides: str | None) -> dict[str, str]:
    """This process's environment without Hub settings, plus the LocalHub client settings and `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_CLIENT_ENV_PREFIXES) and k not in _PROXY_VARS and k != "PYTHONPATH"}
    hf_home.mkdir(parents=True, exist_ok=True)
    env.update(hub.client_env(hf_home) if hub else {"HF_HOME": str(hf_home)})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Ran:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def run_cli(args: list[str], env: dict, timeout: float = 120) -> Ran:
    """`python -m fmhub ARGS` in a fresh process; the token must never appear in what it prints."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fmhub", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    ran = Ran(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert TOKEN not in ran.out and TOKEN not in ran.err
    return ran


def run_client(code: str, env: dict, timeout: float = 120) -> dict:
    """A client snippet in a fresh interpreter; it fills `result`, which comes back."""
    script = "import json\nresult = {}\n" + textwrap.dedent(code) + f"\nprint({RESULT_MARK!r} + json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["HF_HOME"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK)][-1]
    return json.loads(line[len(RESULT_MARK):])


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_token_not_logged(hub: LocalHub) -> None:
    assert TOKEN not in repr(hub.requests_log)
    sent = [v for _, _, headers in hub.requests_log for k, v in headers.items() if k.lower() == "authorization"]
    assert sent and set(sent) == {"Bearer <valid token>"}  # it was sent, and only in that header


def assert_one_error_line(ran: Ran, *needles: str) -> str:
    assert ran.code == 2, (ran.code, ran.err[-2000:])
    assert len(ran.err_lines) == 1, ran.err
    line = ran.err_lines[0]
    assert line.startswith("fmhub ") and ": error: " in line, line
    for needle in needles:
        assert needle in line, line
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_predictions(case: HubCase, folder: Path, rows: list[dict]) -> list[dict]:
    from fmhub.registry import get_scenario
    from fmhub.serving import load_predictor

    key = get_scenario(case.scenario).input_key
    return load_predictor(case.scenario, str(folder)).predict([row[key] for row in rows])


def copy_model(folder: Path, target: Path) -> Path:
    """A copy with run by-products in it (checkpoints, TensorBoard logs, best weights), as a real run leaves them."""
    shutil.copytree(folder, target)
    (target / "runs").mkdir(exist_ok=True)
    (target / "runs" / "events.out.tfevents.1.host").write_bytes(b"tensorboard")
    (target / "checkpoint-999").mkdir(exist_ok=True)
    (target / "checkpoint-999" / "optimizer.bin").write_bytes(b"pickled optimizer state")
    (target / "best_model.safetensors").write_bytes((target / "model.safetensors").read_bytes())
    return target


def uploadable(digest: dict[str, str]) -> dict[str, str]:
    """The part of a model folder a push uploads: no checkpoints, TensorBoard logs, best-weights copy or fmhub's
    folder marker and run lock (`.fmhub-*`)."""
    return {k: v for k, v in digest.items()
            if not k.startswith(("checkpoint-", "runs/", ".fmhub-")) and k != "best_model.safetensors"}


def card_metadata(text: str) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


# -- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub():
    with LocalHub(token=TOKEN, users=(USER,)) as local_hub:
        yield local_hub


@pytest.fixture(scope="module", params=CASES, ids=[c.scenario for c in CASES])
def case(request) -> HubCase:
    return request.param


@pytest.fixture(scope="module")
def model_folder(case, request) -> Path:
    return request.getfixturevalue(case.model_fixture)


@dataclass
class Pushed:
    repo_id: str
    folder: Path
    ran: Ran
    before: dict
    after: dict


@pytest.fixture(scope="module")
def pushed(case, model_folder, hub, tmp_path_factory) -> Pushed:
    """`fmhub push` of a copy of the case's model (with run by-products beside it) to tester/<scenario>."""
    tmp = tmp_path_factory.mktemp(f"push-{case.scenario}")
    folder = copy_model(model_folder, tmp / "model")
    before = tree_digest(folder)
    repo_id = f"{USER}/{case.scenario}"
    ran = run_cli(["push", "--model", str(folder), "--repo-id", repo_id], client_env(hub, tmp / "hf_home"))
    return Pushed(repo_id, folder, ran, before, tree_digest(folder))


@pytest.fixture(scope="module")
def deployed(case, pushed, hub, tmp_path_factory) -> tuple[str, Ran]:
    space_id = f"{USER}/{case.scenario}-space"
    env = client_env(hub, tmp_path_factory.mktemp("deploy") / "hf_home")
    ran = run_cli(["spaces", "deploy", "--scenario", case.scenario, "--space-id", space_id,
                   "--model", pushed.repo_id], env)
    return space_id, ran


# -- push and load by id ---------------------------------------------------------------------------------------------
def test_push_uploads_the_model_and_leaves_the_folder_untouched(pushed, hub):
    assert pushed.ran.code == 0, pushed.ran.err
    assert pushed.ran.out.strip().startswith(f"pushed to {hub.url}/{pushed.repo_id}/commit/")
    assert pushed.after == pushed.before  # every file hashed before and after: nothing written, nothing removed
    files = hub.files(pushed.repo_id)
    for name in ("config.json", "model.safetensors", "fmhub.json", "README.md", "all_results.json",
                 "confusion_matrix.png", "train_config.yaml"):
        assert name in files, name
    assert not [f for f in files if f.startswith(("checkpoint-", "runs/", ".tmp-")) or f == "best_model.safetensors"]
    assert set(files) - {".gitattributes"} == set(uploadable(pushed.before))
    assert files["model.safetensors"] == (pushed.folder / "model.safetensors").read_bytes()
    # the uploaded card names the repo in its load snippets; the local card keeps the placeholder
    card = files["README.md"].decode()
    assert f'model="{pushed.repo_id}"' in card and "USER/NAME" not in card
    assert TOKEN not in card and TOKEN not in (pushed.folder / "README.md").read_text()
    assert_token_not_logged(hub)


def test_pushed_repo_loads_by_id_in_a_clean_process(case, pushed, hub, tmp_path):
    rows = case.make_rows(tmp_path)
    requests_before = len(hub.requests_log)
    res = run_client(f"""
        import sys
        from transformers import pipeline
        rows = {rows!r}

        def as_input(row):
            if "text" in row:
                return row["text"]
            if row["path"].endswith(".wav"):
                import soundfile
                audio, rate = soundfile.read(row["path"], dtype="float32")
                return {{"raw": audio, "sampling_rate": rate}}
            return row["path"]

        def top(model):
            clf = pipeline({case.task!r}, model=model)
            return [sorted(clf(as_input(r), top_k=None), key=lambda d: -d["score"]) for r in rows]

        result["hub"] = top({pushed.repo_id!r})
        result["local"] = top({str(pushed.folder)!r})
        result["fmhub_imported"] = "fmhub" in sys.modules
    """, client_env(hub, tmp_path / "hf_home"))
    assert res["fmhub_imported"] is False
    for hub_out, local_out in zip(res["hub"], res["local"], strict=True):
        assert [d["label"] for d in hub_out] == [d["label"] for d in local_out]
        assert [d["score"] for d in hub_out] == pytest.approx([d["score"] for d in local_out], abs=1e-6)
    downloads = [p.split("?")[0] for m, p, _ in hub.requests_log[requests_before:] if m == "GET"]
    assert [p for p in downloads if p.startswith(f"/{pushed.repo_id}/resolve/") and p.endswith("/model.safetensors")]


@dataclass
class Predicted:
    rows: list[dict]
    args: list[str]
    hf_home: Path
    output: Path
    ran: Ran


@pytest.fixture(scope="module")
def predicted_by_id(case, pushed, hub, tmp_path_factory) -> Predicted:
    """`fmhub predict --model tester/<scenario>` with an empty cache: the model comes from the Hub."""
    tmp = tmp_path_factory.mktemp(f"predict-{case.scenario}")
    rows = case.make_rows(tmp)
    (tmp / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = ["predict", "--scenario", case.scenario, "--input-file", str(tmp / "in.jsonl"), "--model", pushed.repo_id]
    ran = run_cli([*args, "--output", str(tmp / "out.jsonl")], client_env(hub, tmp / "hf_home"))
    return Predicted(rows, args, tmp / "hf_home", tmp / "out.jsonl", ran)


def test_predict_loads_by_hub_id(case, pushed, predicted_by_id):
    assert predicted_by_id.ran.code == 0, predicted_by_id.ran.err
    expected = local_predictions(case, pushed.folder, predicted_by_id.rows)
    got = [json.loads(x) for x in predicted_by_id.output.read_text().splitlines()]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_offline_load_by_id_uses_the_cache_and_no_server(predicted_by_id, hub, tmp_path):
    """HF_HUB_OFFLINE=1 and no server at all (the endpoint is a closed port): the cached download serves."""
    requests_before = len(hub.requests_log)
    env = client_env(hub, predicted_by_id.hf_home, HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    ran = run_cli([*predicted_by_id.args, "--output", str(tmp_path / "offline.jsonl")], env)
    assert ran.code == 0, ran.err
    assert (tmp_path / "offline.jsonl").read_text() == predicted_by_id.output.read_text()
    assert len(hub.requests_log) == requests_before


def test_offline_load_of_an_uncached_id_is_one_clear_line(case, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "in.jsonl").write_text(json.dumps(case.make_rows(tmp_path)[0]))
    assert main(["predict", "--scenario", case.scenario, "--model", f"{USER}/never-downloaded", "--input-file",
                 str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the local cache and HF_HUB_OFFLINE=1 is set" in err[0], err
    assert not (tmp_path / "out.jsonl").exists()


def test_predict_with_a_model_id_that_does_not_exist(case, hub, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(case.make_rows(tmp_path)[0]))
    ran = run_cli(["predict", "--scenario", case.scenario, "--model", "nobody/nothing", "--input-file",
                   str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
                  client_env(hub, tmp_path / "hf_home"))
    assert_one_error_line(ran, "'nobody/nothing' does not exist")
    assert not (tmp_path / "out.jsonl").exists()


def test_push_to_a_revision_creates_that_branch(case, model_folder, hub, tmp_path):
    repo_id = f"{USER}/{case.scenario}-branchy"
    ran = run_cli(["push", "--model", str(model_folder), "--repo-id", repo_id, "--revision", "v1"],
                  client_env(hub, tmp_path / "hf_home"))
    assert ran.code == 0, ran.err
    assert set(hub.files(repo_id)) == {".gitattributes"}  # main untouched: only the repo's first commit
    v1 = hub.files(repo_id, revision="v1")
    assert v1["model.safetensors"] == (model_folder / "model.safetensors").read_bytes()
    assert "config.json" in v1 and "README.md" in v1


# -- model cards -----------------------------------------------------------------------------------------------------
REQUIRED_SECTIONS = ("## Intended use and limits", "## Training data", "## Training procedure",
                     "## Evaluation results", "## How to use", "## Citation")


def test_model_card_matches_the_run_and_passes_hub_validation(case, pushed, hub, tmp_path):
    from huggingface_hub import ModelCard

    from fmhub.card import CARD_METRICS
    from fmhub.hubids import is_hub_id
    from fmhub.registry import get_scenario

    scenario = get_scenario(case.scenario)
    card = ModelCard.load(pushed.folder / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == scenario.library_name and meta["pipeline_tag"] == case.task
    assert {"fmhub", case.scenario} <= set(meta["tags"])
    assert meta["license"]
    extras = json.loads((pushed.folder / "fmhub.json").read_text())
    if is_hub_id(extras["backbone"]):
        assert meta["base_model"] == extras["backbone"]
    else:  # a local folder is no Hub id: no base_model rather than a broken link
        assert "base_model" not in meta
    # model-index: exactly the run's test metrics
    results = json.loads((pushed.folder / "all_results.json").read_text())
    in_card = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert in_card == {k: results[k] for k in CARD_METRICS if results.get(k) is not None}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert {r.task_type for r in card.data.eval_results} == {case.task}
    # readable sections, per-class metrics for every label, the confusion matrix beside it
    for section in REQUIRED_SECTIONS:
        assert section in card.text, section
    for label, per in results["per_class"].items():
        assert f"| {label} | {per['precision']:.3f} | {per['recall']:.3f} | {per['f1']:.3f} |" in card.text
    assert "![confusion matrix](confusion_matrix.png)" in card.text
    assert (pushed.folder / "confusion_matrix.png").stat().st_size > 1000
    assert f'pipeline("{case.task}", model="USER/NAME")' in card.text
    assert ("Not for clinical use" in card.text) is case.clinical

    # the Hub's metadata check: card.validate() posts the card to /api/validate-yaml, as a push does before its
    # commit. LocalHub checks the YAML only; the stricter checks are the ones above (model-index parsed into
    # EvalResults without ignore_metadata_errors, Hub ids only in base_model/datasets).
    requests_before = len(hub.requests_log)
    run_client(f"""
        from huggingface_hub import ModelCard
        ModelCard.load({str(pushed.folder / "README.md")!r}).validate()
    """, client_env(hub, tmp_path / "hf_home"))
    assert [(m, p) for m, p, _ in hub.requests_log[requests_before:]] == [("POST", "/api/validate-yaml")]
    assert ("POST", "/api/validate-yaml") in [(m, p) for m, p, _ in hub.requests_log]  # the push's own check


def card_probe(**info):
    """The customer-service scenario with extra card facts (a medical scenario gives `clinical_warning`)."""
    from fmhub.registry import get_scenario

    scenario = get_scenario("customer-service")
    base = scenario.card_info(None)
    scenario.card_info = lambda data: {**base, **info}
    return scenario


def test_card_clinical_warning_datasets_and_base_model(tiny_intent_model, tmp_path):
    from fmhub.card import write_model_card
    from fmhub.config import TrainConfig

    results = json.loads((tiny_intent_model / "all_results.json").read_text())
    extras = json.loads((tiny_intent_model / "fmhub.json").read_text())
    config = TrainConfig(scenario="customer-service", data="someone/intents", output_dir=str(tmp_path / "run"))

    probe = card_probe(clinical_warning=True, datasets=["someone/intents", str(tmp_path)], license="cc-by-nc-4.0",
                       citation="@article{medmnist, title={MedMNIST}}")
    write_model_card(tmp_path, probe, config, results, {**extras, "backbone": "sentence-transformers/x"})
    text = (tmp_path / "README.md").read_text()
    meta = card_metadata(text)
    assert meta["license"] == "cc-by-nc-4.0" and "not-for-clinical-use" in meta["tags"]
    assert meta["datasets"] == ["someone/intents"]  # the local path stays out of the metadata
    assert meta["base_model"] == "sentence-transformers/x"
    body = text.split("\n---\n", 1)[1]
    warning_at = body.index("> [!WARNING]\n> **Not for clinical use.**")
    assert warning_at < body.index("## Intended use and limits")  # above everything else
    assert "@article{medmnist" in body

    write_model_card(tmp_path, card_probe(clinical_warning="Research only: not a diagnosis.", base_model=None),
                     config, results, {**extras, "backbone": "fmhub/local-config"})
    text = (tmp_path / "README.md").read_text()
    assert "> [!WARNING]\n> Research only: not a diagnosis." in text
    assert "base_model" not in card_metadata(text)  # card_info said the backbone is not on the Hub

    write_model_card(tmp_path, card_probe(), config, results, {**extras, "backbone": str(tmp_path)})
    text = (tmp_path / "README.md").read_text()
    assert "[!WARNING]" not in text and "base_model" not in card_metadata(text)


# -- Spaces ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", SPACE_DIRS, ids=[p.name for p in SPACE_DIRS])
def test_space_readme_is_valid_spaces_yaml(space, tmp_path):
    from huggingface_hub import SpaceCard

    from fmhub.spaces import space_readme, write_space_folder

    card = SpaceCard.load(space / "README.md")
    meta = card.data.to_dict()
    pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().splitlines() if "==" in line)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins["gradio"]
    assert meta["app_file"] == "app.py" and (space / meta["app_file"]).is_file()
    for key in ("title", "license", "short_description"):
        assert meta.get(key), key
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    assert "models" not in meta  # the checked-in folders serve the embedded default
    # the checked-in folder is exactly what the generator writes (so a deploy uploads what the repo shows)
    generated = write_space_folder(space.name, tmp_path / space.name, bundle_package=False)
    assert tree_digest(generated) == tree_digest(space)
    linked = SpaceCard(space_readme(space.name, {space.name: f"{USER}/some-model"})).data.to_dict()
    assert linked["models"] == [f"{USER}/some-model"]
    assert "models" not in SpaceCard(space_readme(space.name, {space.name: str(space)})).data.to_dict()  # a folder


def test_spaces_deploy_creates_a_gradio_space_repo(case, deployed, hub, tmp_path):
    space_id, ran = deployed
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"deployed to {hub.url}/spaces/{space_id}"
    files = hub.files(space_id, repo_type="space")
    for name in ("app.py", "README.md", "requirements.txt", "fmhub_space.json", "fmhub/__init__.py",
                 "fmhub/ui/space.py", "fmhub/scenarios/__init__.py"):
        assert name in files, name
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert json.loads(files["fmhub_space.json"]) == {"scenario": case.scenario, "model": f"{USER}/{case.scenario}"}
    res = run_client(f"""
        from huggingface_hub import HfApi, SpaceCard
        info = HfApi().space_info({space_id!r})
        result["sdk"] = info.sdk
        result["models"] = SpaceCard.load({space_id!r}, repo_type="space").data.models
    """, client_env(hub, tmp_path / "hf_home"))
    assert res == {"sdk": "gradio", "models": [f"{USER}/{case.scenario}"]}
    assert_token_not_logged(hub)


def test_deploy_refuses_a_model_that_is_not_on_the_hub(hub, tmp_path):
    ran = run_cli(["spaces", "deploy", "--scenario", "customer-service", "--space-id", f"{USER}/orphan",
                   "--model", f"{USER}/never-pushed"], client_env(hub, tmp_path / "hf_home"))
    assert_one_error_line(ran, f"model '{USER}/never-pushed' is not on the Hub", "fmhub push")
    assert not hub.repo_exists(f"{USER}/orphan", repo_type="space")


@pytest.mark.parametrize("source", ["build", "hub"])
def test_space_folder_alone_starts_and_answers(case, source, pushed, deployed, hub, tmp_path):
    """The Space folder alone in an empty directory: `python app.py`, then one gradio_client call.

    build: `fmhub spaces build` output, model from FMHUB_MODEL (a folder). hub: the files the deploy uploaded,
    model from the Space's own fmhub_space.json, downloaded from the (local) Hub.
    """
    from gradio_client import Client, handle_file

    alone = tmp_path / "empty" / "space"
    if source == "build":
        assert main(["spaces", "build", "--scenario", case.scenario, "--output-dir", str(tmp_path / "built")]) == 0
        shutil.copytree(tmp_path / "built", alone)
        env = client_env(None, tmp_path / "hf_home", FMHUB_MODEL=str(pushed.folder), HF_HUB_OFFLINE="1")
    else:
        for rel, content in hub.files(deployed[0], repo_type="space").items():
            (alone / rel).parent.mkdir(parents=True, exist_ok=True)
            (alone / rel).write_bytes(content)
        env = client_env(hub, tmp_path / "hf_home")
    port = free_port()
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    log = tmp_path / "app.log"
    with open(log, "w") as log_fh:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=alone, env=env, stdout=log_fh,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while f"Running on local URL:  {url}" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        started = log.read_text()
        # the bundled package ran, not the repository's (PYTHONPATH is cleared, cwd is the copy)
        assert f"fmhub code from {alone.resolve() / 'fmhub'}" in started, started[-2000:]
        rows = case.make_rows(tmp_path)
        item = rows[0].get("text") or handle_file(rows[0]["path"])
        result = Client(url, verbose=False).predict(item, api_name=case.space_api)
        assert case.space_label(result) == local_predictions(case, pushed.folder, rows[:1])[0]["label"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert TOKEN not in log.read_text()


# -- Hub down, dropped connections, the token ------------------------------------------------------------------------
@pytest.fixture
def fresh_hub():
    with LocalHub(token=TOKEN, users=(USER,)) as local_hub:
        yield local_hub


def heal(hub: LocalHub) -> None:
    hub._faults.clear()  # the Hub is back: drop fault rules the failed push did not consume


UNAVAILABLE, UNREACHABLE = "the Hub is unavailable (HTTP 503)", "could not reach the Hub"
FAULTS = {
    # fault: (inject into the hub, or None for "no server at that address"; the request that fails and how often
    # the client sends it; what the one line says)
    "unreachable": (None, None, 0, f"{UNREACHABLE} (ConnectError"),
    "hub-down": (lambda h: h.fail_next(1000, 503), "POST /api/repos/create", 1, UNAVAILABLE),
    "commit-503": (lambda h: h.fail_next(1, 503, "/commit/"), "/commit/", 1, UNAVAILABLE),
    "commit-dropped": (lambda h: h.drop_next(1, "/commit/"), "/commit/", 1, f"{UNREACHABLE} (RemoteProtocolError"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_push_fails_fast_with_one_line_and_a_rerun_succeeds(fault, tiny_intent_model, fresh_hub, tmp_path):
    inject, route, attempts, reason = FAULTS[fault]
    folder = copy_model(tiny_intent_model, tmp_path / "model")
    before = tree_digest(folder)
    env = client_env(fresh_hub, tmp_path / "hf_home")
    args = ["push", "--model", str(folder), "--repo-id", f"{USER}/flaky"]
    if inject:
        inject(fresh_hub)
    failed = run_cli(args, env if inject else {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    line = assert_one_error_line(failed, f"push to {USER}/flaky failed: {reason}", "local folder is unchanged")
    print(f"{fault}: exit 2 after {failed.seconds:.1f} s: {line}")  # the figures behind the README (pytest -rP)
    assert failed.seconds < 30, failed.seconds  # no backoff on these calls: the time is mostly the interpreter start
    if route:
        assert len([p for m, p, _ in fresh_hub.requests_log if route in f"{m} {p}"]) == attempts  # not retried
    assert tree_digest(folder) == before
    if fresh_hub.repo_exists(f"{USER}/flaky"):
        assert set(fresh_hub.files(f"{USER}/flaky")) == {".gitattributes"}  # the failed commit left nothing

    heal(fresh_hub)
    again = run_cli(args, env)
    assert again.code == 0, again.err
    files = fresh_hub.files(f"{USER}/flaky")
    uploaded = {k: hashlib.sha256(v).hexdigest() for k, v in files.items() if k not in (".gitattributes", "README.md")}
    assert uploaded == {k: v for k, v in uploadable(before).items() if k != "README.md"}  # each file once, intact
    commits = [p for m, p, _ in fresh_hub.requests_log if m == "POST" and "/commit/" in p]
    assert len(commits) == (attempts if route == "/commit/" else 0) + 1
    assert tree_digest(folder) == before
    assert_token_not_logged(fresh_hub)


def test_preupload_503_is_retried_with_backoff(tiny_intent_model, fresh_hub, tmp_path):
    """huggingface_hub retries the preupload call on 5xx (sleeps 1, 2, 4, 8, 8 s): two failures cost about 3 s."""
    fresh_hub.fail_next(2, 503, "/preupload/")
    ran = run_cli(["push", "--model", str(tiny_intent_model), "--repo-id", f"{USER}/retried"],
                  client_env(fresh_hub, tmp_path / "hf_home"))
    assert ran.code == 0, ran.err
    assert ran.err.strip() == ""  # the library's retry warnings stay quiet
    assert len([p for m, p, _ in fresh_hub.requests_log if "/preupload/" in p]) == 3
    assert ran.seconds >= 3
    print(f"two preupload 503s: pushed after {ran.seconds:.1f} s")
    assert "model.safetensors" in fresh_hub.files(f"{USER}/retried")


def test_preupload_down_gives_up_after_bounded_retries(tiny_intent_model, fresh_hub, tmp_path):
    """Six 503s on preupload: the client's whole backoff (1+2+4+8+8 = 23 s), then one line, nothing committed."""
    fresh_hub.fail_next(6, 503, "/preupload/")
    ran = run_cli(["push", "--model", str(tiny_intent_model), "--repo-id", f"{USER}/gave-up"],
                  client_env(fresh_hub, tmp_path / "hf_home"))
    line = assert_one_error_line(ran, "the Hub is unavailable (HTTP 503)")
    print(f"preupload down: exit 2 after {ran.seconds:.1f} s: {line}")
    assert len([p for m, p, _ in fresh_hub.requests_log if "/preupload/" in p]) == 6
    assert 23 <= ran.seconds < 60, ran.seconds
    assert set(fresh_hub.files(f"{USER}/gave-up")) == {".gitattributes"}


def test_a_refused_token_is_reported_but_never_shown(tiny_intent_model, fresh_hub, tmp_path):
    wrong = "hf_fmhubWrongCanary9876543210fedcba"
    ran = run_cli(["push", "--model", str(tiny_intent_model), "--repo-id", f"{USER}/refused"],
                  client_env(fresh_hub, tmp_path / "hf_home", HF_TOKEN=wrong))
    assert_one_error_line(ran, "refused the token (HTTP 401)", "HF_TOKEN")
    assert wrong not in ran.err + ran.out and wrong not in repr(fresh_hub.requests_log)
    assert not fresh_hub.repo_exists(f"{USER}/refused")


# -- bad input: one clear line, exit code 2, nothing sent ------------------------------------------------------------
def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _swap_two_labels(config):
    config["id2label"]["0"], config["id2label"]["1"] = config["id2label"]["1"], config["id2label"]["0"]


def _placeholder_labels(folder: Path) -> None:
    _edit_config(folder, lambda c: c.update(id2label={str(i): f"LABEL_{i}" for i in range(len(c["id2label"]))},
                                            label2id={f"LABEL_{i}": i for i in range(len(c["id2label"]))}))
    extras = json.loads((folder / "fmhub.json").read_text())
    extras["label_names"] = [f"LABEL_{i}" for i in range(len(extras["label_names"]))]
    (folder / "fmhub.json").write_text(json.dumps(extras))


BAD_PUSHES = {
    "space-in-id": ("bad id", None, "invalid repo id 'bad id'"),
    "three-parts": ("a/b/c", None, "invalid repo id 'a/b/c'"),
    "dot-dot": ("../x", None, "invalid repo id '../x'"),
    "not-fmhub": (f"{USER}/x", lambda f: (f / "fmhub.json").unlink(), "is not an fmhub model folder"),
    "id2label": (f"{USER}/x", lambda f: _edit_config(f, _swap_two_labels), "label maps disagree: config.json"),
    "label2id": (f"{USER}/x", lambda f: _edit_config(f, lambda c: c["label2id"].update({"greeting": 0})),
                 "label2id is not the inverse"),
    "LABEL_0": (f"{USER}/x", _placeholder_labels, "placeholder labels (LABEL_0, ...)"),
}


@pytest.mark.parametrize("bad", list(BAD_PUSHES))
def test_bad_push_input_is_one_clear_line(bad, tiny_intent_model, tmp_path, capsys):
    repo_id, spoil, message = BAD_PUSHES[bad]
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "fmhub.json", "model.safetensors"):
        shutil.copy(tiny_intent_model / name, folder / name)
    if spoil:
        spoil(folder)
    before = tree_digest(folder)
    assert main(["push", "--model", str(folder), "--repo-id", repo_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmhub push: error: ") and message in err[0], err
    assert tree_digest(folder) == before


def test_push_of_a_plain_backbone_or_a_missing_folder(tiny_text_backbone, tmp_path, capsys):
    for folder in (tiny_text_backbone, tmp_path / "nothing-here"):
        assert main(["push", "--model", str(folder), "--repo-id", f"{USER}/x"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not an fmhub model folder" in err[0], err


def test_deploy_bad_input(tiny_intent_model, capsys):
    for args, message in [
        (["--space-id", "bad id"], "invalid Space id 'bad id'"),
        (["--space-id", f"{USER}/s", "--model", str(tiny_intent_model)], "is not a Hub model id; push the folder"),
        (["--space-id", f"{USER}/s", "--model", "a/b/c"], "is not a Hub model id"),
    ]:
        assert main(["spaces", "deploy", "--scenario", "customer-service", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_missing_token_is_one_clear_line(tiny_intent_model, hub, tmp_path):
    env = client_env(hub, tmp_path / "empty_hf_home", HF_TOKEN=None)
    requests_before = len(hub.requests_log)
    ran = run_cli(["push", "--model", str(tiny_intent_model), "--repo-id", f"{USER}/no-token"], env)
    assert_one_error_line(ran, "no Hugging Face token", "HF_TOKEN", "hf auth login")
    assert len(hub.requests_log) == requests_before  # refused before anything was sent
