"""Hugging Face Hub integration: resolving a folder or Hub id, downloading, pushing a saved folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from pathlib import Path

from fmhub.card import REPO_PLACEHOLDER
from fmhub.errors import FmhubError
from fmhub.hubids import REPO_ID, check_repo_id, redact
from fmhub.model_folder import MANIFEST, ModelFolder


# -- resolving models ----------------------------------------------------------------------------------------------
def resolve_model(ref: str, scenario: str) -> Path:
    """A local folder for `ref`: a folder -> itself, `user/name` -> a Hub download (never trains anything: the
    embedded default is `fmhub.defaults`' job)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not ModelFolder(path).is_model():
            raise FmhubError(f"{ref} is not a model folder (no {MANIFEST} or config.json)")
    elif path.exists():
        raise FmhubError(f"{ref} is a file; --model wants a saved model folder or a Hub id user/name")
    elif not REPO_ID.match(ref):
        raise FmhubError(f"model not found: {ref!r} is neither a folder nor a Hub id of the form user/name")
    else:
        path = download_model(ref)
    ModelFolder(path).check_trained_for(scenario, ref)
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
        raise FmhubError(f"downloading {repo_id!r} failed: {redact(str(err))}") from None


def _hub_error(err: Exception, token: str | None = None) -> str:
    """One line for a failed Hub call: HTTP errors by status, connection errors by kind. Never the token."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        if status == 401:
            return "the Hub refused the token (HTTP 401); check HF_TOKEN or run `hf auth login`"
        if status == 403:
            return "this token may not write there (HTTP 403); use your own namespace or an organisation you belong to"
        if status == 412:  # create_commit(parent_commit=...) refused: the branch moved since it was read
            return "the branch moved on the Hub during the push (HTTP 412: another commit landed first)"
        if status >= 500:
            return f"the Hub is unavailable (HTTP {status})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return redact(f"HTTP {status}: {first}", token)
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return redact(f"could not reach the Hub ({type(err).__name__}{': ' + detail if detail else ''})", token)


# run by-products that never go to the Hub: checkpoints (optimizer state, pickles), best-weights copy, TensorBoard logs
UPLOAD_IGNORE = ["checkpoint-*", ".tmp-*", ".old-*", ".prev-*", ".fmhub-*", "best_model.safetensors", "runs/*",
                 "*.tmp"]  # .fmhub-*: the folder's owner marker and run lock, which mean nothing elsewhere


def hub_token() -> str:
    """HF_TOKEN or the saved login; never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FmhubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again")
    return token


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


def _git_blob_sha1(operation) -> str:
    """The git blob oid of an upload's content: what the Hub reports as `blobId` for a file not stored in LFS."""
    digest = hashlib.sha1(b"blob %d\0" % operation.upload_info.size)
    with operation.as_file() as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remote_holds(siblings, operations) -> bool:
    """True when the Hub already has every file of `operations` with the same content.

    `siblings` come from `repo_info(files_metadata=True)`: an LFS/xet file is compared by its sha256 (`lfs.sha256`),
    any other by its git blob sha1 (`blob_id`). Sizes first, so a changed file is usually told without hashing.
    Files on the Hub that the folder lacks do not count: a push adds and replaces, it never deletes.
    """
    remote = {sibling.rfilename: sibling for sibling in siblings}
    for operation in operations:
        sibling = remote.get(operation.path_in_repo)
        if sibling is None:
            return False
        lfs = sibling.lfs
        size = lfs.size if lfs else sibling.size
        if size != operation.upload_info.size:
            return False
        if lfs:
            if lfs.sha256 != operation.upload_info.sha256.hex():
                return False
        elif sibling.blob_id != _git_blob_sha1(operation):
            return False
    return True


def commit_once(api, repo_id: str, operations: list, commit_message: str, repo_type: str = "model",
                revision: str | None = None) -> tuple[str, bool]:
    """One commit of `operations`, unless the branch already holds exactly these files: (commit URL, committed).

    The commit is one request (huggingface_hub's `create_commit` does not retry it; `upload_folder`'s xet pipeline
    does, and warns that a retried commit whose answer was lost is a duplicate). Its answer can still be lost after
    the Hub applied it (a 5xx from a gateway, a dropped connection), so the branch's files are compared with
    `operations` first: a re-run after such a loss finds them there and commits nothing. `parent_commit` names the
    head that was compared, so a commit landing in between makes this one fail (HTTP 412) instead of interleaving.
    """
    head = api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True)
    if remote_holds(head.siblings or [], operations):
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{api.endpoint}/{prefix}{repo_id}/commit/{head.sha}", False
    info = api.create_commit(repo_id, operations, repo_type=repo_type, revision=revision, parent_commit=head.sha,
                             commit_message=commit_message)
    return info.commit_url, True


def push_model(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """create_repo(exist_ok=True) + one commit of the folder, after checking the repo id, labels, weights, token.

    The local folder is only read. Re-running the same command is the retry, and never a duplicate: when the Hub
    already holds exactly these files (an earlier push landed though its answer was lost), nothing is committed
    (`commit_once`). Returns the URL of the commit that holds the files.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    folder = Path(folder)
    ModelFolder(folder).check_label_maps()
    check_weights_finite(folder)
    token = hub_token()
    api = HfApi(token=token)
    operations = upload_operations(folder, repo_id)
    try:
        with quiet_hub_logs():
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            url, committed = commit_once(api, repo_id, operations, revision=revision,
                                         commit_message=f"Upload {folder.name} (fine-tuned with fmhub)")
    except Exception as err:
        reason = describe_hub_failure(err, token)
        if reason is None:
            raise
        raise FmhubError(f"push to {repo_id} failed: {reason}; the local folder is unchanged, retry with "
                         f"`fmhub push --model {folder} --repo-id {repo_id}` (safe: if this push landed after all, "
                         "the retry sees it and commits nothing)") from None
    if not committed:
        print(f"fmhub push: already up to date: {repo_id} holds these {len(operations)} files at "
              f"{url.rsplit('/', 1)[-1][:8]} (an earlier push landed); nothing committed", file=sys.stderr)
    return url


def publish_space(api, token: str | None, space_id: str, folder: Path, sdk: str, message: str,
                  private: bool = False, check=None) -> None:
    """Create the Space repo (`sdk`: gradio, static) if needed and upload `folder` as one commit request, skipped
    when the Space already holds these files (`commit_once`: upload_folder retries a commit on a 5xx and so
    duplicates one whose answer was lost). `check()`, if given, runs first under the same Hub error handling (e.g.
    that the linked models exist). A Hub failure becomes one FmhubError line saying that re-running is safe."""
    try:
        if check is not None:
            check()
        with quiet_hub_logs():
            api.create_repo(space_id, repo_type="space", space_sdk=sdk, private=private, exist_ok=True)
            commit_once(api, space_id, upload_operations(folder, space_id), message, repo_type="space")
    except FmhubError:
        raise
    except Exception as err:
        reason = describe_hub_failure(err, token)
        if reason is None:
            raise
        raise FmhubError(f"deploying {space_id} failed: {reason}; re-run the same command to retry") from None


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
        return redact(" ".join(str(err).split()), token)
    if isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests"):
        return _hub_error(err, token)
    return None
