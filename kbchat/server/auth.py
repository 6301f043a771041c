"""The host's bearer token: where it comes from, and how a request's token is compared with it."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from fastapi import Depends, Request

from kbchat.config import ENV_TOKEN, env_token
from kbchat.errors import KbchatError
from kbchat.remote import TOKEN_FILE, token_path
from kbchat.server.http_errors import ApiError

__all__ = ["TOKEN_FILE", "bearer_guard", "is_loopback", "resolve_token", "token_matches", "token_path"]


def is_loopback(host: str) -> bool:
    """True if `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def resolve_token(home: str | os.PathLike[str] | None, token: str | None, no_auth: bool, host: str
                  ) -> str | None:
    """The token the host will require, or None when `no_auth` is set.

    In order: `token` (from --token), then $KBCHAT_TOKEN, then the token file in the data dir, which
    is created on first use with a fresh random token and owner-only permissions (0600). Raises
    KbchatError, before anything binds, when `no_auth` is asked for on a non-loopback `host` (anyone
    on the network could then edit the model), when --token and --no-auth are both given, when a
    token is empty or contains whitespace, or when the token file is readable by other users.
    """
    if no_auth:
        if not is_loopback(host):
            raise KbchatError(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), "
                              f"not {host!r}: anyone who can reach it could chat and edit; drop --no-auth "
                              "and give clients the token")
        if token:
            raise KbchatError("--token and --no-auth contradict each other: choose one")
        return None
    chosen = token if token is not None else env_token()
    if chosen is not None:
        return _checked(chosen, "--token" if token is not None else f"${ENV_TOKEN}")
    return _stored_token(token_path(home))


def _checked(token: str, origin: str) -> str:
    if not token or any(ch.isspace() for ch in token):
        raise KbchatError(f"{origin} must be a non-empty token without spaces")
    return token


def _stored_token(path: Path) -> str:
    """Read the token file, creating it (0600, exclusively: two hosts starting at once agree) if missing."""
    fresh = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KbchatError(f"{path} holds the server token but other users can read it "
                              f"(mode {mode:o}): run `chmod 600 {path}`") from None
        return _checked(path.read_text(encoding="utf-8").strip(), str(path))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(fresh + "\n")
    return fresh


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_guard(token: str | None) -> list[Any]:
    """The route dependencies that demand `Authorization: Bearer <token>` (none when `token` is None)."""

    def authorised(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _unauthorised("missing bearer token: send `Authorization: Bearer TOKEN` (the host's token "
                                "is in server-token in its data dir, or what --token / KBCHAT_TOKEN set)")
        if not token_matches(given.strip(), token):
            raise _unauthorised("wrong bearer token")

    return [Depends(authorised)]


def _unauthorised(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", "unauthorized", {"WWW-Authenticate": "Bearer"})
