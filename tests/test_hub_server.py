"""End-to-end tests of `tests/hub_server.LocalHub` with the real `huggingface_hub` client (no internet).

`huggingface_hub` reads `HF_ENDPOINT` once, when `huggingface_hub.constants` is imported, so every client-side
step runs in a fresh `python -c` subprocess whose environment points at the local hub. The environment is set
with `monkeypatch` in this process (so it is undone after each test) and inherited by the subprocess.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub  # noqa: E402

USER = "tester"
TOKEN = "hf_test_token_123"
_RESULT_MARK = "@@LOCALHUB_RESULT@@"

README = """---
license: mit
library_name: transformers
tags:
- fmhub
- test
model-index:
- name: tiny
  results: []
---
# Tiny test model
"""
CONFIG = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 99,
}
# Env vars that would change where/how the client talks to the Hub: never inherit them from the outer shell.
_CLIENT_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class Client:
    """Runs client snippets in subprocesses against a `LocalHub`."""

    def __init__(self, hub: LocalHub, tmp_path: Path):
        self.hub = hub
        self.tmp_path = tmp_path
        self._homes = 0

    def new_home(self) -> Path:
        """A fresh HF_HOME (empty cache, no stored token)."""
        self._homes += 1
        home = self.tmp_path / f"hf_home_{self._homes}"
        home.mkdir()
        return home

    def run(
        self, code: str, *, env: dict[str, str | None] | None = None, home: Path | None = None, timeout: float = 60
    ) -> dict:
        """Run `code` in a fresh interpreter; the snippet fills the dict `result`, which is returned.

        `env` overrides the environment (a `None` value unsets the variable); `home` is the HF_HOME to use
        (a fresh one by default, i.e. a clean cache).
        """
        child_env = dict(os.environ)
        child_env["HF_HOME"] = str(home or self.new_home())
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        script = (
            "import json, sys, time\nresult = {}\n"
            + textwrap.dedent(code)
            + (f"\nprint({_RESULT_MARK!r} + json.dumps(result))\n")
        )
        proc = subprocess.run(
            [sys.executable, "-c", script],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp_path,
        )
        assert proc.returncode == 0, f"client failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
        lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARK)]
        assert lines, f"no result printed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        return json.loads(lines[-1][len(_RESULT_MARK) :])


@pytest.fixture
def hub():
    with LocalHub(token=TOKEN, users=(USER, "fmhub-org")) as local_hub:
        yield local_hub


@pytest.fixture
def client(hub, tmp_path, monkeypatch) -> Client:
    for key in list(os.environ):
        if key.startswith(_CLIENT_ENV_PREFIXES) or key in _PROXY_VARS:
            monkeypatch.delenv(key)
    for key, value in hub.client_env(tmp_path / "unused_home").items():
        monkeypatch.setenv(key, value)
    return Client(hub, tmp_path)


def make_model_folder(root: Path) -> dict[str, bytes]:
    """config.json + a binary file (in a subfolder) + README.md with YAML front matter."""
    files = {
        "config.json": json.dumps(CONFIG, indent=2).encode(),
        "weights/model.bin": bytes(range(256)) * 8 + b"\x00\xff" * 100,
        "README.md": README.encode(),
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(content).hexdigest() for path, content in files.items()}


def assert_token_never_leaked(hub: LocalHub, *secrets: str) -> None:
    for method, path, headers in hub.requests_log:
        blob = json.dumps([method, path, headers])
        for secret in secrets:
            assert secret not in blob, f"token leaked in {method} {path} (outside Authorization)"


# ------------------------------------------------------------------------------------------------------------------


def test_whoami_and_bad_token_gives_401(client, hub):
    ok = client.run("""
        from huggingface_hub import HfApi
        me = HfApi().whoami()
        result.update(name=me["name"], orgs=[o["name"] for o in me["orgs"]], role=me["auth"]["accessToken"]["role"])
    """)
    assert ok == {"name": USER, "orgs": ["fmhub-org"], "role": "write"}

    bad = client.run(
        """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        for name, call in [("whoami", api.whoami), ("create_repo", lambda: api.create_repo("nope"))]:
            try:
                call()
                result[name] = "no error"
            except HfHubHTTPError as err:
                result[name] = {"type": type(err).__name__, "status": err.response.status_code, "msg": str(err)}
    """,
        env={"HF_TOKEN": "hf_wrong_token_456"},
    )
    assert bad["whoami"]["type"] == "HfHubHTTPError"
    assert bad["whoami"]["status"] == 401
    assert "Invalid user token" in bad["whoami"]["msg"]
    assert bad["create_repo"]["status"] == 401
    assert "Invalid credentials in Authorization header" in bad["create_repo"]["msg"]
    assert not hub.repo_exists(f"{USER}/nope")

    # Every authenticated request carried the token in Authorization only (the log redacts that header).
    auth_values = {h.get("authorization") or h.get("Authorization") for _, _, h in hub.requests_log}
    assert auth_values == {"Bearer <valid token>", "<redacted invalid credential>"}
    assert_token_never_leaked(hub, TOKEN, "hf_wrong_token_456")


def test_create_upload_folder_and_snapshot_roundtrip(client, hub, tmp_path):
    folder = tmp_path / "model"
    local_files = make_model_folder(folder)
    repo_id = f"{USER}/tiny-model"

    up = client.run(f"""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        url = api.create_repo({repo_id!r}, private=True)
        result["url"] = [str(url), url.repo_id, url.repo_type]
        result["exist_ok"] = api.create_repo({repo_id!r}, exist_ok=True).repo_id
        try:
            api.create_repo({repo_id!r})
        except HfHubHTTPError as err:
            result["conflict"] = err.response.status_code
        info = api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r}, commit_message="add model")
        result["oid"], result["commit_url"] = info.oid, info.commit_url
        mi = api.model_info({repo_id!r})
        result["info"] = dict(id=mi.id, sha=mi.sha, private=mi.private, card=mi.card_data.to_dict(),
                              siblings=sorted(s.rfilename for s in mi.siblings))
        result["files"] = api.list_repo_files({repo_id!r})
        result["exists"] = [api.repo_exists({repo_id!r}), api.repo_exists("{USER}/missing")]
    """)
    assert up["url"] == [f"{hub.url}/{repo_id}", repo_id, "model"]
    assert up["exist_ok"] == repo_id
    assert up["conflict"] == 409
    assert len(up["oid"]) == 40 and up["commit_url"] == f"{hub.url}/{repo_id}/commit/{up['oid']}"
    expected_paths = sorted([".gitattributes", *local_files])
    assert up["info"]["id"] == repo_id and up["info"]["sha"] == up["oid"] and up["info"]["private"] is True
    assert up["info"]["siblings"] == expected_paths and sorted(up["files"]) == expected_paths
    card = up["info"]["card"]
    assert card["license"] == "mit" and card["tags"] == ["fmhub", "test"] and card["library_name"] == "transformers"
    assert up["exists"] == [True, False]
    # Server side: bytes stored exactly as uploaded.
    stored = hub.files(repo_id)
    assert {k: stored[k] for k in local_files} == local_files

    # Clean subprocess, clean cache: snapshot_download gives identical bytes.
    down = client.run(f"""
        import hashlib, pathlib
        from huggingface_hub import snapshot_download, hf_hub_download
        from huggingface_hub.errors import (RemoteEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
        root = pathlib.Path(snapshot_download({repo_id!r}))
        result["snapshot_dir"] = root.name
        result["digest"] = {{p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in sorted(root.rglob("*")) if p.is_file()}}
        for name, kwargs in [("entry", dict(repo_id={repo_id!r}, filename="missing.txt")),
                             ("repo", dict(repo_id="{USER}/does-not-exist", filename="config.json")),
                             ("revision", dict(repo_id={repo_id!r}, filename="config.json", revision="nope"))]:
            try:
                hf_hub_download(**kwargs)
                result[name] = "no error"
            except Exception as err:
                result[name] = type(err).__name__
    """)
    assert down["snapshot_dir"] == up["oid"]
    assert down["digest"] == {**digests(local_files), ".gitattributes": down["digest"][".gitattributes"]}
    assert down["digest"] == tree_digest(folder) | {".gitattributes": down["digest"][".gitattributes"]}
    assert down["entry"] == "RemoteEntryNotFoundError"
    assert down["repo"] == "RepositoryNotFoundError"
    assert down["revision"] == "RevisionNotFoundError"

    # Private repo: anonymous clients get RepositoryNotFoundError (the Hub answers 401 + RepoNotFound).
    anon = client.run(
        f"""
        from huggingface_hub import hf_hub_download
        try:
            hf_hub_download({repo_id!r}, "config.json")
            result["error"] = None
        except Exception as err:
            result["error"] = type(err).__name__
    """,
        env={"HF_TOKEN": None},
    )
    assert anon["error"] == "RepositoryNotFoundError"
    assert_token_never_leaked(hub, TOKEN)


def test_upload_to_branch_v1(client, hub, tmp_path):
    repo_id = f"{USER}/branchy"
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "config.json").write_text('{"version": "main"}')
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "config.json").write_text('{"version": "v1"}')
    (tmp_path / "v1" / "extra.txt").write_text("only on v1")

    res = client.run(f"""
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo({repo_id!r})
        main_oid = api.upload_folder(repo_id={repo_id!r}, folder_path={str(tmp_path / "main")!r}).oid
        api.create_branch({repo_id!r}, branch="v1", exist_ok=True)
        api.create_branch({repo_id!r}, branch="v1", exist_ok=True)   # idempotent (409 swallowed)
        v1_oid = api.upload_folder(repo_id={repo_id!r}, folder_path={str(tmp_path / "v1")!r}, revision="v1").oid
        refs = api.list_repo_refs({repo_id!r})
        result["branches"] = {{b.name: b.target_commit for b in refs.branches}}
        result["oids"] = [main_oid, v1_oid]
        result["v1_files"] = sorted(api.list_repo_files({repo_id!r}, revision="v1"))
        result["main_files"] = sorted(api.list_repo_files({repo_id!r}))
        result["v1_config"] = open(hf_hub_download({repo_id!r}, "config.json", revision="v1")).read()
        result["main_config"] = open(hf_hub_download({repo_id!r}, "config.json")).read()
        result["v1_sha"] = api.model_info({repo_id!r}, revision="v1").sha
    """)
    main_oid, v1_oid = res["oids"]
    assert res["branches"] == {"main": main_oid, "v1": v1_oid}
    assert res["v1_sha"] == v1_oid
    assert res["v1_files"] == [".gitattributes", "config.json", "extra.txt"]
    assert res["main_files"] == [".gitattributes", "config.json"]
    assert json.loads(res["v1_config"]) == {"version": "v1"}
    assert json.loads(res["main_config"]) == {"version": "main"}
    assert hub.files(repo_id, revision="v1")["extra.txt"] == b"only on v1"
    assert "extra.txt" not in hub.files(repo_id)


def test_deletions_tree_listing_and_pr_commit(client, hub, tmp_path):
    repo_id = f"{USER}/ops"
    folder = tmp_path / "m"
    make_model_folder(folder)
    (folder / "weights" / "extra.bin").write_bytes(b"\x01\x02")
    res = client.run(f"""
        from huggingface_hub import HfApi, CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.hf_api import RepoFile, RepoFolder
        api = HfApi()
        api.create_repo({repo_id!r})
        api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r})
        top = api.list_repo_tree({repo_id!r})
        result["top"] = sorted((type(e).__name__, e.path) for e in top)
        sub = api.list_repo_tree({repo_id!r}, path_in_repo="weights", expand=True)
        result["sub"] = sorted((e.path, e.size, e.last_commit is not None) for e in sub)
        result["paths_info"] = sorted((type(e).__name__, e.path)
                                      for e in api.get_paths_info({repo_id!r}, ["config.json", "weights", "nope"]))
        result["file_exists"] = [api.file_exists({repo_id!r}, "config.json"), api.file_exists({repo_id!r}, "x")]
        api.delete_file("weights/extra.bin", {repo_id!r})
        api.create_commit({repo_id!r}, commit_message="ops", operations=[
            CommitOperationDelete("weights/"),                                   # deletedFolder
            CommitOperationAdd("notes/a.txt", b"hello"),
        ])
        result["after"] = sorted(api.list_repo_files({repo_id!r}))
        pr = api.create_commit({repo_id!r}, commit_message="pr", create_pr=True,
                               operations=[CommitOperationAdd("pr.txt", b"pr")])
        result["pr"] = [pr.pr_num, pr.pr_revision, pr.pr_url]
        refs = api.list_repo_refs({repo_id!r}, include_pull_requests=True)
        result["prs"] = [r.ref for r in refs.pull_requests]
    """)
    assert res["top"] == [
        ["RepoFile", ".gitattributes"],
        ["RepoFile", "README.md"],
        ["RepoFile", "config.json"],
        ["RepoFolder", "weights"],
    ]
    assert res["sub"] == [["weights/extra.bin", 2, True], ["weights/model.bin", 2248, True]]
    assert res["paths_info"] == [["RepoFile", "config.json"], ["RepoFolder", "weights"]]
    assert res["file_exists"] == [True, False]
    assert res["after"] == [".gitattributes", "README.md", "config.json", "notes/a.txt"]
    assert res["pr"] == [1, "refs/pr/1", f"{hub.url}/{repo_id}/discussions/1"]
    assert res["prs"] == ["refs/pr/1"]
    assert "pr.txt" in hub.files(repo_id, revision="refs/pr/1") and "pr.txt" not in hub.files(repo_id)


def test_space_gradio_and_dataset_repos(client, hub, tmp_path):
    space = tmp_path / "space"
    space.mkdir()
    (space / "app.py").write_text("import gradio as gr\n")
    (space / "README.md").write_text("---\ntitle: Demo\nsdk: gradio\napp_file: app.py\n---\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a,b\n1,2\n")

    res = client.run(f"""
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi()
        url = api.create_repo("demo", repo_type="space", space_sdk="gradio")
        result["space_url"] = [str(url), url.repo_type]
        api.upload_folder(repo_id="{USER}/demo", repo_type="space", folder_path={str(space)!r})
        info = api.space_info("{USER}/demo")
        result["space"] = dict(sdk=info.sdk, card_sdk=info.card_data.sdk, title=info.card_data.title,
                               siblings=sorted(s.rfilename for s in info.siblings))
        result["app"] = open(hf_hub_download("{USER}/demo", "app.py", repo_type="space")).read()
        api.create_repo("fmhub-org/data", repo_type="dataset")          # org namespace from `users`
        api.upload_folder(repo_id="fmhub-org/data", repo_type="dataset", folder_path={str(data)!r})
        result["dataset"] = open(snapshot_download("fmhub-org/data", repo_type="dataset") + "/train.csv").read()
        result["dataset_info_id"] = api.dataset_info("fmhub-org/data").id
    """)
    assert res["space_url"] == [f"{hub.url}/spaces/{USER}/demo", "space"]
    assert res["space"] == {
        "sdk": "gradio",
        "card_sdk": "gradio",
        "title": "Demo",
        "siblings": [".gitattributes", "README.md", "app.py"],
    }
    assert res["app"] == "import gradio as gr\n"
    assert res["dataset"] == "a,b\n1,2\n" and res["dataset_info_id"] == "fmhub-org/data"
    assert hub.repo_exists(f"{USER}/demo", repo_type="space")
    assert not hub.repo_exists(f"{USER}/demo")  # same name, other type
    assert hub.files("fmhub-org/data", repo_type="dataset")["train.csv"] == b"a,b\n1,2\n"
    assert {p for m, p, _ in hub.requests_log if "/resolve/" in p} >= {f"/spaces/{USER}/demo/resolve/main/app.py"}


def test_fail_next_503_is_bounded(client, hub, tmp_path):
    """model_info does not retry a 503. hf_hub_download's HEAD: one plain attempt, then (no cached file) a
    backoff round of up to 6 attempts with sleeps 1, 2, 4, 8, 8 s. Two failures therefore cost ~1 s."""
    repo_id = f"{USER}/flaky"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    client.run(f"""
        from huggingface_hub import HfApi
        HfApi().create_repo({repo_id!r})
        HfApi().upload_folder(repo_id={repo_id!r}, folder_path={str(tmp_path / "m")!r})
    """)

    hub.fail_next(1, 503, route_contains=f"GET /api/models/{repo_id}")
    hub.fail_next(2, 503, route_contains=f"HEAD /{repo_id}/resolve/")
    res = client.run(f"""
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
        t0 = time.monotonic()
        try:
            HfApi().model_info({repo_id!r})
            result["info_error"] = None
        except HfHubHTTPError as err:
            result["info_error"] = [type(err).__name__, err.response.status_code]
        result["info_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        result["download"] = open(hf_hub_download({repo_id!r}, "config.json")).read()
        result["download_s"] = time.monotonic() - t0
    """)
    assert res["info_error"] == ["HfHubHTTPError", 503]
    # model_info does not retry 5xx: a single request, answered at once (bound generous for loaded CI machines).
    info_calls = [p for m, p, _ in hub.requests_log if m == "GET" and p == f"/api/models/{repo_id}"]
    assert len(info_calls) == 1
    assert res["info_s"] < 5.0
    assert res["download"] == "{}"
    assert 0.9 <= res["download_s"] < 10.0, res["download_s"]  # exactly one backoff sleep of 1 s
    heads = [p for m, p, _ in hub.requests_log if m == "HEAD"]
    assert len(heads) == 3  # plain HEAD (503), backoff HEAD (503), sleep 1 s, backoff HEAD (200)


def test_drop_next_commit_then_rerun_succeeds(client, hub, tmp_path):
    repo_id = f"{USER}/dropped"
    folder = tmp_path / "m"
    local_files = make_model_folder(folder)
    upload = f"""
        import httpx2
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo({repo_id!r}, exist_ok=True)
        t0 = time.monotonic()
        try:
            result["oid"] = api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r}).oid
            result["error"] = None
        except Exception as err:
            result["error"] = type(err).__name__
            result["transport_error"] = isinstance(err, httpx2.TransportError)
        result["seconds"] = time.monotonic() - t0
    """
    hub.drop_next(1, route_contains="/commit/")
    first = client.run(upload)
    # HF_HUB_DISABLE_XET=1: single-commit path, the commit POST is not retried.
    assert first["error"] == "RemoteProtocolError" and first["transport_error"] is True
    assert first["seconds"] < 10
    assert len([p for m, p, _ in hub.requests_log if "/commit/" in p]) == 1  # no retry
    assert set(hub.files(repo_id)) == {".gitattributes"}  # the dropped commit was not applied

    second = client.run(upload)
    assert second["error"] is None and len(second["oid"]) == 40
    assert {k: v for k, v in hub.files(repo_id).items() if k != ".gitattributes"} == local_files
    commits = [p for m, p, _ in hub.requests_log if m == "POST" and "/commit/" in p]
    assert len(commits) == 2


def test_drop_next_commit_is_retried_on_xet_upload_path(client, hub, tmp_path):
    """Without HF_HUB_DISABLE_XET, upload_folder uses the pipelined path which retries the commit POST."""
    repo_id = f"{USER}/dropped-xet"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"a": 1}')
    hub.drop_next(1, route_contains="/commit/")
    res = client.run(
        f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo({repo_id!r})
        t0 = time.monotonic()
        result["oid"] = api.upload_folder(repo_id={repo_id!r}, folder_path={str(tmp_path / "m")!r}).oid
        result["seconds"] = time.monotonic() - t0
    """,
        env={"HF_HUB_DISABLE_XET": None},
    )
    assert len(res["oid"]) == 40 and 0.9 <= res["seconds"] < 10  # one backoff sleep of 1 s
    assert hub.files(repo_id)["config.json"] == b'{"a": 1}'
    assert len([p for m, p, _ in hub.requests_log if "/commit/" in p]) == 2


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "timm", "torch", "safetensors")),
    reason="transformers/timm/torch/safetensors not installed",
)
def test_transformers_autoconfig_and_timm_hf_hub(client, hub, tmp_path):
    timm_dir, bert_dir = tmp_path / "timm", tmp_path / "bert"
    bert_dir.mkdir()
    (bert_dir / "config.json").write_text(json.dumps(CONFIG))
    res = client.run(
        f"""
        import torch, timm
        from timm.models import save_for_hf
        from transformers import AutoConfig
        from huggingface_hub import HfApi, constants
        api = HfApi()
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
        save_for_hf(model, {str(timm_dir)!r}, safe_serialization=True)
        api.create_repo("tiny-timm")
        api.upload_folder(repo_id="{USER}/tiny-timm", folder_path={str(timm_dir)!r})
        api.create_repo("tiny-bert")
        api.upload_folder(repo_id="{USER}/tiny-bert", folder_path={str(bert_dir)!r})

        # The upload does not fill the cache: these load through HEAD/GET /resolve on the local hub.
        loaded = timm.create_model("hf-hub:{USER}/tiny-timm", pretrained=True)
        a, b = model.state_dict(), loaded.state_dict()
        result["timm_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        result["timm_classes"] = loaded.num_classes
        config = AutoConfig.from_pretrained("{USER}/tiny-bert")
        result["bert"] = [type(config).__name__, config.hidden_size, config.vocab_size]
        result["endpoint"] = constants.ENDPOINT
    """,
        timeout=120,
    )
    assert res["timm_equal"] is True and res["timm_classes"] == 10
    assert res["bert"] == ["BertConfig", 32, 99]
    assert res["endpoint"] == hub.url
    assert "model.safetensors" in hub.files(f"{USER}/tiny-timm")
