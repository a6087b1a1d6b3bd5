"""A seeded, pure model of a continuously batching engine, for tests and capacity planning (SIMULATED).

Nothing here runs a model. It reproduces the part of vLLM that shapes latency and throughput, so that
routing, autoscaling and rollout logic can be exercised at many replicas on a small machine, and so that "how
many replicas for this traffic?" can be answered in milliseconds:

- time advances in engine steps; a step costs ``base_step_ms + per_seq_step_ms * batch`` plus
  ``prefill_ms_per_token`` for every prompt token admitted in it (``loadtests/calibrate_sim.py`` fits these to
  the real engine);
- each step first reserves one KV slot per running sequence, preempting the most recently admitted sequences
  when the cache is full (vLLM's recompute preemption: they wait again, at the head of the queue, and pay
  their prefill again when readmitted); then, if nothing was preempted, it admits waiting requests in arrival
  order while the batch is below ``max_num_seqs`` and the KV cache has room for the whole context;
- every running sequence emits one token per step (an admitted request's first token comes out of its prefill
  step), and a finished sequence frees its KV at once.

Output tokens come from a per-request RNG seeded by ``(seed, key)``, where the caller's ``key`` stands for the
prompt: the same request gets the same tokens whatever else shares the batch, and whether it was preempted.

The model has no clock of its own beyond the simulated milliseconds it counts; ``simulate`` replays a list of
arrivals offline, and ``deployments.sim_engine`` drives the same scheduler in real time under asyncio.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LoadSignals",
    "RequestTrace",
    "SimArrival",
    "SimEngineConfig",
    "SimRun",
    "SimScheduler",
    "StepResult",
    "TokenEvent",
    "simulate",
]

_T = TypeVar("_T")


class SimEngineConfig(BaseModel):
    """Costs and limits of the simulated engine.

    The defaults are a rough fit of ``tiny-v1`` on vLLM's CPU build on this project's 2-core machine (README
    benchmark: about 5 ms per token at one stream, 29 ms at 64) with a 1 GiB KV cache; re-fit them with
    ``loadtests/calibrate_sim.py`` before relying on them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_step_ms: float = Field(default=5.0, ge=0, description="Fixed cost of one engine step, whatever the batch.")
    per_seq_step_ms: float = Field(
        default=0.37, ge=0, description="Added step cost per sequence in the batch (the decode cost of one token)."
    )
    prefill_ms_per_token: float = Field(
        default=0.05, ge=0, description="Added step cost per prompt token admitted (prefilled) in that step."
    )
    kv_capacity_tokens: int = Field(
        default=131_072, gt=0, description="Tokens of context the KV cache holds across all running sequences."
    )
    max_num_seqs: int = Field(default=64, gt=0, description="Most sequences in one continuous batch.")
    eos_probability: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "Chance that each generated token ends its sequence (finish reason `stop`), to model answers shorter "
            "than max_tokens. 0 makes every request run to max_tokens."
        ),
    )
    error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Fault injection: chance that a request fails as an engine fault would (HTTP 503), drawn per request "
            "from the seed. For rehearsing a canary that breaks; 0 (never) otherwise."
        ),
    )
    seed: int = Field(default=0, description="Seed for output token choice, end-of-sequence and fault draws.")

    def step_ms(self, batch_size: int, prefill_tokens: int = 0) -> float:
        """The simulated duration of one step over ``batch_size`` sequences that prefills ``prefill_tokens``."""
        return self.base_step_ms + self.per_seq_step_ms * batch_size + self.prefill_ms_per_token * prefill_tokens


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One token emitted for one request in one step; ``finish_reason`` is set on its last token."""

    request_id: str
    token_id: int
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did, and how long it took in simulated milliseconds."""

    started_ms: float
    duration_ms: float
    batch_size: int
    prefill_tokens: int
    kv_peak_tokens: int  # KV in use once this step's tokens are written, before finished sequences free theirs
    admitted: tuple[str, ...]
    preempted: tuple[str, ...]
    tokens: tuple[TokenEvent, ...]

    @property
    def ended_ms(self) -> float:
        return self.started_ms + self.duration_ms

    @property
    def finished(self) -> tuple[str, ...]:
        return tuple(event.request_id for event in self.tokens if event.finish_reason is not None)


