"""Running the host: `serve` (the `kbchat serve` command) and `ServerThread` (tests and benchmarks)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from kbchat.config import env_token
from kbchat.errors import KbchatError
from kbchat.records import ProgressFn, no_progress
from kbchat.server.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT, create_app
from kbchat.server.auth import resolve_token, token_path
from kbchat.service import ChatService

log = logging.getLogger("kbchat.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. KbchatError if it cannot bind."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise KbchatError(f"cannot use host {host!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise KbchatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another server "
                          "running there? choose another --port") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://host:port for a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(open_service: Callable[[ProgressFn], ChatService], *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, token: str | None = None, no_auth: bool = False,
          home: str | os.PathLike[str] | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          request_timeout: float = DEFAULT_REQUEST_TIMEOUT, progress: ProgressFn = no_progress,
          notice: Callable[[str], None] = log.info, log_level: str = "info") -> None:
    """Serve the service from `open_service(progress)` on host:port until interrupted (Ctrl-C / SIGTERM).

    Order matters: the token is resolved first (so `--no-auth` on a public address is refused before
    anything binds or loads), then the port is bound (a busy port fails before a long model load),
    then the service is opened, served, and closed on the way out. `notice` receives the one-line
    messages a user needs (where it listens, where the token is); the CLI passes a stderr printer.
    """
    resolved = resolve_token(home, token, no_auth, host)
    sock = bind_socket(host, port)
    try:
        service = open_service(progress)
        try:
            app = create_app(service, token=resolved, max_body_bytes=max_body_bytes,
                             request_timeout=request_timeout)
            url = url_of(sock)
            if resolved is None:
                notice(f"kbchat serving on {url}/v1 without auth (loopback only)")
            elif token is None and not env_token():
                notice(f"kbchat serving on {url}/v1; clients need the token in {token_path(home)}")
            else:
                notice(f"kbchat serving on {url}/v1; clients need the token you set")
            notice(f"API docs: {url}/docs · OpenAI clients: base_url={url}/v1")
            server = uvicorn.Server(_config(app, log_level))
            server.run(sockets=[sock])
        finally:
            service.close()
    finally:
        sock.close()


def _config(app: FastAPI, log_level: str) -> uvicorn.Config:
    # The socket is bound by us; uvicorn's own host/port are unused. Long answers stream, so no
    # keep-alive pressure; the graceful shutdown gives running answers a few seconds to end.
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, access_log=False)


class ServerThread:
    """An app served by uvicorn on a loopback port, in a background thread (tests and benchmarks).

        with ServerThread(create_app(service, token="t")) as server:
            httpx.get(server.url + "/v1/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 **config: Any) -> None:
        self._sock = bind_socket(host, port)
        self.url = url_of(self._sock)
        config.setdefault("timeout_graceful_shutdown", 5)  # streamed answers must not hold up stop()
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, **config))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="kbchat-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        ready = threading.Event()
        while not self._server.started:
            if not self._thread.is_alive():
                raise KbchatError("the server thread stopped while starting")
            if timeout <= 0:
                raise KbchatError("the server did not start in time")
            ready.wait(0.02)
            timeout -= 0.02
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
