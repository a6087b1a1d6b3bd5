"""Input drift: how far the prompts a variant sees now have moved from the prompts it saw first.

Two features per prompt, both cheap enough for the request path and both free of prompt text:

- its length in tokens, in fixed log2 bins (1, 2-3, 4-7, ... tokens), so a shift from chat-sized to
  document-sized prompts shows whatever the model's context;
- its token ids, hashed into a fixed number of buckets, so a change of language, domain or template shows
  without keeping a vocabulary-sized table. Hashing sees how the token mass is spread (natural text is
  Zipfian: frequent words, punctuation and template tokens dominate), so it catches a narrower or differently
  weighted vocabulary; a swap between two equally broad vocabularies hashes alike and goes unseen.

Each is compared with the population stability index (PSI): ``sum((q - p) * ln(q / p))`` over bins, with ``p``
the reference share and ``q`` the current one. Rules of thumb: below 0.1 stable, 0.1-0.25 moderate, above 0.25
a large shift. Pure: no clock, no I/O; windows count requests, not seconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Counts = npt.NDArray[np.int64]

# Prompt lengths 0, 1, 2-3, 4-7, ..., 2^16-2^17-1, and 2^17 or more: 19 bins, the last open-ended.
LENGTH_BINS = 19
TOKEN_BUCKETS = 128
# Shares below this are floored, so a bin empty on one side gives a large but finite PSI term.
PSI_EPSILON = 1e-4
# Most token ids read from one prompt; longer prompts are sampled at an even stride, which bounds the cost of
# a 100k-token prompt and keeps its bucket shares nearly the same.
MAX_TOKENS_PER_PROMPT = 4096


def length_bin(num_tokens: int) -> int:
    """The log2 bin of a prompt length: 0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 3, ... capped at the last bin."""
    if num_tokens < 0:
        raise ValueError(f"a length cannot be negative: {num_tokens}")
    return min(num_tokens.bit_length(), LENGTH_BINS - 1)


def length_counts(num_tokens: int) -> Counts:
    counts = np.zeros(LENGTH_BINS, dtype=np.int64)
    counts[length_bin(num_tokens)] = 1
    return counts


def _mix(ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finalizer: every input bit moves every output bit, so buckets behave as random. (A
    multiplicative hash would not do: it spreads a run of consecutive ids evenly over all buckets, which hides
    a shift to a narrow vocabulary.) uint64 arithmetic wraps, as the hash intends."""
    ids = ids ^ (ids >> np.uint64(30))
    ids = ids * np.uint64(0xBF58476D1CE4E5B9)
    ids = ids ^ (ids >> np.uint64(27))
    ids = ids * np.uint64(0x94D049BB133111EB)
    return ids ^ (ids >> np.uint64(31))


def token_buckets(token_ids: Sequence[int], buckets: int = TOKEN_BUCKETS) -> Counts:
    """Counts of one prompt's token ids per hashed bucket (sampled down to ``MAX_TOKENS_PER_PROMPT``)."""
    stride = max(1, math.ceil(len(token_ids) / MAX_TOKENS_PER_PROMPT))
    ids = np.asarray(token_ids[::stride], dtype=np.uint64)
    return np.bincount(_mix(ids) % np.uint64(buckets), minlength=buckets).astype(np.int64)


