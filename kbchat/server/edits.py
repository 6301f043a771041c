"""The ledger over HTTP: `POST /v1/parse`, `POST /v1/edits`, `GET /v1/edits`, `GET /v1/edits/{id}`,
`POST /v1/edits/{id}/revert`, `POST /v1/edits/commit`; edits travel as `EditRecord.to_json()` objects.

What the service cannot do is refused before it is asked, from its `capabilities()`: a method it does
not offer, hyperparameter overrides it does not honour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from kbchat.config import ALL_METHODS, STATUSES, WEIGHT_METHODS
from kbchat.errors import UnsupportedOperation
from kbchat.records import EditRecord, Progress
from kbchat.server.bodies import CommitBody, EditRequestBody, ParseBody
from kbchat.server.host import Host, ignore_progress
from kbchat.server.http_errors import ApiError
from kbchat.service import Capabilities


def edit_routes(host: Host, guarded: list[Any]) -> APIRouter:
    router = APIRouter(tags=["edits"], dependencies=guarded)
    service = host.service

    @router.post("/v1/parse", summary="How an /edit text would be understood, without editing")
    async def parse(body: ParseBody) -> dict[str, Any]:
        parsed = await host.read(service.parse, body.text)
        return {**dataclasses.asdict(parsed), "relation": parsed.relation}

    @router.post("/v1/edits", status_code=201, response_model=None,
                 summary="Make an edit; with stream=true, progress events (SSE) and then the edit")
    async def create_edit(body: EditRequestBody) -> Any:
        check_edit_request(body, await host.read(service.capabilities))
        kwargs = {"method": body.method, "probes": tuple(body.probes), "hparams": body.hparams or None,
                  "audit": body.audit or "background"}

        def run(progress: Callable[[Progress], None]) -> EditRecord:
            return service.edit(body.text, progress=progress, **kwargs)

        if body.stream:
            return await host.progress_stream(run, lambda record: {"edit": record.to_json()})
        record = await host.change(run, ignore_progress)
        return JSONResponse(record.to_json(), status_code=201)

    @router.get("/v1/edits", summary="List edits, oldest first")
    async def list_edits(status: str | None = Query(None, description=f"one of {', '.join(STATUSES)}")
                         ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}",
                           code="bad_request")
        return _listing(await host.read(service.edits, status=status))

    @router.post("/v1/edits/commit", response_model=None,
                 summary="Write the active memory edits into the weights: the new edit, then the retired ones")
    async def commit(body: CommitBody | None = None) -> Any:
        def run(progress: Callable[[Progress], None]) -> list[EditRecord]:
            return service.commit(progress=progress)

        if body is not None and body.stream:
            return await host.progress_stream(run, lambda records: {"edits": [r.to_json() for r in records]})
        return _listing(await host.change(run, ignore_progress))

    @router.get("/v1/edits/{edit_id}", summary="One edit with its checks")
    async def get_edit(edit_id: int) -> dict[str, Any]:
        return (await host.read(service.get_edit, edit_id)).to_json()

    @router.post("/v1/edits/{edit_id}/revert", summary="Undo an active edit")
    async def revert(edit_id: int) -> dict[str, Any]:
        return (await host.change(service.revert, edit_id)).to_json()

    return router


def check_edit_request(body: EditRequestBody, capabilities: Capabilities) -> None:
    """Refuse, with a message saying why, what the service has said it cannot do."""
    method = body.method
    if method is not None and method not in capabilities.methods:
        offered = ", ".join(capabilities.methods)
        if method not in ALL_METHODS:
            raise ApiError(400, f"unknown method {method!r}; choose one of: {offered}", code="unknown_method")
        hint = ""
        if method in WEIGHT_METHODS and not capabilities.weight_edits:
            hint = ("; weight edits need the weights in the host's process: make them with a local kbchat "
                    "and serve its `kbchat export`")
        raise UnsupportedOperation(f"this host does not make {method} edits (it makes: {offered}){hint}")
    if body.hparams and not capabilities.hparams:
        raise ApiError(400, "this host takes no hyperparameter overrides: send the edit without \"hparams\"",
                       code="bad_request")


def _listing(records: list[EditRecord]) -> dict[str, Any]:
    return {"object": "list", "data": [r.to_json() for r in records]}