@dataclass(frozen=True, slots=True)
class LoadSignals:
    """The engine signals that routing and autoscaling read (vLLM's names: running, waiting, KV-cache use)."""

    num_running: int
    num_waiting: int
    kv_used_tokens: int
    kv_capacity_tokens: int

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV cache in use, in [0, 1]."""
        return self.kv_used_tokens / self.kv_capacity_tokens


@dataclass(slots=True)
class _Sequence:
    request_id: str
    prompt_len: int
    max_tokens: int
    rng: random.Random
    generated: int = 0

    @property
    def context_len(self) -> int:
        return self.prompt_len + self.generated


class SimScheduler:
    """The discrete-time scheduler. Single-threaded and synchronous: callers own the clock between steps."""

    def __init__(self, config: SimEngineConfig) -> None:
        self.config = config
        self.now_ms = 0.0
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # in admission order: the tail is preempted first
        self._known: set[str] = set()
        self._kv_used = 0

    # ------------------------------------------------------------------------------------------ requests

    def submit(self, request_id: str, *, prompt_len: int, max_tokens: int, key: int = 0) -> None:
        """Queue a request. ``key`` stands for the prompt's content: equal keys give equal output tokens.

        Raises ``ValueError`` for a request the engine could never finish: its whole context (prompt plus
        ``max_tokens``) must fit the KV cache on its own, or it would be preempted forever.
        """
        if request_id in self._known:
            raise ValueError(f"request {request_id!r} is already in the engine")
        if prompt_len < 1:
            raise ValueError("a request needs at least one prompt token")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if prompt_len + max_tokens > self.config.kv_capacity_tokens:
            raise ValueError(
                f"prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds the KV cache "
                f"({self.config.kv_capacity_tokens} tokens)"
            )
        # A string seed hashes the same in every process (unlike hash()), so runs repeat exactly.
        rng = random.Random(f"{self.config.seed}:{key}")
        self._waiting.append(_Sequence(request_id, prompt_len, max_tokens, rng))
        self._known.add(request_id)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is, freeing its batch slot and KV. False if it was not in the engine."""
        if request_id not in self._known:
            return False
        self._known.discard(request_id)
        for index, seq in enumerate(self._running):
            if seq.request_id == request_id:
                del self._running[index]
                self._kv_used -= seq.context_len
                return True
        for seq in self._waiting:
            if seq.request_id == request_id:
                self._waiting.remove(seq)
                return True
        raise AssertionError(f"request {request_id!r} known but neither running nor waiting")

    # ------------------------------------------------------------------------------------------ signals

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def signals(self) -> LoadSignals:
        return LoadSignals(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_used_tokens=self._kv_used,
            kv_capacity_tokens=self.config.kv_capacity_tokens,
        )

    def advance_to(self, now_ms: float) -> None:
        """Let idle time pass (the clock never goes back)."""
        self.now_ms = max(self.now_ms, now_ms)

    # ------------------------------------------------------------------------------------------ stepping

    def step(self) -> StepResult | None:
        """Run one engine step; None when there is nothing to run."""
        if not self.has_work:
            return None
        config = self.config
        capacity = config.kv_capacity_tokens

        preempted: list[_Sequence] = []
        while self._running and self._kv_used + len(self._running) > capacity:
            victim = self._running.pop()
            self._kv_used -= victim.context_len
            preempted.append(victim)
        # The earliest admitted of the victims goes back to the very head of the queue.
        for seq in preempted:
            self._waiting.appendleft(seq)

        admitted: list[str] = []
        prefill_tokens = 0
        if not preempted:
            reserved = self._kv_used + len(self._running)
            while self._waiting and len(self._running) < config.max_num_seqs:
                seq = self._waiting[0]
                # Its whole context so far (prompt, plus output already produced if it was preempted) is
                # prefilled again, and it needs one more slot for the token it emits in this step.
                if reserved + seq.context_len + 1 > capacity:
                    break  # first come, first served: nothing overtakes the head of the queue
                self._waiting.popleft()
                reserved += seq.context_len + 1
                prefill_tokens += seq.context_len
                self._kv_used += seq.context_len
                self._running.append(seq)
                admitted.append(seq.request_id)

        batch_size = len(self._running)
        events: list[TokenEvent] = []
        finished: list[_Sequence] = []
        for seq in self._running:
            token_id = seq.rng.getrandbits(31)
            seq.generated += 1
            self._kv_used += 1
            finish: str | None = None
            if seq.generated >= seq.max_tokens:
                finish = "length"
            elif config.eos_probability > 0 and seq.rng.random() < config.eos_probability:
                finish = "stop"
            events.append(TokenEvent(seq.request_id, token_id, finish))
            if finish is not None:
                finished.append(seq)
        kv_peak = self._kv_used
        for seq in finished:
            self._running.remove(seq)
            self._kv_used -= seq.context_len
            self._known.discard(seq.request_id)

        result = StepResult(
            started_ms=self.now_ms,
            duration_ms=config.step_ms(batch_size, prefill_tokens),
            batch_size=batch_size,
            prefill_tokens=prefill_tokens,
            kv_peak_tokens=kv_peak,
            admitted=tuple(admitted),
            preempted=tuple(seq.request_id for seq in preempted),
            tokens=tuple(events),
        )
        self.now_ms = result.ended_ms
        return result