def psi(reference: Sequence[float], current: Sequence[float], *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two histograms over the same bins (counts or shares)."""
    if len(reference) != len(current):
        raise ValueError(f"histograms differ in bins: {len(reference)} vs {len(current)}")
    ref_total, cur_total = sum(reference), sum(current)
    if ref_total <= 0 or cur_total <= 0:
        raise ValueError("both histograms need at least one observation")
    total = 0.0
    for ref, cur in zip(reference, current, strict=True):
        p = max(ref / ref_total, epsilon)
        q = max(cur / cur_total, epsilon)
        total += (q - p) * math.log(q / p)
    return total


class RollingHistogram:
    """Bin counts summed over the last ``window`` observations; each observation is a full count vector."""

    def __init__(self, bins: int, window: int) -> None:
        if bins < 1 or window < 1:
            raise ValueError("bins and window must be at least 1")
        self._totals: Counts = np.zeros(bins, dtype=np.int64)
        self._recent: deque[npt.NDArray[np.uint32]] = deque()
        self._window = window

    def add(self, counts: Counts) -> None:
        if counts.shape != self._totals.shape:
            raise ValueError(f"expected {self._totals.shape[0]} bins, got {counts.shape}")
        # Stored as uint32 (a quarter of the memory of 1,000 prompts' worth of int64 vectors).
        self._recent.append(counts.astype(np.uint32))
        self._totals += counts
        if len(self._recent) > self._window:
            self._totals -= self._recent.popleft()

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self._totals)

    @property
    def size(self) -> int:
        """Observations in the window."""
        return len(self._recent)

    def clear(self) -> None:
        self._totals[:] = 0
        self._recent.clear()


@dataclass(frozen=True, slots=True)
class DriftScores:
    prompt_length: float
    token_ids: float
    reference_size: int
    current_size: int


class DriftMonitor:
    """Reference window against a rolling current window, for one variant.

    The first ``reference_size`` prompts form the reference and then stay fixed; every later prompt goes to
    the current window (the last ``window_size`` prompts). ``observe`` returns fresh scores every
    ``report_every`` prompts once the current window holds ``min_current``, so the caller updates its gauge
    without a timer. ``reset_reference`` starts a new reference, e.g. after a rollout changes the variant.
    """

    def __init__(
        self,
        *,
        reference_size: int = 1000,
        window_size: int = 1000,
        min_current: int = 200,
        report_every: int = 50,
        buckets: int = TOKEN_BUCKETS,
    ) -> None:
        if min(reference_size, window_size, min_current, report_every, buckets) < 1:
            raise ValueError("sizes must be at least 1")
        if min_current > window_size:
            raise ValueError("min_current cannot exceed window_size")
        self._reference_size = reference_size
        self._min_current = min_current
        self._report_every = report_every
        self._buckets = buckets
        # The reference is a rolling histogram that never rolls: its window is its size, and it stops
        # taking prompts once full.
        self._ref_lengths = RollingHistogram(LENGTH_BINS, reference_size)
        self._ref_tokens = RollingHistogram(buckets, reference_size)
        self._cur_lengths = RollingHistogram(LENGTH_BINS, window_size)
        self._cur_tokens = RollingHistogram(buckets, window_size)
        self._since_report = 0

    @property
    def reference_full(self) -> bool:
        return self._ref_lengths.size >= self._reference_size

    def observe(self, prompt_token_ids: Sequence[int]) -> DriftScores | None:
        lengths = length_counts(len(prompt_token_ids))
        tokens = token_buckets(prompt_token_ids, self._buckets)
        if not self.reference_full:
            self._ref_lengths.add(lengths)
            self._ref_tokens.add(tokens)
            return None
        self._cur_lengths.add(lengths)
        self._cur_tokens.add(tokens)
        self._since_report += 1
        if self._since_report < self._report_every:
            return None
        scores = self.scores()
        if scores is not None:
            self._since_report = 0
        return scores

    def scores(self) -> DriftScores | None:
        """PSI of both features now, or None until both windows hold enough prompts."""
        if not self.reference_full or self._cur_lengths.size < self._min_current:
            return None
        return DriftScores(
            prompt_length=psi(self._ref_lengths.counts, self._cur_lengths.counts),
            token_ids=_psi_or_zero(self._ref_tokens.counts, self._cur_tokens.counts),
            reference_size=self._ref_lengths.size,
            current_size=self._cur_lengths.size,
        )

    def reset_reference(self) -> None:
        for histogram in (self._ref_lengths, self._ref_tokens, self._cur_lengths, self._cur_tokens):
            histogram.clear()
        self._since_report = 0


def _psi_or_zero(reference: Sequence[int], current: Sequence[int]) -> float:
    # A window of only empty prompts has no token ids to compare; the length feature (bin 0) shows that shift.
    if sum(reference) == 0 or sum(current) == 0:
        return 0.0
    return psi(reference, current)
