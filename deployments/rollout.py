"""The canary rollout driver: one replica that owns the rollout's state and turns the pure
``CanaryController``'s decisions into router weights.

Ingress replicas report what their clients saw (deltas since their last report) every second; the driver
judges the current step on everything reported since the step began, and routers poll ``weights()`` every
second. So a breach is acted on within a couple of seconds, with no Kubernetes or mesh involved, and an
operator can promote or abort through the same deployment (``servefleet rollout``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from deployments.canary import CanaryController, RolloutConfig, RolloutError, Transition, VariantSample, step_stats

logger = logging.getLogger(__name__)

TICK_S = 1.0
MAX_REPORTS = 10_000  # per step; a long step keeps the most recent


class RolloutDriver:
    def __init__(self, rollout: RolloutConfig, weights: Mapping[str, float]) -> None:
        self._config = rollout
        self._controller = CanaryController(rollout)
        self._base = dict(weights)
        self._transition: Transition = self._controller.start(time.monotonic())
        self._reports: list[dict[str, VariantSample]] = []
        self._history: list[str] = [self._transition.action.reason]
        self._task: asyncio.Task[None] | None = None

    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while self._transition.state.phase == "ramping":
            await asyncio.sleep(TICK_S)
            self._judge()

    def _judge(self) -> None:
        stats = step_stats(self._reports, baseline=self._config.baseline, candidate=self._config.candidate)
        self._apply(self._controller.evaluate(self._transition.state, time.monotonic(), stats))

    def _apply(self, transition: Transition) -> None:
        before = self._transition
        self._transition = transition
        if transition.action.kind != "hold":
            self._reports.clear()  # the next step is judged on its own traffic only
            self._history.append(transition.action.reason)
            logger.info(
                "rollout %s -> %s: %s (candidate %g%%)",
                before.state.phase,
                transition.state.phase,
                transition.action.reason,
                transition.action.candidate_weight,
            )

    async def report(self, snapshot: dict[str, VariantSample]) -> None:
        self._ensure_loop()
        if snapshot:
            self._reports.append(snapshot)
            del self._reports[:-MAX_REPORTS]

    async def weights(self) -> dict[str, float]:
        self._ensure_loop()
        return self._config.weights(self._base, self._controller.candidate_weight(self._transition.state))

    async def status(self) -> dict[str, Any]:
        self._ensure_loop()
        state = self._transition.state
        stats = step_stats(self._reports, baseline=self._config.baseline, candidate=self._config.candidate)
        return {
            "baseline": self._config.baseline,
            "candidate": self._config.candidate,
            "phase": state.phase,
            "step": state.step + 1,
            "steps": list(self._config.steps),
            "candidate_weight": self._controller.candidate_weight(state),
            "last_decision": self._transition.action.reason,
            "history": list(self._history),
            "this_step": {
                "baseline": {
                    "requests": stats.baseline.requests,
                    "errors": stats.baseline.errors,
                    "p95_ttft_s": stats.baseline.p95_ttft_s,
                },
                "candidate": {
                    "requests": stats.candidate.requests,
                    "errors": stats.candidate.errors,
                    "p95_ttft_s": stats.candidate.p95_ttft_s,
                },
            },
        }

    async def promote(self) -> dict[str, Any]:
        return await self._manual(self._controller.promote)

    async def abort(self) -> dict[str, Any]:
        return await self._manual(self._controller.abort)

    async def _manual(self, action: Any) -> dict[str, Any]:
        try:
            self._apply(action(self._transition.state, time.monotonic()))
        except RolloutError as error:
            return {"ok": False, "message": str(error), **(await self.status())}
        return {"ok": True, **(await self.status())}
