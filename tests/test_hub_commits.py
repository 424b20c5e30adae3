"""A push whose commit landed but whose answer was lost: the re-run sees it and commits nothing (RELIABILITY item 16).

huggingface_hub warns that a commit POST answered by a 5xx or a dropped connection may still have been applied.
`fmhub push` compares the branch's files (git blob sha1, or the LFS sha256) with the folder before committing and
commits with `parent_commit`, so a re-run never makes a duplicate commit and a concurrent commit is refused.
Counted on `tests/hub_server.LocalHub`, which can apply a commit and then lose its answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub  # noqa: E402
from test_hub import TOKEN, USER, assert_one_error_line, client_env, run_cli, run_client, tree_digest  # noqa: E402

UP_TO_DATE = "already up to date"


@pytest.fixture
def fresh_hub():
    with LocalHub(token=TOKEN, users=(USER,)) as local_hub:
        yield local_hub


LABELS = ["greeting", "goodbye", "order_status"]


@pytest.fixture
def folder(tmp_path) -> Path:
    """A saved folder in miniature: what a push reads (manifest, label maps, finite weights, card, metrics).

    Built here rather than trained: these tests are about commits, and `tests/test_hub.py` pushes trained models.
    """
    import numpy as np
    from safetensors.numpy import save_file

    out = tmp_path / "model"
    out.mkdir()
    (out / "fmhub.json").write_text(json.dumps({"scenario": "customer-service", "label_names": LABELS}))
    (out / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS)),
                                                 "label2id": {n: i for i, n in enumerate(LABELS)}}))
    weights = {"classifier.weight": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
    save_file(weights, str(out / "model.safetensors"))
    card = '---\nlicense: mit\n---\n# tiny\n\npipeline("text-classification", model="USER/NAME")\n'
    (out / "README.md").write_text(card)
    (out / "all_results.json").write_text(json.dumps({"test_accuracy": 0.8125, "test_f1": 0.7931}))
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "optimizer.bin").write_bytes(b"never uploaded")
    return out


def commit_posts(hub: LocalHub) -> int:
    return len([p for m, p, _ in hub.requests_log if m == "POST" and "/commit/" in p])


def hub_matches_folder(hub: LocalHub, repo_id: str, folder: Path) -> bool:
    files = hub.files(repo_id)
    return all(hashlib.sha256(files[rel]).hexdigest() == digest for rel, digest in tree_digest(folder).items()
               if rel != "README.md" and not rel.startswith("checkpoint-"))


@pytest.mark.parametrize("loss", [None, 502, 504], ids=["dropped", "502", "504"])
def test_a_lost_commit_answer_is_detected_on_the_rerun(loss, folder, fresh_hub, tmp_path):
    repo_id = f"{USER}/lost-answer"
    env = client_env(fresh_hub, tmp_path / "hf_home")
    args = ["push", "--model", str(folder), "--repo-id", repo_id]
    fresh_hub.lose_next_response(1, "/commit/", status=loss)
    failed = run_cli(args, env)
    line = assert_one_error_line(failed, f"push to {repo_id} failed", "commits nothing")
    print(f"lost answer ({loss or 'dropped'}): {line}")
    history = fresh_hub.commits(repo_id)
    assert len(history) == 2 and history[0][1].startswith("Upload model")  # the Hub applied it all the same
    assert hub_matches_folder(fresh_hub, repo_id, folder)

    again = run_cli(args, env)
    assert again.code == 0, again.err
    assert UP_TO_DATE in again.err and "nothing committed" in again.err, again.err
    assert again.out.strip() == f"pushed to {fresh_hub.url}/{repo_id}/commit/{history[0][0]}"
    assert fresh_hub.commits(repo_id) == history  # no duplicate commit
    assert commit_posts(fresh_hub) == 1  # the re-run did not even send one
    # the client's own history listing agrees (LocalHub serves list_repo_commits)
    listed = run_client(f"""
        from huggingface_hub import HfApi
        result["ids"] = [c.commit_id for c in HfApi().list_repo_commits({repo_id!r})]
    """, env)
    assert listed["ids"] == [oid for oid, _ in history]


def test_a_changed_folder_is_still_pushed_and_an_unchanged_one_is_not(folder, fresh_hub, tmp_path):
    repo_id = f"{USER}/changing"
    env = client_env(fresh_hub, tmp_path / "hf_home")
    args = ["push", "--model", str(folder), "--repo-id", repo_id]
    first = run_cli(args, env)
    assert first.code == 0 and UP_TO_DATE not in first.err, first.err
    assert len(fresh_hub.commits(repo_id)) == 2

    # one byte changed, same size: told apart by the blob hash, not the size
    results = folder / "all_results.json"
    text = results.read_text()
    digit = next(i for i, ch in enumerate(text) if ch.isdigit())
    results.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:])
    assert results.stat().st_size == len(text.encode()) and results.read_text() != text
    (folder / "notes.txt").write_text("a file the first push did not have\n")
    second = run_cli(args, env)
    assert second.code == 0 and UP_TO_DATE not in second.err, second.err
    history = fresh_hub.commits(repo_id)
    assert len(history) == 3 and second.out.strip().endswith(f"/commit/{history[0][0]}")
    assert fresh_hub.files(repo_id)["all_results.json"] == results.read_bytes()
    assert fresh_hub.files(repo_id)["notes.txt"] == (folder / "notes.txt").read_bytes()

    third = run_cli(args, env)
    assert third.code == 0 and UP_TO_DATE in third.err, third.err
    assert fresh_hub.commits(repo_id) == history
    assert commit_posts(fresh_hub) == 2


def test_a_commit_that_lands_first_makes_the_push_refuse(folder, fresh_hub, tmp_path):
    """Another writer commits between fmhub reading the branch and committing: 412, nothing interleaved."""
    repo_id = f"{USER}/raced"
    env = client_env(fresh_hub, tmp_path / "hf_home")
    args = ["push", "--model", str(folder), "--repo-id", repo_id]
    fresh_hub.before_next("/commit/", lambda: fresh_hub.commit_files(repo_id, {"other.txt": b"x"}, "someone else"))
    raced = run_cli(args, env)
    assert_one_error_line(raced, f"push to {repo_id} failed", "HTTP 412", "another commit landed first")
    assert [title for _, title in fresh_hub.commits(repo_id)] == ["someone else", "initial commit"]

    again = run_cli(args, env)
    assert again.code == 0, again.err
    assert [title for _, title in fresh_hub.commits(repo_id)][1:] == ["someone else", "initial commit"]
    assert hub_matches_folder(fresh_hub, repo_id, folder) and fresh_hub.files(repo_id)["other.txt"] == b"x"


def test_remote_holds_compares_lfs_by_sha256_and_regular_files_by_blob_sha1():
    """The real Hub stores weights in LFS/xet (`lfs.sha256`), small files as git blobs (`blob_id`): both count."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    from fmhub.hub import remote_holds

    weights, config = b"\x00weights" * 100, b'{"a": 1}'
    ops = [CommitOperationAdd("model.safetensors", weights), CommitOperationAdd("config.json", config)]
    blob = f"blob {len(config)}\0"
    lfs = BlobLfsInfo(size=len(weights), sha256=hashlib.sha256(weights).hexdigest(), pointer_size=134)
    same = [RepoSibling("model.safetensors", len(weights), "pointer-oid", lfs),
            RepoSibling("config.json", len(config), hashlib.sha1(blob.encode() + config).hexdigest()),
            RepoSibling("extra-on-the-hub.txt", 1, "whatever")]
    assert remote_holds(same, ops)
    other = BlobLfsInfo(size=len(weights), sha256=hashlib.sha256(b"other").hexdigest(), pointer_size=134)
    assert not remote_holds([RepoSibling("model.safetensors", len(weights), "pointer-oid", other), *same[1:]], ops)
    assert not remote_holds([same[0], RepoSibling("config.json", len(config), "0" * 40)], ops)
    assert not remote_holds(same[:1], ops)  # a file missing on the Hub
    assert not remote_holds([same[0], RepoSibling("config.json", len(config) + 1, same[1].blob_id)], ops)


