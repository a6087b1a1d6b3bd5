"""The A/B router deployment: a thin shell around ``RoutingPolicy``.

Weights can change live through Serve's ``user_config`` (``{"weights": {"tiny-v1": 90, "tiny-v2": 10}}``)
without restarting a replica; the policy itself is rebuilt, never mutated.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from deployments.routing import NoRoutableVariant, RouteDecision, RouteQuery, RoutingPolicy, UnknownVariant
from serve_app.config import RoutingConfig
from serve_app.errors import EngineUnavailable, InvalidRequest, ModelNotFound
from serve_app.metrics import RoutingMetrics

logger = logging.getLogger(__name__)

ROLLOUT_POLL_S = 1.0


def validate_weights(weights: Mapping[str, float], variants: list[str]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(variants))
    if unknown:
        raise ValueError(f"weights name unknown variants: {', '.join(unknown)}")
    merged = {name: float(weights.get(name, 0.0)) for name in variants}
    if any(w < 0 for w in merged.values()) or not math.isclose(sum(merged.values()), 100.0, abs_tol=1e-6):
        raise ValueError(f"weights must be non-negative and sum to 100, got {merged}")
    return merged


class ABRouter:
    def __init__(
        self,
        routing: RoutingConfig,
        weights: Mapping[str, float],
        models: Mapping[str, str] | None = None,
        rollout: Any = None,
    ) -> None:
        self._routing = routing
        self._variants = list(weights)
        self._weights = dict(weights)
        self._policy = RoutingPolicy(weights, public_model=routing.public_model, salt=routing.salt)
        self._metrics = RoutingMetrics(models if models is not None else {name: name for name in weights})
        self._weights_published = 0.0
        self._rollout = rollout  # a RolloutDriver handle: during a canary, weights come from it
        self._follower: asyncio.Task[None] | None = None

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        weights = user_config.get("weights")
        if weights is None:
            return
        self._set_weights(weights)

    def _set_weights(self, weights: Mapping[str, float]) -> None:
        merged = validate_weights(weights, self._variants)
        if merged == self._weights:
            return
        self._weights = merged
        self._policy = RoutingPolicy(merged, public_model=self._routing.public_model, salt=self._routing.salt)
        self._weights_published = 0.0
        logger.info("routing weights now %s", merged)

    def _follow_rollout(self) -> None:
        if self._rollout is not None and (self._follower is None or self._follower.done()):
            self._follower = asyncio.get_running_loop().create_task(self._poll_rollout())

    async def _poll_rollout(self) -> None:
        while True:
            try:
                self._set_weights(await self._rollout.weights.remote())
            except Exception as error:  # keep the last weights; the driver is restarted by Serve
                logger.warning("cannot read rollout weights: %r", error)
            await asyncio.sleep(ROLLOUT_POLL_S)

    async def route(self, query: RouteQuery) -> RouteDecision:
        self._follow_rollout()
        try:
            decision = self._policy.decide(query)
            self._metrics.observe_decision(decision.variant, decision.reason)
            self._publish_weights()
            return decision
        except UnknownVariant as error:
            known = ", ".join([self._routing.public_model, *self._variants])
            if error.field == "override":
                raise InvalidRequest(
                    f"header {self._routing.override_header} names unknown variant {error.name!r} (known: {known})",
                    param=self._routing.override_header,
                ) from None
            raise ModelNotFound(f"the model {error.name!r} does not exist (known: {known})", param="model") from None
        except NoRoutableVariant as error:
            raise EngineUnavailable(str(error)) from None

    def _publish_weights(self) -> None:
        # Set from the request path, not the constructor: a gauge set while the replica is still starting
        # never reached Ray's metrics agent here. Every 10 s is plenty for a value that changes on deploys.
        now = time.monotonic()
        if now - self._weights_published >= 10:
            self._metrics.set_weights(self._weights)
            self._weights_published = now

    async def weights(self) -> dict[str, float]:
        return dict(self._weights)
