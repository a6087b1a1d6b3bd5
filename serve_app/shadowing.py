"""Sending shadow copies: off the client's critical path, bounded, and never able to fail a client request.

The primary answer is complete before a copy starts (the client has it, or has the last chunk), so the copy
costs the client nothing but the shared engine capacity. At most ``max_in_flight`` copies run at once per
ingress replica; a request sampled while that many are running is simply not copied (never queued), so a slow
shadow variant cannot build up a backlog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from deployments.shadow import AnswerSummary, ShadowConfig, compare, shadow_target
from deployments.types import EngineResult, PreparedRequest
from serve_app.metrics import ShadowMetrics
from serve_app.stages import PrepareStage

logger = logging.getLogger(__name__)


class Shadower:
    def __init__(
        self,
        config: ShadowConfig,
        *,
        preprocess: PrepareStage,
        engines: Mapping[str, Any],
        metrics: ShadowMetrics,
        max_in_flight: int = 4,
    ) -> None:
        self._config = config
        self._preprocess = preprocess
        self._engines = dict(engines)
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    def target(self, request_id: str, primary: str, request: Any) -> str | None:
        """The shadow variant for this request, or None. Only greedy or seeded requests are copied: for sampled
        ones an exact-match comparison measures chance, not the variant."""
        temperature = getattr(request, "temperature", None)
        if not (temperature == 0 or getattr(request, "seed", None) is not None):
            return None
        return shadow_target(request_id, primary, self._config)

    def submit(self, request: Any, prepared: PreparedRequest, primary: AnswerSummary, target: str) -> bool:
        """Start a copy in the background; False when it was skipped because enough copies are running."""
        if len(self._tasks) >= self._max_in_flight:
            return False
        task = asyncio.get_running_loop().create_task(self._run(request, prepared, primary, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, request: Any, prepared: PreparedRequest, primary: AnswerSummary, target: str) -> None:
        try:
            shadow_request = await self._preprocess.prepare(
                prepared.kind, f"{prepared.request_id}-shadow", target, request
            )
            started = time.monotonic()
            result: EngineResult = await self._engines[target].generate.remote(shadow_request)
            summary = AnswerSummary(result.text, result.num_tokens, time.monotonic() - started, result.finish_reason)
            self._metrics.observe_comparison(prepared.variant, target, compare(primary, summary))
        except Exception as error:  # a failing shadow is a finding to count, never a client-visible error
            logger.warning("shadow copy of %s to %s failed: %r", prepared.request_id, target, error)
            self._metrics.observe_shadow_error(prepared.variant, target)
