"""Shadow traffic: a sample of requests is also sent to a shadow variant, whose answer is compared with the
one the client got and then dropped.

Pure: which requests to copy (a hash of the request id, so the choice is the same in every replica and on a
retry), and how two answers compare. Sending the copy, off the client's critical path, is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from deployments.routing import sticky_point


class ShadowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="Variant that gets the copies.")
    fraction: float = Field(default=0.05, ge=0, le=1, description="Share of requests copied to it.")
    salt: str = Field(
        default="shadow",
        description="Mixed into the hash. Distinct from the routing salt, so that which requests are copied does "
        "not follow which variant they were routed to.",
    )


def should_shadow(request_id: str, fraction: float, *, salt: str = "shadow") -> bool:
    """Whether this request is copied: its hash point in [0, 1) falls below ``fraction``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within 0..1, got {fraction}")
    return sticky_point(request_id, salt) < fraction


def shadow_target(request_id: str, primary: str, config: ShadowConfig) -> str | None:
    """The variant to copy this request to, or None: not sampled, or already served by the shadow variant."""
    if primary == config.variant or not should_shadow(request_id, config.fraction, salt=config.salt):
        return None
    return config.variant


@dataclass(frozen=True, slots=True)
class AnswerSummary:
    """What is compared of one answer. ``latency_s`` is measured the same way for both (engine call to end)."""

    text: str
    num_tokens: int
    latency_s: float
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """Shadow minus primary. ``latency_ratio`` is shadow / primary (None if the primary took no time)."""

    exact_match: bool
    length_delta_tokens: int
    latency_delta_s: float
    latency_ratio: float | None
    same_finish_reason: bool


def compare(primary: AnswerSummary, shadow: AnswerSummary) -> ShadowComparison:
    """Exact text match is only meaningful for greedy (temperature 0) or seeded requests; for sampled ones it
    measures chance, so callers may prefer to copy only those."""
    return ShadowComparison(
        exact_match=primary.text == shadow.text,
        length_delta_tokens=shadow.num_tokens - primary.num_tokens,
        latency_delta_s=shadow.latency_s - primary.latency_s,
        latency_ratio=shadow.latency_s / primary.latency_s if primary.latency_s > 0 else None,
        same_finish_reason=primary.finish_reason == shadow.finish_reason,
    )
