"""Hub ids: what `user/name` looks like, and redacting tokens from messages. A leaf module everyone may import."""

from __future__ import annotations

import re
from pathlib import Path

from fmhub.errors import FmhubError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def looks_like_repo_id(ref: str | None) -> bool:
    """`user/name` in form (it may also be a local path that happens to look like one)."""
    return bool(ref) and bool(REPO_ID.match(ref))


def is_hub_id(ref: str | None) -> bool:
    """`user/name` that is not a local path: what the Hub's metadata (`base_model`, `datasets`, `models`) accepts."""
    return looks_like_repo_id(ref) and not Path(ref).expanduser().exists()


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise FmhubError(f"invalid {what} {repo_id!r}: use user/name (letters, digits, '-', '_', '.')")


def redact(text: str, token: str | None = None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", text)