def test_local_hub_loses_answers_and_lists_commits(fresh_hub, tmp_path):
    """The fake Hub's side of it: `lose_next_response` applies the commit, then drops or fails the answer."""
    repo_id = f"{USER}/raw"
    env = client_env(fresh_hub, tmp_path / "hf_home")
    fresh_hub.lose_next_response(1, "/commit/", status=503)
    fresh_hub.lose_next_response(1, "/commit/")
    res = run_client(f"""
        from huggingface_hub import CommitOperationAdd, HfApi
        api = HfApi()
        api.create_repo({repo_id!r})
        result["errors"] = []
        for n in (1, 2):
            try:
                api.create_commit({repo_id!r}, [CommitOperationAdd(f"f{{n}}.txt", b"x")], commit_message=f"c{{n}}")
            except Exception as err:
                result["errors"].append(type(err).__name__)
        commits = api.list_repo_commits({repo_id!r})
        result["titles"] = [c.title for c in commits]
        result["authors"] = sorted({{a for c in commits for a in c.authors}})
    """, env)
    assert res["errors"] == ["HfHubHTTPError", "RemoteProtocolError"]
    assert res["titles"] == ["c2", "c1", "initial commit"] and res["authors"] == [USER]
    assert set(fresh_hub.files(repo_id)) == {".gitattributes", "f1.txt", "f2.txt"}


