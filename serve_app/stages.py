"""How the pipeline reaches its router and preprocess: in its own process, or through deployment handles.

``pools.route_and_prepare: ingress`` (the default) runs ``ABRouter`` and ``Preprocessor`` inside the ingress
replica: the same classes the deployments are made of, called directly. The work is a hash and a tokenizer
call of about a millisecond; the two Ray hops it saves added 15 to 53 ms to p50 time to first token at one
stream and 0.6 to 1.6 s at 32 streams on the 2-core machine (README: Performance). ``deployments`` keeps them as
deployments of their own, for a preprocess pool that must scale apart from the ingress.
"""

from __future__ import annotations

from typing import Any, Protocol

from deployments.preprocess import Preprocessor
from deployments.routing import RouteDecision, RouteQuery
from deployments.types import PreparedRequest, RequestKind


class RouterStage(Protocol):
    async def route(self, query: RouteQuery) -> RouteDecision: ...


class PrepareStage(Protocol):
    async def prepare(self, kind: RequestKind, request_id: str, variant: str, request: Any) -> PreparedRequest: ...


class RouterDeployment:
    """The router deployment, through its handle."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def route(self, query: RouteQuery) -> RouteDecision:
        decision: RouteDecision = await self._handle.route.remote(query)
        return decision


class PreprocessDeployment:
    """The preprocess deployment, through its handle."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def prepare(self, kind: RequestKind, request_id: str, variant: str, request: Any) -> PreparedRequest:
        method = self._handle.prepare_chat if kind == "chat" else self._handle.prepare_completion
        prepared: PreparedRequest = await method.remote(request_id, variant, request)
        return prepared


class InProcessPreprocess:
    """A ``Preprocessor`` in this process. It runs on the caller's event loop: a chat template and a fast
    tokenizer take about a millisecond for a chat turn, less than handing the work to a thread would cost."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        self._preprocessor = preprocessor

    async def prepare(self, kind: RequestKind, request_id: str, variant: str, request: Any) -> PreparedRequest:
        if kind == "chat":
            return self._preprocessor.prepare_chat(request_id, variant, request)
        return self._preprocessor.prepare_completion(request_id, variant, request)
