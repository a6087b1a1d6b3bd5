"""The LLM-aware Locust user: streams chat completions and measures them from the stream itself.

With ``--sf-stream-fraction`` below 1 (default 1: every request streams) a seeded share of the requests asks for
one JSON answer instead (Locust entry ``POST /v1/chat/completions (non-streaming)``; only its end-to-end latency
is measured, by ``sse.measure_answer``). Each record keeps whether it streamed, the OpenAI error type of a
failure (from the body or the stream's error event) and the Retry-After header.

Imports Locust (and so gevent's monkey-patching): only ``locustfile.py`` imports this module. The measuring
is in ``sse.py`` (pure); this module sends, times the bytes, and reports.

Each request is reported three ways:

- the HTTP request itself (``POST /v1/chat/completions``), a Locust failure when the status is not 200 or the
  stream is malformed, with its response time set to the end-to-end latency;
- Locust entries of type ``ttft``, ``itl`` and ``e2e`` named after the variant that served the request, so
  Locust's own table, web UI and CSVs show the LLM latencies per variant (in ms, Locust's unit; ``e2e`` carries
  the output tokens as its "response length"). Locust's "Aggregated" row mixes these types and means nothing;
- one row of the per-request CSV (``records.py``), which the release gate reads.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from typing import Any

import requests
from locust import HttpUser, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.guards import (
    MAX_RUN_TIME_S,
    LoadTestBoundsError,
    check_loopback_host,
    check_run_time,
    check_users,
)
from loadtests.options import LoadSettings, settings_from_options
from loadtests.profiles import Profile, get_profile
from loadtests.prompts import chat_request_body, is_streamed, plain_request_body
from loadtests.records import RecordWriter, RequestRecord, build_record
from loadtests.sse import StreamMeter, StreamMetrics, error_type_of, measure_answer

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
PLAIN_NAME = f"{CHAT_PATH} (non-streaming)"
"""Locust's entry name for non-streaming requests, apart from the streamed ones."""
VARIANT_HEADER = "x-servefleet-variant"
STICKY_HEADER = "x-servefleet-user"
REQUEST_ID_HEADER = "x-request-id"
CONNECT_TIMEOUT_S = 5.0


def request_headers(*, variant: str, sticky_key: str | None, stream: bool = True) -> dict[str, str]:
    headers = {"accept": "text/event-stream" if stream else "application/json"}
    if variant:
        headers[VARIANT_HEADER] = variant
    if sticky_key:
        headers[STICKY_HEADER] = sticky_key
    return headers


class LoadRun:
    """Per-process state of one Locust run: settings, the prompt counter and the per-request CSV."""

    def __init__(self, settings: LoadSettings) -> None:
        self.settings = settings
        self.profile: Profile = get_profile(settings.profile)
        self._prompt_indexes = itertools.count()
        self._user_numbers = itertools.count()
        self._writer = RecordWriter(settings.requests_csv) if settings.requests_csv else None

    def next_prompt_index(self) -> int:
        # Greenlets switch only on I/O, so this counter needs no lock; runs replay the same prompt sequence.
        return next(self._prompt_indexes)

    def next_user_number(self) -> int:
        return next(self._user_numbers)

    def record(self, record: RequestRecord) -> None:
        if self._writer is not None:
            self._writer.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def start_load_run(environment: Environment) -> LoadRun:
    """Check the bounds of the run Locust was started with, then open its state; raises ``LoadTestBoundsError``."""
    options = environment.parsed_options
    if options is None:
        raise LoadTestBoundsError("Locust gave no parsed options; run this locustfile with the locust command")
    if environment.host:
        check_loopback_host(environment.host)
    if options.num_users:
        check_users(int(options.num_users))
    if options.run_time:
        check_run_time(float(options.run_time))
    elif options.headless:
        raise LoadTestBoundsError(f"a headless run needs --run-time (at most {MAX_RUN_TIME_S} s)")
    settings = settings_from_options(options)
    if settings.requests_csv is None:
        logger.info("no per-request CSV (give --csv or --sf-requests-csv to keep every sample)")
    return LoadRun(settings)


