"""Plain data passed between the graph's deployments.

Dataclasses with slots, not pydantic models: they cross a Ray hop for every request (and ``EngineChunk`` for
every few tokens), where pickling cost matters and validation has already happened at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RequestKind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated, tokenized request for one variant's engine."""

    request_id: str
    variant: str
    kind: RequestKind
    prompt_token_ids: list[int]
    sampling: SamplingSpec

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True, slots=True)
class EngineChunk:
    """Newly generated text, coalesced over a short window; ``finish_reason`` is set on the last one."""

    text: str
    num_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EngineResult:
    text: str
    num_tokens: int
    finish_reason: str | None


@dataclass(slots=True)
class EngineStats:
    variant: str
    running_requests: int
    healthy: bool
    extra: dict[str, float] = field(default_factory=dict)
