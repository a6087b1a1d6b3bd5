"""What stands between a prepared request and the engine: the key's right to the variant, its prompt-size
limit, its rate limits and the pool's admission control, decided in that order and before any work is queued.

Pure and synchronous (the ingress calls it between preprocess and the engine hop), so every refusal path is
unit-tested without Ray. A refusal raises the domain error the ingress turns into 403/400/429; an admitted
request gets a ``Ticket`` that must be released exactly once when the request ends, however it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployments.types import PreparedRequest
from serve_app.admission import AdmissionConfig, AdmissionController, EngineLoad
from serve_app.auth import Authenticator, Principal
from serve_app.limits import LimitExceeded, LimitsConfig
from serve_app.ratelimit import RateLimiter, limits_by_key


@dataclass(slots=True)
class Ticket:
    key: str
    variant: str
    cost: int  # prompt tokens + max_tokens: what the request may use at most
    max_tokens: int
    released: bool = False


class RequestGuard:
    def __init__(
        self,
        auth: Authenticator,
        limits: LimitsConfig,
        admission: AdmissionConfig,
        variants: list[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = auth
        self._limits = limits
        self._limiter = RateLimiter(limits_by_key(auth.principals))
        self._admission = {name: AdmissionController(admission) for name in variants}
        self._loads: dict[str, EngineLoad] = {}
        self._clock = clock

    def update_load(self, loads: Mapping[str, EngineLoad]) -> None:
        """The latest engine load per variant (polled by the ingress); a variant missing here admits freely."""
        self._loads = dict(loads)

    def admit(self, principal: Principal, prepared: PreparedRequest) -> Ticket:
        self._auth.authorize_variant(principal, prepared.variant)
        limit = self._limits.max_prompt_tokens
        if limit is not None and prepared.prompt_tokens > limit:
            raise LimitExceeded(
                f"the prompt is {prepared.prompt_tokens} tokens; this server accepts at most {limit}",
                param="messages" if prepared.kind == "chat" else "prompt",
                code="prompt_too_long",
            )
        max_tokens = prepared.sampling.max_tokens
        cost = prepared.prompt_tokens + max_tokens
        now = self._clock()
        rate = self._limiter.check_and_consume(principal.name, cost, now)
        if (error := rate.error()) is not None:
            raise error
        controller = self._admission[prepared.variant]
        decision = controller.decide(principal.name, self._loads.get(prepared.variant))
        if (error := decision.error()) is not None:
            # Refused after the rate limiter charged it: give the whole charge back, the request never ran.
            self._limiter.refund(principal.name, cost, now)
            raise error
        controller.start(principal.name, cost)
        return Ticket(principal.name, prepared.variant, cost, max_tokens)

    def release(self, ticket: Ticket, output_tokens: int) -> None:
        """End an admitted request; tokens it reserved but did not generate go back to the key's budget."""
        if ticket.released:
            return
        ticket.released = True
        self._admission[ticket.variant].finish(ticket.key, ticket.cost)
        unused = max(0, ticket.max_tokens - output_tokens)
        if unused:
            self._limiter.refund(ticket.key, unused, self._clock())
