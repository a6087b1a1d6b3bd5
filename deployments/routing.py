"""The A/B routing policy: a pure function of the weights and the request's routing keys.

No Ray, no HTTP: the router deployment wraps it, and its tests run in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Reason = Literal["override", "model", "sticky", "weighted"]


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """What the router needs to know of a request, and nothing more."""

    model: str
    sticky_key: str | None = None
    override: str | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    variant: str
    reason: Reason


class UnknownVariant(LookupError):
    """A request named a variant (as model or override) that is not configured."""

    def __init__(self, name: str, field: str) -> None:
        super().__init__(name, field)
        self.name = name
        self.field = field


class NoRoutableVariant(LookupError):
    """Every variant has weight 0, so unpinned traffic has nowhere to go."""


def sticky_point(key: str, salt: str) -> float:
    """Map a key to a stable point in [0, 1): the same key lands on the same point in every process."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class RoutingPolicy:
    """Weighted split with sticky keys and explicit pins.

    Order of precedence: an override header, then a variant asked for by name as the ``model``, then the
    sticky key's point on the weight line, then a random point. Variants keep their configured order on the
    weight line, so a weight change moves only the keys near the boundaries that shift.
    """

    def __init__(self, weights: Mapping[str, float], *, public_model: str, salt: str) -> None:
        if not weights:
            raise ValueError("at least one variant is required")
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must be non-negative")
        self.public_model = public_model
        self.salt = salt
        self._variants = list(weights)
        total = sum(weights.values())
        self._bounds: list[tuple[float, str]] = []
        running = 0.0
        for name, weight in weights.items():
            if weight > 0:
                running += weight / total
                self._bounds.append((running, name))

    @property
    def variants(self) -> list[str]:
        return list(self._variants)

    def _on_line(self, point: float) -> str:
        if not self._bounds:
            raise NoRoutableVariant("all variant weights are 0; pin a variant by name")
        for bound, name in self._bounds:
            if point < bound:
                return name
        return self._bounds[-1][1]

    def decide(self, query: RouteQuery, rng: random.Random | None = None) -> RouteDecision:
        if query.override:
            if query.override not in self._variants:
                raise UnknownVariant(query.override, "override")
            return RouteDecision(query.override, "override")
        if query.model != self.public_model:
            if query.model not in self._variants:
                raise UnknownVariant(query.model, "model")
            return RouteDecision(query.model, "model")
        if query.sticky_key:
            return RouteDecision(self._on_line(sticky_point(query.sticky_key, self.salt)), "sticky")
        return RouteDecision(self._on_line((rng or random).random()), "weighted")
