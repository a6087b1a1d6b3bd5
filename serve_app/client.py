"""Call the app from Python code in another Ray job, through a deployment handle instead of HTTP.

The handle reaches the same ingress the HTTP routes use, so the routing (weights, sticky key, pinned variant)
and the response types (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``) are the same::

    from serve_app.client import ServeFleetClient

    client = ServeFleetClient.connect("127.0.0.1:6390")          # a driver joining the running cluster
    reply = client.chat({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}, sticky_key="u1")
    print(reply.model, reply.choices[0].message.content)
    for chunk in client.chat_stream({"model": "tiny", "messages": [...], "max_tokens": 32}):
        print(chunk.choices[0].delta.content or "", end="")

Inside another deployment or async code, use the ``a``-prefixed coroutine methods. Errors arrive as the same
domain exceptions the HTTP API maps to status codes (``serve_app.errors``), e.g. ``ContextLengthExceeded``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypedDict

from typing_extensions import Unpack

from serve_app.control import router_on_own_loop
from serve_app.pipeline import unwrap
from serve_app.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionRequest

Request = Mapping[str, Any] | ChatCompletionRequest | CompletionRequest


def _raise_domain(error: BaseException) -> None:
    cause = unwrap(error)
    if cause is not error:
        raise cause from None
    raise error


class Routing(TypedDict, total=False):
    """Per-call routing keywords, the handle-call twins of the HTTP headers."""

    sticky_key: str | None  # like x-servefleet-user: the same key always reaches the same variant
    variant: str | None  # like x-servefleet-variant: pin a variant by name
    request_id: str | None  # like x-request-id


class ServeFleetClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)

    @classmethod
    def connect(cls, address: str | None = None, *, app_name: str = "servefleet") -> ServeFleetClient:
        """Join the Ray cluster at ``address`` (unless this process already has) and get the app's handle."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=address or "auto", namespace="servefleet", log_to_driver=False)
        # Serve's router on a loop of its own, for the blocking methods.
        return cls(router_on_own_loop(serve.get_app_handle(app_name)))

    def _call(self, method: str, request: Request, routing: Routing) -> Any:
        try:
            return getattr(self._handle, method).remote(request, **routing).result()
        except Exception as error:
            _raise_domain(error)

    def _iterate(self, method: str, request: Request, routing: Routing) -> Iterator[Any]:
        try:
            yield from getattr(self._streaming, method).remote(request, **routing)
        except Exception as error:
            _raise_domain(error)

    def chat(self, request: Request, **routing: Unpack[Routing]) -> ChatCompletion:
        return self._call("chat_completion", request, routing)

    def completion(self, request: Request, **routing: Unpack[Routing]) -> Completion:
        return self._call("completion", request, routing)

    def chat_stream(self, request: Request, **routing: Unpack[Routing]) -> Iterator[ChatCompletionChunk]:
        return self._iterate("chat_completion_stream", request, routing)

    def completion_stream(self, request: Request, **routing: Unpack[Routing]) -> Iterator[Completion]:
        return self._iterate("completion_stream", request, routing)

    async def achat(self, request: Request, **routing: Unpack[Routing]) -> ChatCompletion:
        try:
            return await self._handle.chat_completion.remote(request, **routing)
        except Exception as error:
            _raise_domain(error)
            raise  # unreachable; keeps type checkers content

    async def achat_stream(self, request: Request, **routing: Unpack[Routing]) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for chunk in self._streaming.chat_completion_stream.remote(request, **routing):
                yield chunk
        except Exception as error:
            _raise_domain(error)
