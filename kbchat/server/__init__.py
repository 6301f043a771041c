"""The kbchat host: any `ChatService` over HTTP (an OpenAI-compatible chat endpoint and the edit API).

`create_app(service, token=...)` builds the FastAPI app, `serve(open_service, ...)` runs it with
uvicorn, `resolve_token(...)` decides the bearer token, and `OpenAIBackendChat` serves chat through an
external OpenAI-compatible engine with memory edits in front. `kbchat.remote.RemoteChat` is the client.
"""

from kbchat.server.app import create_app
from kbchat.server.auth import resolve_token
from kbchat.server.run import ServerThread, serve

__all__ = ["ServerThread", "create_app", "resolve_token", "serve"]
