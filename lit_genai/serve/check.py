"""Requests checked in the HTTP process, before LitServe queues them for a model worker.

LitServe decodes a request in the worker, after the HTTP response has begun for a streamed one
(``litserve.server.StreamingRequestHandler`` returns its ``StreamingResponse`` before the worker
sees the request), so a refusal there could not change the status of a ``/stream`` answer, and a
refused request would still wait in the worker's queue behind real work. ``RequestCheck`` (a plain
ASGI middleware, given to ``LitServer(middlewares=...)``) reads the JSON body of a POST to the
service's paths, runs ``requests.parse_request`` on it with the served models' ``ModelInfo`` (no
weights needed) and answers a refusal itself: ``{"detail": message}`` with its 4xx status, as
FastAPI's ``HTTPException`` does; an accepted body is passed on, marked as JSON.

Two things stay with LitServe: a request without the API key (``LIT_SERVER_API_KEY``) is passed on
unread, so that its answer is LitServe's 401, not a 4xx about its content; and the body size
(``max_payload_size``) is counted by LitServe's ``MaxSizeMiddleware`` around this one, whose 413 is
answered here (raised outside FastAPI's exception handlers it would otherwise become a 500).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_genai.serve.catalog import ModelInfo
from lit_genai.serve.requests import Limits, RequestError, parse_request


class RequestCheck:
    """ASGI middleware refusing bad generation requests with their 4xx (module docstring).

    Args:
        app: The application it wraps (Starlette passes it).
        catalog: {name: ``ModelInfo``} of the served models.
        limits: What one request may ask for.
        paths: {path: whether it streams}: the POST paths to check.
    """

    def __init__(
        self, app: ASGIApp, *, catalog: Mapping[str, ModelInfo], limits: Limits, paths: Mapping[str, bool]
    ) -> None:
        self.app, self.catalog, self.limits, self.paths = app, dict(catalog), limits, dict(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if not _authorised(scope):
            await self.app(scope, receive, send)  # LitServe answers 401
            return
        messages: list[Message] = []
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except HTTPException as error:  # LitServe's MaxSizeMiddleware: the body is too large
            await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)
            return
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        problem = self._problem(body, stream=self.paths[scope["path"]])
        if problem is not None:
            await JSONResponse({"detail": problem.message}, status_code=problem.status)(scope, receive, send)
            return

        async def replay() -> Message:  # the body read above, then the client's further messages
            return messages.pop(0) if messages else await receive()

        # The body is JSON, whatever its Content-Type says (``curl -d`` sends a form's), and LitServe
        # reads a form-typed body as a form.
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, replay, send)

    def _problem(self, body: bytes, stream: bool) -> Any:
        try:
            request = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            return RequestError(400, f"the request body is not JSON ({error})")
        try:
            parse_request(request, self.catalog, self.limits, stream=stream)
        except RequestError as error:
            return error
        return None


def _authorised(scope: Scope) -> bool:
    """Whether the request carries LitServe's API key (or none is set)."""
    from litserve import server  # LitServe reads LIT_SERVER_API_KEY once, when it is imported

    key = server.LIT_SERVER_API_KEY
    if not key:
        return True
    headers = dict(scope.get("headers") or [])
    return headers.get(b"x-api-key", b"").decode("latin-1") == key
