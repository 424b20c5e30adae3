"""In-process fake of the Hugging Face Hub HTTP API, for tests that must run without internet.

Standard library only. Start a :class:`LocalHub`, point the client at it with ``HF_ENDPOINT=hub.url``
(plus ``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_DISABLE_XET=1``, see :meth:`LocalHub.client_env`) and the real
``huggingface_hub`` client (and everything built on it: ``transformers``, ``timm``) talks to it end to end.

``huggingface_hub`` reads ``HF_ENDPOINT`` when it is first imported (``huggingface_hub.constants``), so the
client side is best run in a subprocess started with that environment.

What is served (``{type}`` is ``models``, ``datasets`` or ``spaces``; ``{rev}`` is a branch name or a commit
sha, URL-quoted by the client, e.g. ``refs%2Fpr%2F1``):

=========================================================  =============================================
``GET  /api/whoami-v2``                                      token check (401 + JSON error if bad/missing)
``POST /api/repos/create`` / ``POST /api/repos/delete``      ``create_repo`` (409 if it exists) / ``delete_repo``
``POST /api/validate-yaml``                                  README front matter check made by ``create_commit``
``GET  /api/{type}/{repo}[/revision/{rev}]``                 ``repo_info`` / ``model_info`` / ``dataset_info`` /
                                                             ``space_info`` (``sha``, ``siblings``, ``cardData``...)
``GET  /api/{type}/{repo}/tree/{rev}[/{path}]``              ``list_repo_tree`` / ``list_repo_files``
``POST /api/{type}/{repo}/paths-info/{rev}``                 ``get_paths_info``
``GET  /api/{type}/{repo}/refs``                             ``list_repo_refs``
``GET  /api/{type}/{repo}/commits/{rev}``                    ``list_repo_commits`` (newest first, one page)
``POST|DELETE /api/{type}/{repo}/branch/{branch}``           ``create_branch`` / ``delete_branch``
``POST /api/{type}/{repo}/preupload/{rev}``                  every file answered ``"uploadMode": "regular"``
``POST /api/{type}/{repo}/commit/{rev}``                     NDJSON: ``header``, ``file`` (base64),
                                                             ``deletedFile``, ``deletedFolder``; ``?create_pr=1``
``HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}``  downloads (``Range`` supported)
=========================================================  =============================================

Downloads carry ``X-Repo-Commit``, ``ETag`` (git blob sha1 of the content), ``Content-Length`` and never any
``X-Xet-*`` header, so the client always takes the plain HTTP path. Errors carry the ``X-Error-Code`` values
the client maps to its exceptions: ``RepoNotFound`` -> ``RepositoryNotFoundError``, ``RevisionNotFound`` ->
``RevisionNotFoundError``, ``EntryNotFound`` -> ``RemoteEntryNotFoundError``.

Not implemented: LFS/xet uploads (never requested, since every file is "regular"), tags, discussions,
``.gitignore`` handling in preupload, search/listing endpoints. Unknown routes get a
404 JSON error (without ``X-Error-Code``).

Auth model: a request with the right ``Authorization: Bearer <token>`` acts as ``users[0]`` and may write to
every namespace in ``users`` (the others are reported as its orgs by ``whoami``). A wrong token gets a 401 on
every route. No token: public repos are readable, everything else answers 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub"]

_TYPES_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
_REPO_SUBROUTES = {"revision", "tree", "preupload", "commit", "commits", "branch", "refs", "paths-info"}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def _git_blob_sha1(content: bytes) -> str:
    """Git blob oid of `content`: what the client computes for "regular" files (`sha.git_hash`)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------------------------------------------------
# Minimal YAML subset, enough for README.md front matter (cardData): block maps and lists (incl. lists of maps),
# flow lists of scalars, quoted/plain scalars, `|` / `>` block scalars, comments.
# --------------------------------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"""^("[^"]*"|'[^']*'|[^\s"'#\-\[\]{},][^:#]*?|-[^\s:#][^:#]*?)\s*:(?:\s+(.*))?$""")