SPACE_RUN = """
    from pathlib import Path
    from huggingface_hub import CommitOperationAdd, HfApi
    from fmhub.hub import commit_once
    api = HfApi()
    api.create_repo({space_id!r}, repo_type="space", space_sdk="gradio", exist_ok=True)
    ops = [CommitOperationAdd(p.name, str(p)) for p in sorted(Path({folder!r}).iterdir())]
    try:
        result["url"], result["committed"] = commit_once(api, {space_id!r}, ops, "Deploy", repo_type="space")
    except Exception as err:
        result["error"] = type(err).__name__
"""


def test_commit_once_serves_a_space_deploy_too(fresh_hub, tmp_path):
    """`commit_once` is what `fmhub spaces deploy` can use in place of `upload_folder` (see the next test)."""
    space_id, space = f"{USER}/demo-space", tmp_path / "space"
    space.mkdir()
    (space / "app.py").write_text("print('hi')\n")
    (space / "README.md").write_text("---\nsdk: gradio\n---\n")
    env = client_env(fresh_hub, tmp_path / "hf_home")
    code = SPACE_RUN.format(space_id=space_id, folder=str(space))
    fresh_hub.lose_next_response(1, "/commit/", status=502)
    assert run_client(code, env)["error"] == "HfHubHTTPError"
    again = run_client(code, env)
    history = fresh_hub.commits(space_id, repo_type="space")
    assert again == {"url": f"{fresh_hub.url}/spaces/{space_id}/commit/{history[0][0]}", "committed": False}
    assert [title for _, title in history] == ["Deploy", "initial commit"]


@pytest.mark.skipif(not importlib.util.find_spec("hf_xet"), reason="needs hf_xet (the xet pipeline)")
def test_upload_folders_xet_pipeline_duplicates_a_commit_whose_answer_was_lost(fresh_hub, tmp_path):
    """Why fmhub commits through `commit_once`: with hf_xet installed (huggingface_hub's default), `upload_folder`
    retries the commit POST on a 5xx; when the Hub had applied it, the retry is a second, duplicate commit."""
    repo_id, folder = f"{USER}/dup", tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    fresh_hub.lose_next_response(1, "/commit/", status=502)
    run_client(f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo({repo_id!r})
        api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r}, commit_message="up")
    """, client_env(fresh_hub, tmp_path / "hf_home", HF_HUB_DISABLE_XET=None))
    assert [title for _, title in fresh_hub.commits(repo_id)] == ["up", "up", "initial commit"]
