"""The soak's load: closed-loop clients in a thread of their own, half streaming, half not, on seeded prompts.

Client ``k`` streams chat completions when ``k`` is even (each stream read to ``[DONE]`` and checked as the load
tests check it, by ``node_loss.stream_once``) and otherwise sends plain requests, alternating chat and text
completions, so that every route and both response shapes run for the whole soak. Prompt ``i`` is
``prompts.make_prompt(seed, i)``: lognormal prompt lengths and a mix of ``max_tokens`` from 8 to 256.

Bounded three ways: the run ends after ``duration_s`` or ``max_requests``, whichever first, and each request is
cut at ``request_timeout_s``. Loopback hosts only.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from loadtests.guards import check_loopback_host
from loadtests.node_loss import stream_once
from loadtests.prompts import Prompt, chat_request_body, make_prompt

FAILURE_PAUSE_S = 0.5  # a failing server is not hammered in a tight loop


@dataclass(frozen=True, slots=True)
class SoakRequest:
    kind: str  # "stream", "chat" or "completion"
    started: float  # monotonic seconds
    ended: float
    status: int | None  # None: no HTTP response (connection error, client timeout)
    ok: bool
    error: str | None = None


def plain_body(prompt: Prompt, *, model: str, completion: bool) -> tuple[str, dict[str, Any]]:
    """The route and body of a non-streaming request for ``prompt``."""
    sampling = {"max_tokens": prompt.max_tokens, "temperature": prompt.temperature, "seed": prompt.seed}
    if completion:
        text = "\n".join(content for _, content in prompt.messages)
        return "/v1/completions", {"model": model, "prompt": text, **sampling}
    return "/v1/chat/completions", {"model": model, "messages": prompt.as_messages(), **sampling}


def answer_problem(payload: Any) -> str | None:
    """Why a non-streamed answer is unusable, or None: it must carry a choice and a positive token count."""
    if not isinstance(payload, dict):
        return "answer is not a JSON object"
    choices = payload.get("choices")
    usage = payload.get("usage")
    if not isinstance(choices, list) or not choices:
        return "answer has no choices"
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return "answer has no usage.completion_tokens"
    if usage["completion_tokens"] < 1:
        return "answer has no tokens"
    return None


async def plain_once(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], kind: str, timeout_s: float
) -> SoakRequest:
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(route, json=body)
        status = response.status_code
        if status != 200:
            error = f"HTTP {status}: {response.text[:200]}"
        else:
            try:
                error = answer_problem(response.json())
            except ValueError:
                error = "answer is not JSON"
    except TimeoutError:
        error = f"client timeout after {timeout_s:g}s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return SoakRequest(kind, started, time.monotonic(), status, error is None, error)


class SoakLoad:
    """Start with ``start()``; ``stop()`` ends it early and waits; ``requests`` grows as requests end."""

    def __init__(
        self,
        url: str,
        *,
        clients: int,
        duration_s: float,
        max_requests: int,
        request_timeout_s: float,
        seed: int = 0,
        model: str = "tiny",
    ) -> None:
        self.url = check_loopback_host(url)
        self.clients = clients
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        self.seed = seed
        self.model = model
        self.requests: list[SoakRequest] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="soak-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[SoakRequest]:
        self._stop.set()
        self._thread.join(self.request_timeout_s + 10)
        if self._thread.is_alive():
            raise RuntimeError("the soak load thread did not stop")
        return list(self.requests)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.duration_s
        counter = itertools.count()
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        timeout = httpx.Timeout(self.request_timeout_s, connect=5)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=timeout) as client:

            async def one(streaming: bool, index: int) -> SoakRequest:
                prompt = make_prompt(self.seed, index)
                if streaming:
                    body = chat_request_body(prompt, model=self.model)
                    record = await stream_once(client, body, self.request_timeout_s)
                    return SoakRequest("stream", record.started, record.ended, record.status, record.ok, record.error)
                completion = index % 2 == 1
                route, body = plain_body(prompt, model=self.model, completion=completion)
                kind = "completion" if completion else "chat"
                return await plain_once(client, route, body, kind, self.request_timeout_s)

            async def run_client(k: int) -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    index = next(counter)
                    if index >= self.max_requests:
                        return
                    request = await one(k % 2 == 0, index)
                    self.requests.append(request)
                    if not request.ok:
                        await asyncio.sleep(FAILURE_PAUSE_S)

            await asyncio.gather(*(run_client(k) for k in range(self.clients)))