def _yaml_scalar(text: str):
    text = text.strip()
    if " #" in text and not text.startswith(("'", '"')):
        text = text.split(" #", 1)[0].rstrip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_yaml_scalar(part) for part in inner.split(",")] if inner else []
    if text == "{}":
        return {}
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _yaml_load(text: str):
    lines = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            lines.append(None)  # keep blank lines for block scalars
            continue
        lines.append((len(raw) - len(raw.lstrip(" ")), raw.strip()))

    def next_line(i):
        while i < len(lines) and lines[i] is None:
            i += 1
        return i

    def block_scalar(i, indent, style):
        parts = []
        while i < len(lines) and (lines[i] is None or lines[i][0] > indent):
            parts.append("" if lines[i] is None else lines[i][1])
            i += 1
        joined = "\n".join(parts) if style.startswith("|") else " ".join(p for p in parts if p)
        return joined.rstrip("\n") + ("" if style.endswith("-") else "\n"), i

    def value_after_key(i, indent, rest):
        """Value of `key:` whose remainder is `rest` (line i already consumed)."""
        if rest is None or rest == "":
            j = next_line(i)
            if j < len(lines) and (lines[j][0] > indent or (lines[j][0] == indent and lines[j][1].startswith("-"))):
                return parse_block(j, lines[j][0])
            return None, j
        if rest in ("|", "|-", ">", ">-"):
            return block_scalar(i, indent, rest)
        return _yaml_scalar(rest), i

    def parse_block(i, indent):
        i = next_line(i)
        if i < len(lines) and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
            return parse_list(i, indent)
        return parse_map(i, indent)

    def parse_map(i, indent):
        out = {}
        i = next_line(i)
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            match = _KEY_RE.match(lines[i][1])
            if match is None:
                i = next_line(i + 1)  # not understood: skip the line
                continue
            key = match.group(1).strip()
            if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
                key = key[1:-1]
            out[key], i = value_after_key(i + 1, indent, match.group(2))
            i = next_line(i)
        return out, i

    def parse_list(i, indent):
        out = []
        i = next_line(i)
        while i < len(lines) and lines[i][0] == indent and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
            item = lines[i][1][1:].strip()
            if not item:
                j = next_line(i + 1)
                if j < len(lines) and lines[j][0] > indent:
                    value, i = parse_block(j, lines[j][0])
                else:
                    value, i = None, j
            elif _KEY_RE.match(item) and not item.startswith(("'", '"', "[")):
                lines[i] = (indent + 2, item)  # "- key: value" starts a map indented by 2
                value, i = parse_map(i, indent + 2)
            else:
                value, i = _yaml_scalar(item), i + 1
            out.append(value)
            i = next_line(i)
        return out, i

    start = next_line(0)
    if start >= len(lines):
        return {}
    return parse_block(start, lines[start][0])[0]