# ---------------------------------------------------------------------------------------------- offline runs


@dataclass(frozen=True, slots=True)
class SimArrival:
    """A request arriving at ``at_ms`` of simulated time."""

    at_ms: float
    prompt_len: int
    max_tokens: int
    key: int = 0


@dataclass(frozen=True, slots=True)
class RequestTrace:
    request_id: str
    arrival_ms: float
    first_token_ms: float
    finish_ms: float
    output_tokens: int
    finish_reason: str
    preemptions: int

    @property
    def ttft_ms(self) -> float:
        return self.first_token_ms - self.arrival_ms

    @property
    def e2e_ms(self) -> float:
        return self.finish_ms - self.arrival_ms

    @property
    def mean_itl_ms(self) -> float:
        """Mean inter-token latency (0 for a one-token answer)."""
        gaps = self.output_tokens - 1
        return (self.finish_ms - self.first_token_ms) / gaps if gaps else 0.0


@dataclass(frozen=True, slots=True)
class SimRun:
    """An offline simulation's outcome: one trace per request, in the order the arrivals were given, and
    whole-run figures."""

    requests: tuple[RequestTrace, ...]
    steps: int
    makespan_ms: float
    output_tokens: int
    peak_kv_usage: float
    peak_waiting: int
    peak_batch: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / (self.makespan_ms / 1000) if self.makespan_ms else 0.0


@dataclass(slots=True)
class _Trace:
    arrival_ms: float
    first_token_ms: float | None = None
    finish_ms: float | None = None
    tokens: int = 0
    finish_reason: str | None = None
    preemptions: int = 0


def simulate(config: SimEngineConfig, arrivals: Iterable[SimArrival], *, max_steps: int = 10_000_000) -> SimRun:
    """Replay ``arrivals`` through one simulated engine, offline, and report every request's timings.

    A request that arrives during a step waits for the next step boundary, as in the real engine. Idle time
    between arrivals is skipped. ``max_steps`` bounds the run (it cannot be reached by a valid workload unless
    it is enormous; it guards against a scheduling bug looping forever).
    """
    pending = sorted(enumerate(arrivals), key=lambda item: (item[1].at_ms, item[0]))
    scheduler = SimScheduler(config)
    traces: dict[str, _Trace] = {}
    next_arrival = 0
    steps = 0
    peak_kv = 0.0
    peak_waiting = 0
    peak_batch = 0
    output_tokens = 0

    while next_arrival < len(pending) or scheduler.has_work:
        if not scheduler.has_work:
            scheduler.advance_to(pending[next_arrival][1].at_ms)
        while next_arrival < len(pending) and pending[next_arrival][1].at_ms <= scheduler.now_ms:
            index, arrival = pending[next_arrival]
            request_id = f"sim-{index}"
            scheduler.submit(request_id, prompt_len=arrival.prompt_len, max_tokens=arrival.max_tokens, key=arrival.key)
            traces[request_id] = _Trace(arrival_ms=arrival.at_ms)
            next_arrival += 1
        peak_waiting = max(peak_waiting, scheduler.signals().num_waiting)

        result = scheduler.step()
        if result is None:
            continue
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"simulation did not finish within {max_steps} steps")
        peak_batch = max(peak_batch, result.batch_size)
        for request_id in result.preempted:
            traces[request_id].preemptions += 1
        for event in result.tokens:
            trace = traces[event.request_id]
            trace.tokens += 1
            output_tokens += 1
            if trace.first_token_ms is None:
                trace.first_token_ms = result.ended_ms
            if event.finish_reason is not None:
                trace.finish_ms = result.ended_ms
                trace.finish_reason = event.finish_reason
        peak_kv = max(peak_kv, result.kv_peak_tokens / config.kv_capacity_tokens)
        peak_waiting = max(peak_waiting, scheduler.signals().num_waiting)  # preempted sequences wait too

    requests = tuple(
        RequestTrace(
            request_id=request_id,
            arrival_ms=trace.arrival_ms,
            first_token_ms=_required(trace.first_token_ms),
            finish_ms=_required(trace.finish_ms),
            output_tokens=trace.tokens,
            finish_reason=_required(trace.finish_reason),
            preemptions=trace.preemptions,
        )
        for request_id, trace in sorted(traces.items(), key=lambda item: int(item[0].removeprefix("sim-")))
    )
    start = min((r.arrival_ms for r in requests), default=0.0)
    return SimRun(
        requests=requests,
        steps=steps,
        makespan_ms=scheduler.now_ms - start,
        output_tokens=output_tokens,
        peak_kv_usage=peak_kv,
        peak_waiting=peak_waiting,
        peak_batch=peak_batch,
    )


def _required(value: _T | None) -> _T:
    if value is None:
        raise AssertionError("simulation ended with an unfinished request")
    return value
