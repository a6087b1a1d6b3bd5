"""ASGI middleware at the very edge of the ingress: authentication and the body-size limit, decided before
FastAPI reads or parses anything, so a 401 or 413 never depends on what the body holds.

The FastAPI app is a module-level object (``serve.ingress`` needs it at class definition), so the ingress
replica hands its settings to the middleware class once at start-up; there is one ingress per replica
process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.auth import Authenticator
from serve_app.errors import ServeFleetError
from serve_app.limits import LimitsConfig, check_body_size

# Probes and the schema stay open: load balancers and orchestrators call them without keys.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True)
class EdgeSettings:
    auth: Authenticator
    limits: LimitsConfig


def _error(error: ServeFleetError) -> JSONResponse:
    return JSONResponse(
        error.to_response().model_dump(), status_code=error.status_code, headers=error.response_headers()
    )


def _route_path(scope: Scope) -> str:
    """The path inside the app: an app under a route prefix sees it in ``root_path`` too."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class EdgeGuard:
    settings: ClassVar[EdgeSettings | None] = None

    @classmethod
    def configure(cls, settings: EdgeSettings) -> None:
        cls.settings = settings

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        if scope["type"] != "http" or settings is None or _route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            principal = settings.auth.authenticate(headers.get("authorization"))
        except ServeFleetError as error:
            await _error(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal

        declared = headers.get("content-length", "")
        if declared.isdigit() and (violation := check_body_size(int(declared), settings.limits)) is not None:
            await _error(violation.error())(scope, receive, send)
            return
        # The declared length may be absent (chunked) or false: read the body here, bounded, and replay it.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if (violation := check_body_size(len(body), settings.limits)) is not None:
                await _error(violation.error())(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)