def _front_matter(readme: bytes) -> dict | None:
    """YAML front matter of a README.md as a dict, `None` if there is none."""
    text = readme.decode("utf-8", errors="replace").lstrip("\ufeff")
    match = re.match(r"^---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*$", text, flags=re.S | re.M)
    if match is None:
        return None
    try:
        data = _yaml_load(match.group(1))
    except Exception:  # the parser is best effort
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Commit:
    oid: str
    files: dict[str, bytes]
    title: str
    date: str
    parent: str | None


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    next_pr: int = 1

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if len(revision) >= 7 and re.fullmatch(r"[0-9a-f]+", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class _Fault:
    kind: str  # "fail", "drop" (the request has no effect), "lose" (it takes effect, the answer is lost) or "hook"
    remaining: int
    route_contains: str
    status: int = 503  # "lose": 0 closes the connection instead of answering with this status
    action: Callable[[], None] | None = None  # "hook": run before the request is served


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


class LocalHub:
    """In-memory Hugging Face Hub served over HTTP on ``127.0.0.1`` (random free port), in a background thread.

    Usage::

        with LocalHub() as hub:                         # or hub = LocalHub().start(); ...; hub.stop()
            env = hub.client_env(tmp_path / "hf_home")  # HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_DISABLE_XET...
            subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, check=True)
            assert hub.files("tester/my-model")["config.json"] == b"{}"

    Attributes:
        url: base URL of the server (``"http://127.0.0.1:PORT"``), set by :meth:`start`; use it as ``HF_ENDPOINT``.
        token: the one valid token.
        users: namespaces the token may write to; ``users[0]`` is the user, the others its orgs.
        requests_log: ``(method, path, headers)`` of every request received, in arrival order, including failed
            and dropped ones. ``path`` includes the query string. The ``Authorization`` value is redacted to
            ``"Bearer <valid token>"`` or ``"<redacted invalid credential>"``, so the real token
            appearing anywhere in the log means it leaked outside the ``Authorization`` header.
    """

    def __init__(self, token: str = "hf_test_token_123", users=("tester",)):
        if not users:
            raise ValueError("`users` must name at least one user")
        self.token = token
        self.users = tuple(users)
        self.url: str = ""
        self.requests_log: list[tuple[str, str, dict]] = []
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: list[_Fault] = []
        self._counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread. Returns `self`."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent). The in-memory content stays readable."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- fault injection ---------------------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, route_contains: str = "") -> None:
        """Answer the next `n` requests matching `route_contains` with `status` and a JSON error body.

        A request matches when `route_contains` is a substring of ``"METHOD /path?query"`` (``""`` matches every
        request). Rules are consumed in the order they were added; the failing request has no effect.
        """
        if n <= 0:
            return
        with self._lock:
            self._faults.append(_Fault("fail", int(n), route_contains, int(status)))

    def drop_next(self, n: int = 1, route_contains: str = "/commit/") -> None:
        """Close the connection of the next `n` matching requests without answering (matching as in `fail_next`).

        The request (headers and body) is read, then the socket is closed: the client sees the server disconnect
        without a response (``httpx`` raises ``RemoteProtocolError``). The dropped request has no effect.
        """
        if n <= 0:
            return
        with self._lock:
            self._faults.append(_Fault("drop", int(n), route_contains))

    def lose_next_response(self, n: int = 1, route_contains: str = "/commit/", status: int | None = None) -> None:
        """Serve the next `n` matching requests (a commit is applied), then lose the answer (matching: `fail_next`).

        ``status=None`` closes the connection without a response, as a gateway timeout or a dropped connection does
        (``httpx`` raises ``RemoteProtocolError``); a status (e.g. 502) answers with that error instead of the real
        result. Either way the client cannot tell whether the request took effect.
        """
        if n <= 0:
            return
        with self._lock:
            self._faults.append(_Fault("lose", int(n), route_contains, int(status or 0)))

    def before_next(self, route_contains: str, action: Callable[[], None]) -> None:
        """Run `action()` (e.g. :meth:`commit_files`: a concurrent writer) just before the next matching request."""
        with self._lock:
            self._faults.append(_Fault("hook", 1, route_contains, action=action))

    # -- setup -------------------------------------------------------------------------------------------------------

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes],
        title: str = "direct commit",
        repo_type: str = "model",
        revision: str = "main",
    ) -> str:
        """Commit `files` (added or replaced) straight to a branch, as another writer would; returns the oid."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            base = repo.commits[repo.branches[revision]]
            oid = self._new_oid(repo_type, repo_id, revision, title)
            repo.commits[oid] = _Commit(oid, {**base.files, **files}, title, _now_iso(), base.oid)
            repo.branches[revision] = oid
            return oid

    # -- inspection --------------------------------------------------------------------------------------------------

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[tuple[str, str]]:
        """``(oid, title)`` of every commit reachable from `revision`, newest first (the repo's first commit last)."""
        with self._lock:
            repo, commit = self._repo_at(repo_id, repo_type, revision)
            history = []
            while commit is not None:
                history.append((commit.oid, commit.title))
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Copy of ``{path: content}`` of a repo at a branch or commit sha. Raises `KeyError` if unknown."""
        with self._lock:
            return dict(self._repo_at(repo_id, repo_type, revision)[1].files)

    def _repo_at(self, repo_id: str, repo_type: str, revision: str):
        """(repo, commit) of `revision` (a branch or commit sha); `KeyError` if either is unknown. Hold the lock."""
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {repo_type} repo {repo_id!r}")
        return repo, commit

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def client_env(self, hf_home) -> dict[str, str]:
        """Environment variables a client process needs to use this hub (merge them into ``os.environ``).

        ``HF_ENDPOINT`` (read at import time by ``huggingface_hub``), ``HF_TOKEN``, ``HF_HOME`` (fresh cache and
        token location), ``HF_HUB_DISABLE_XET=1`` (single-commit upload path, no xet), and telemetry/progress-bar
        switches to keep the request log and output clean.
        """
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    # -- internals: repos --------------------------------------------------------------------------------------------

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\0".join((str(self._counter), str(time.time()), *parts)).encode()).hexdigest()

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        route = f"{method} {path}"
        with self._lock:
            for fault in self._faults:
                if fault.route_contains in route:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _get_repo(self, repo_type: str, repo_id: str, auth: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and auth != "valid"):
            # Like the real Hub: 401 when anonymous, 404 when authenticated.
            raise _HttpError(
                404 if auth == "valid" else 401,
                "Repository not found",
                "RepoNotFound",
                {"X-Error-Message": "Repository not found"},
            )
        return repo

    def _require_write(self, auth: str | None, namespace: str) -> None:
        if auth != "valid":
            raise _HttpError(401, "You must be authenticated to perform this action.")
        if namespace not in self.users:
            raise _HttpError(403, f"You don't have the rights to write to the namespace '{namespace}'.")

    @staticmethod
    def _get_commit(repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(
                404,
                f"Invalid rev id: {revision}",
                "RevisionNotFound",
                {"X-Error-Message": "Invalid rev id"},
            )
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None) -> _Repo:
        now = _now_iso()
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, sdk=sdk, created_at=now)
        oid = self._new_oid(repo_type, repo_id, "initial commit")
        repo.commits[oid] = _Commit(oid, {".gitattributes": _GITATTRIBUTES}, "initial commit", now, None)
        repo.branches["main"] = oid
        self._repos[(repo_type, repo_id)] = repo
        return repo

    # -- internals: route handlers (called with self._lock held); each returns (status, headers, body) ----------

    def _whoami(self, auth):
        if auth is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        user = self.users[0]
        return (
            200,
            {},
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@localhub.test",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in self.users[1:]
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "localhub",
                        "role": "write",
                        "createdAt": "2024-01-01T00:00:00.000Z",
                    },
                },
            },
        )

    def _route_create_repo(self, auth, body):
        payload = _json_body(body)
        name, org = payload.get("name"), payload.get("organization")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or "--" in name:
            raise _HttpError(400, f"Invalid repo name: {name!r}")
        namespace = org or self.users[0]
        self._require_write(auth, namespace)
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HttpError(400, f"Invalid repo type: {repo_type!r}")
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in _SPACE_SDKS:
            raise _HttpError(400, f"Invalid or missing space sdk: {sdk!r}")
        repo_id = f"{namespace}/{name}"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            return 409, {}, {"error": f"You already created this {repo_type} repo", "url": self._repo_url(existing)}
        visibility = payload.get("visibility")
        private = visibility in ("private", "protected") if visibility is not None else bool(payload.get("private"))
        repo = self._create_repo(repo_type, repo_id, private, sdk if repo_type == "space" else None)
        return 200, {}, {"url": self._repo_url(repo), "name": repo_id, "id": repo_id}

    def _route_delete_repo(self, auth, body):
        payload = _json_body(body)
        namespace = payload.get("organization") or self.users[0]
        self._require_write(auth, namespace)
        repo_id = f"{namespace}/{payload.get('name')}"
        self._get_repo(payload.get("type") or "model", repo_id, auth)
        del self._repos[(payload.get("type") or "model", repo_id)]
        return 200, {}, {}

    def _route_validate_yaml(self, body):
        content = _json_body(body).get("content") or ""
        if content.lstrip().startswith("---") and _front_matter(content.encode()) is None:
            return 400, {}, {"errors": [{"message": "Invalid or unterminated YAML front matter"}], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def _route_info(self, repo: _Repo, revision: str, params: dict):
        commit = self._get_commit(repo, revision)
        with_blobs = _truthy(params.get("blobs"))
        siblings = []
        for path in sorted(commit.files):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(commit.files[path]), blobId=_git_blob_sha1(commit.files[path]))
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        info = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        card_data = _front_matter(commit.files["README.md"]) if "README.md" in commit.files else None
        if card_data is not None:
            info["cardData"] = card_data
            tags = card_data.get("tags")
            info["tags"] = [str(t) for t in tags] if isinstance(tags, list) else []
            if isinstance(card_data.get("license"), str):
                info["tags"].append(f"license:{card_data['license']}")
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, downloads=0)
            if card_data is not None:
                for key in ("library_name", "pipeline_tag"):
                    if isinstance(card_data.get(key), str):
                        info[key] = card_data[key]
            if "config.json" in commit.files:
                try:
                    config = json.loads(commit.files["config.json"])
                    if isinstance(config, dict):
                        info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
                except ValueError:
                    pass
        elif repo.repo_type == "dataset":
            info.update(downloads=0)
        else:
            info.update(
                sdk=repo.sdk,
                subdomain=repo.repo_id.replace("/", "-").lower(),
                host=f"{self.url}/spaces/{repo.repo_id}",
            )
        return 200, {}, info

    def _tree_entry(self, commit: _Commit, path: str, is_dir: bool, expand: bool) -> dict:
        if is_dir:
            prefix = path + "/"
            listing = sorted((p, _git_blob_sha1(c)) for p, c in commit.files.items() if p.startswith(prefix))
            entry = {"type": "directory", "oid": hashlib.sha1(repr(listing).encode()).hexdigest(), "path": path}
        else:
            content = commit.files[path]
            entry = {"type": "file", "oid": _git_blob_sha1(content), "size": len(content), "path": path}
        if expand:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    def _route_tree(self, repo: _Repo, revision: str, path: str, params: dict):
        commit = self._get_commit(repo, revision)
        recursive, expand = _truthy(params.get("recursive")), _truthy(params.get("expand"))
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in commit.files:
            raise _HttpError(400, f"{path} is a file, not a directory")
        below = [p for p in commit.files if p.startswith(prefix)]
        if path and not below:
            raise _HttpError(
                404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid}
            )
        files, dirs = set(), set()
        for p in below:
            rel_parts = p[len(prefix) :].split("/")
            if recursive:
                files.add(p)
                for k in range(1, len(rel_parts)):
                    dirs.add(prefix + "/".join(rel_parts[:k]))
            elif len(rel_parts) == 1:
                files.add(p)
            else:
                dirs.add(prefix + rel_parts[0])
        entries = [self._tree_entry(commit, d, True, expand) for d in sorted(dirs)]
        entries += [self._tree_entry(commit, f, False, expand) for f in sorted(files)]
        return 200, {}, entries

    def _route_paths_info(self, repo: _Repo, revision: str, body: bytes):
        commit = self._get_commit(repo, revision)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        expand = _truthy((form.get("expand") or [None])[0])
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self._tree_entry(commit, path, False, expand))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(self._tree_entry(commit, path, True, expand))
        return 200, {}, out

    def _route_refs(self, repo: _Repo, params: dict):
        def ref(name: str) -> dict:
            return {"name": name, "ref": f"refs/heads/{name}", "targetCommit": repo.branches[name]}

        data = {
            "branches": [ref(b) for b in sorted(repo.branches) if not b.startswith("refs/pr/")],
            "converts": [],
            "tags": [],
        }
        if _truthy(params.get("include_prs")):
            data["pullRequests"] = [
                {"name": b, "ref": b, "targetCommit": repo.branches[b]}
                for b in sorted(repo.branches)
                if b.startswith("refs/pr/")
            ]
        return 200, {}, data

    def _route_commits(self, repo: _Repo, revision: str):
        commit = self._get_commit(repo, revision)
        namespace = repo.repo_id.split("/")[0]
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": "",
                    "date": commit.date,
                    "authors": [{"user": namespace, "avatar": ""}],
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return 200, {}, history

    def _route_branch(self, method: str, repo: _Repo, branch: str, body: bytes):
        if method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise _HttpError(404 if branch != "main" else 403, f"Cannot delete branch {branch}")
            del repo.branches[branch]
            return 200, {}, {}
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith("refs/"):
            raise _HttpError(400, f"Invalid branch name: {branch!r}")
        if branch in repo.branches:
            return 409, {}, {"error": "Reference already exists"}
        start = _json_body(body).get("startingPoint") or "main"
        repo.branches[branch] = self._get_commit(repo, start).oid
        return 200, {}, {}

    def _route_preupload(self, repo: _Repo, revision: str, body: bytes):
        commit = self._get_commit(repo, revision)
        payload = _json_body(body)
        files = payload.get("files")
        if not isinstance(files, list):
            raise _HttpError(400, "`files` must be a list")
        answer = []
        for item in files:
            path = item.get("path") if isinstance(item, dict) else None
            if not isinstance(path, str):
                raise _HttpError(400, "every file needs a `path`")
            existing = commit.files.get(path)
            answer.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": _git_blob_sha1(existing) if existing is not None else None,
                }
            )
        return 200, {}, {"files": answer, "commitOid": commit.oid}

    def _route_commit(self, repo: _Repo, revision: str, params: dict, body: bytes):
        create_pr = _truthy(params.get("create_pr"))
        base = self._get_commit(repo, revision)
        if not create_pr and revision not in repo.branches:
            raise _HttpError(400, f"Can only commit to a branch, got {revision!r}")
        lines = [line for line in body.splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError:
            raise _HttpError(400, "Malformed NDJSON commit payload") from None
        if not items or items[0].get("key") != "header":
            raise _HttpError(400, "First NDJSON line must be the commit header")
        header = items[0].get("value") or {}
        summary = header.get("summary") or ""
        if not summary:
            raise _HttpError(400, "Commit summary is required")
        parent = header.get("parentCommit")
        if parent and not create_pr and not base.oid.startswith(parent):
            raise _HttpError(412, "A commit has happened since the parent commit. Please pull the latest changes.")
        files = dict(base.files)
        for item in items[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path")
            if not isinstance(path, str) or not path or path.startswith("/"):
                raise _HttpError(400, f"Invalid path in commit operation: {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HttpError(400, f"Unsupported encoding {value.get('encoding')!r}")
                try:
                    files[path] = base64.b64decode(value.get("content", ""), validate=True)
                except ValueError:
                    raise _HttpError(400, f"Invalid base64 content for {path}") from None
            elif key == "deletedFile":
                if path not in files:
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise _HttpError(404, f"A folder with this name doesn't exist: {path}")
                for p in doomed:
                    del files[p]
            elif key == "lfsFile":
                raise _HttpError(422, "LocalHub does not store LFS files (preupload answers 'regular' only)")
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")
        target = revision
        pr_num = None
        if create_pr:
            pr_num = repo.next_pr
            repo.next_pr += 1
            target = f"refs/pr/{pr_num}"
        oid = self._new_oid(repo.repo_type, repo.repo_id, target, summary)
        repo.commits[oid] = _Commit(oid, files, summary, _now_iso(), base.oid)
        repo.branches[target] = oid
        answer = {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self._repo_url(repo)}/commit/{oid}",
            "hookOutput": "",
        }
        if pr_num is not None:
            answer["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{pr_num}"
        return 200, {}, answer

    def _route_resolve(self, method: str, repo: _Repo, revision: str, path: str, headers):
        commit = self._get_commit(repo, revision)
        base_headers = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            headers_404 = {**base_headers, "X-Error-Message": "Entry not found"}
            raise _HttpError(404, "Entry not found", "EntryNotFound", headers_404)
        content = commit.files[path]
        etag = _git_blob_sha1(content)
        out_headers = {
            **base_headers,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        status = 200
        range_header = headers.get("Range")
        if range_header and method == "GET":
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
            if match and (match.group(1) or match.group(2)):
                size = len(content)
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start, end = max(size - int(match.group(2)), 0), size - 1
                if start >= size or start > end:
                    raise _HttpError(
                        416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
                    )
                out_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                content, status = content[start : end + 1], 206
        return status, out_headers, content

    # -- dispatch ----------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str, raw_path: str, headers, body: bytes, auth: str | None):
        split = urlsplit(raw_path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        segs = split.path.split("/")[1:]

        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(auth)
            if rest == ["repos", "create"] and method == "POST":
                return self._route_create_repo(auth, body)
            if rest == ["repos", "delete"] and method in ("POST", "DELETE"):
                return self._route_delete_repo(auth, body)
            if rest == ["validate-yaml"] and method == "POST":
                return self._route_validate_yaml(body)
            if rest and rest[0] in _TYPES_PLURAL and len(rest) >= 2:
                return self._dispatch_repo_api(method, _TYPES_PLURAL[rest[0]], rest[1:], params, headers, body, auth)
            raise _HttpError(404, f"Not found: {method} {split.path}")

        # Downloads: /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}
        repo_type, rest = "model", segs
        if rest and rest[0] in ("datasets", "spaces", "models") and "resolve" in rest[2:4]:
            repo_type, rest = _TYPES_PLURAL[rest[0]], rest[1:]
        if method in ("GET", "HEAD") and len(rest) >= 4 and rest[2] == "resolve":
            repo_id, rev_seg, path_segs = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[3], rest[4:]
        elif method in ("GET", "HEAD") and len(rest) >= 3 and rest[1] == "resolve":
            repo_id, rev_seg, path_segs = unquote(rest[0]), rest[2], rest[3:]
        else:
            raise _HttpError(404, f"Not found: {method} {split.path}")
        repo = self._get_repo(repo_type, repo_id, auth)
        path = unquote("/".join(path_segs))
        if not path:
            raise _HttpError(404, "Entry not found", "EntryNotFound")
        return self._route_resolve(method, repo, unquote(rev_seg), path, headers)

    def _dispatch_repo_api(self, method, repo_type, rest, params, headers, body, auth):
        # repo ids are "namespace/name"; a bare "name" is accepted when such a repo exists.
        if len(rest) >= 2 and rest[1] in _REPO_SUBROUTES and (repo_type, unquote(rest[0])) in self._repos:
            repo_id, rest = unquote(rest[0]), rest[1:]
        elif len(rest) >= 2:
            repo_id, rest = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[2:]
        else:
            repo_id, rest = unquote(rest[0]), []
        repo = self._get_repo(repo_type, repo_id, auth)
        sub, args = (rest[0], rest[1:]) if rest else (None, [])
        rev = unquote(args[0]) if args else "main"

        if sub is None and method == "GET":
            return self._route_info(repo, "main", params)
        if sub == "revision" and method == "GET" and args:
            return self._route_info(repo, unquote("/".join(args)), params)
        if sub == "tree" and method == "GET":
            return self._route_tree(repo, rev, unquote("/".join(args[1:])), params)
        if sub == "paths-info" and method == "POST":
            return self._route_paths_info(repo, rev, body)
        if sub == "refs" and method == "GET":
            return self._route_refs(repo, params)
        if sub == "commits" and method == "GET":
            return self._route_commits(repo, unquote("/".join(args)) if args else "main")

        # Write routes
        self._require_write(auth, repo.repo_id.split("/")[0])
        if sub == "branch" and method in ("POST", "DELETE") and args:
            return self._route_branch(method, repo, unquote("/".join(args)), body)
        if sub == "preupload" and method == "POST":
            return self._route_preupload(repo, rev, body)
        if sub == "commit" and method == "POST":
            return self._route_commit(repo, unquote("/".join(args)) if args else "main", params, body)
        raise _HttpError(404, f"Not found: {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")


def _json_body(body: bytes) -> dict:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise _HttpError(400, "Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _HttpError(400, "Request body must be a JSON object")
    return data


def _truthy(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on") if value is not None else False


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # every response carries Content-Length and `Connection: close`
    server_version = "LocalHub/1.0"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging (it would show request lines)
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _auth_state(self, hub: LocalHub) -> str | None:
        value = self.headers.get("Authorization")
        if value is None:
            return None
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "bearer" and credential.strip() == hub.token:
            return "valid"
        return "invalid"

    def _send(self, status: int, headers: dict, payload) -> None:
        if isinstance(payload, (bytes, bytearray)):
            body = bytes(payload)
        else:
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.close_connection = True

    def _handle(self) -> None:
        hub = self.server.hub
        method = self.command
        auth = self._auth_state(hub)
        logged_headers = {}
        for key, value in self.headers.items():
            if key.lower() == "authorization":
                value = "Bearer <valid token>" if auth == "valid" else "<redacted invalid credential>"
            logged_headers[key] = value
        with hub._lock:
            hub.requests_log.append((method, self.path, logged_headers))

        body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
        fault = hub._take_fault(method, self.path)
        if fault is not None and fault.kind == "hook":
            with hub._lock:
                fault.action()
            fault = None
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return  # the socket is closed without a response
        if fault is not None and fault.kind == "fail":
            self._send(
                fault.status,
                {"X-Error-Message": f"LocalHub injected HTTP {fault.status}"},
                {"error": f"LocalHub injected HTTP {fault.status}"},
            )
            return
        if auth == "invalid":
            message = "Invalid credentials in Authorization header"
            self._send(401, {"X-Error-Message": message}, {"error": message})
            return
        try:
            with hub._lock:
                status, headers, payload = hub._dispatch(method, self.path, self.headers, body, auth)
            if fault is not None and fault.kind == "lose":  # the request took effect; its answer never arrives
                if not fault.status:
                    self.close_connection = True
                    return
                message = f"LocalHub injected HTTP {fault.status} after serving the request"
                status, headers, payload = fault.status, {"X-Error-Message": message}, {"error": message}
        except _HttpError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, headers, {"error": err.message})
            return
        except Exception as err:  # a bug in the fake: report it as a 500 with the reason
            self._send(500, {}, {"error": f"LocalHub internal error: {type(err).__name__}: {err}"})
            return
        self._send(status, headers, payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