class LLMUser(HttpUser):
    """Sends the profile's prompts one after another, streaming each answer."""

    load_run: LoadRun | None = None
    """Set by the locustfile's ``init`` listener before any user starts."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        run = self._run()
        number = run.next_user_number()
        self._sticky_key = f"loadtest-user-{number}" if run.settings.sticky_users else None
        self._rng = random.Random(f"think:{run.settings.seed}:{number}")

    def _run(self) -> LoadRun:
        if self.load_run is None:
            raise RuntimeError("LLMUser.load_run is unset; start Locust with -f loadtests/locustfile.py")
        return self.load_run

    def wait_time(self) -> float:
        return self._run().profile.think_time(self._rng)

    def on_start(self) -> None:
        try:
            check_loopback_host(self.host or "")
        except LoadTestBoundsError as error:
            # The web UI can change the host after the locustfile's own check; refuse here too.
            logger.error("%s", error)
            raise StopUser() from None

    @task
    def chat(self) -> None:
        run = self._run()
        prompt = run.profile.prompt(run.settings.seed, run.next_prompt_index())
        if is_streamed(run.settings.seed, prompt.index, run.settings.stream_fraction):
            record = self._stream(chat_request_body(prompt, model=run.settings.model), prompt.index)
        else:
            record = self._plain(plain_request_body(prompt, model=run.settings.model), prompt.index)
        run.record(record)
        if record.ok:
            self._report_latencies(record)

    def _stream(self, body: dict[str, Any], prompt_index: int) -> RequestRecord:
        settings = self._run().settings
        start_time, start = time.time(), time.perf_counter()
        metrics: StreamMetrics | None = None
        error = ""
        with self.client.post(
            CHAT_PATH,
            json=body,
            headers=request_headers(variant=settings.variant, sticky_key=self._sticky_key),
            stream=True,
            catch_response=True,
            timeout=(CONNECT_TIMEOUT_S, settings.request_timeout_s),
        ) as response:
            status = int(response.status_code or 0)
            if status != 200:
                error = _http_error(response, status)
                response.failure(error)
            else:
                meter = StreamMeter(start)
                try:
                    for piece in response.iter_content(chunk_size=None):
                        meter.feed(time.perf_counter(), piece)
                except requests.RequestException as exc:
                    error = f"stream broke off: {exc!r}"
                metrics = meter.finish(time.perf_counter())
                failure = error or metrics.error
                if failure:
                    response.failure(failure)
                else:
                    response.success()
                response.request_meta["response_time"] = metrics.e2e_s * 1000
                response.request_meta["response_length"] = metrics.output_tokens or 0
        return build_record(
            start_time=start_time,
            status=status,
            metrics=metrics,
            error=error,
            e2e_s=time.perf_counter() - start if metrics is None else None,
            profile=settings.profile,
            prompt_index=prompt_index,
            requested_variant=settings.variant,
            variant=response.headers.get(VARIANT_HEADER, "") if response.headers else "",
            request_id=response.headers.get(REQUEST_ID_HEADER, "") if response.headers else "",
            error_type=_error_type(response, status),
            retry_after=response.headers.get("retry-after", "") if response.headers else "",
        )

    def _plain(self, body: dict[str, Any], prompt_index: int) -> RequestRecord:
        """One non-streaming request: the answer arrives whole, so only its end-to-end latency is measured."""
        settings = self._run().settings
        start_time, start = time.time(), time.perf_counter()
        metrics: StreamMetrics | None = None
        error = ""
        with self.client.post(
            CHAT_PATH,
            name=PLAIN_NAME,
            json=body,
            headers=request_headers(variant=settings.variant, sticky_key=self._sticky_key, stream=False),
            catch_response=True,
            timeout=(CONNECT_TIMEOUT_S, settings.request_timeout_s),
        ) as response:
            e2e_s = time.perf_counter() - start
            status = int(response.status_code or 0)
            if status != 200:
                error = _http_error(response, status)
                response.failure(error)
            else:
                metrics = measure_answer(response.text or "", e2e_s=e2e_s)
                if metrics.error:
                    response.failure(metrics.error)
                else:
                    response.success()
        headers = response.headers or {}
        return build_record(
            start_time=start_time,
            status=status,
            metrics=metrics,
            error=error,
            e2e_s=e2e_s if metrics is None else None,
            profile=settings.profile,
            prompt_index=prompt_index,
            requested_variant=settings.variant,
            variant=headers.get(VARIANT_HEADER, ""),
            request_id=headers.get(REQUEST_ID_HEADER, ""),
            stream=False,
            error_type=_error_type(response, status),
            retry_after=headers.get("retry-after", ""),
        )

    def _report_latencies(self, record: RequestRecord) -> None:
        variant = record.variant or "unknown"
        fire = self.environment.events.request.fire
        for kind, seconds, length in (
            ("ttft", record.ttft_s, 0),
            ("itl", record.itl_s, 0),
            ("e2e", record.e2e_s, record.output_tokens or 0),
        ):
            if seconds is not None:
                fire(
                    request_type=kind,
                    name=variant,
                    response_time=seconds * 1000,
                    response_length=length,
                    exception=None,
                    context={},
                )


def _error_type(response: Any, status: int) -> str:
    """The OpenAI error type of a failed response's body (a 200's stream events are read by the meter)."""
    if status in (0, 200):
        return ""
    try:
        return error_type_of(response.text or "")
    except requests.RequestException:
        return ""


def _http_error(response: Any, status: int) -> str:
    if status == 0:
        return f"no response: {getattr(response, 'error', None)!r}"
    try:
        text = response.text or ""
    except requests.RequestException:
        text = ""
    return f"HTTP {status}: {text[:200]}"
