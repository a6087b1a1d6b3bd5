"""The node-loss measurement: how requests are split around a node's death and what is measured (pure), and the
load generator's client against a local fake server (no Ray)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from loadtests.node_loss import BackgroundLoad, RequestRecord, analyze, markdown, stream_once


def rec(started: float, ended: float, ok: bool = True, status: int = 200, retryable: bool = False, error=None):
    return RequestRecord(started, ended, status, ok, None if ok else (error or "boom"), retryable)


def test_requests_are_split_by_the_window_in_which_the_node_died() -> None:
    records = [
        rec(0, 1),  # before the kill
        rec(1, 2.5),
        rec(9, 11),  # in flight at the kill, ok
        rec(9.5, 10.8, ok=False, status=503, retryable=True),  # in flight, failed fast
        rec(10.2, 10.9, ok=False, status=200, retryable=True),  # started after the kill, before the node died
        rec(11, 12),  # after the node died
        rec(12, 13.5, ok=False, status=500),  # after: a failure node loss must never cause
        rec(14, 15),
    ]
    report = analyze(records, 10.0, died_at=10.5, end_at=16, detect_at=13, replicas_back_at=14)
    assert (report.before_kill, report.failed_before) == (2, 0)
    assert (report.in_flight_at_kill, report.failed_in_flight) == (3, 2)
    assert (report.after_kill, report.failed_new) == (3, 1)
    assert report.failed_not_retryable == 1
    assert report.max_fail_s == pytest.approx(1.5)  # 12 -> 13.5; in-flight failures count from the kill
    assert report.first_ok_s == pytest.approx(2.0)  # started at 11 (after the node died), ended at 12
    assert report.stall_s == pytest.approx(3.0)  # no completion between 12 and 15
    assert (report.died_s, report.detect_s, report.replicas_back_s) == (0.5, 3, 4)
    assert report.ok_per_s_after_recovery == pytest.approx(1 / 2)  # one ok completion (15) in 14..16
    text = markdown(report, title="t")
    assert "| started after the node died / of them failed | 3 / 1 |" in text


def test_stall_is_the_longest_stretch_without_a_successful_completion_after_the_kill() -> None:
    records = [rec(0, 9), rec(9, 10.5), rec(10, 16), rec(16, 17)]
    report = analyze(records, 10.0, end_at=18)
    assert report.stall_s == pytest.approx(5.5)  # 10.5 -> 16
    assert report.failed_in_flight == 0 and report.max_fail_s is None


class FakeOpenAI(BaseHTTPRequestHandler):
    """A streaming chat endpoint: ``user-0`` gets a good stream, ``user-1`` a 503, ``user-2`` an error event."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        user = body["user"]
        if user == "user-1":
            payload = json.dumps({"error": {"message": "gone", "type": "service_unavailable"}}).encode()
            self.send_response(503)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-servefleet-variant", "sim-b")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if user == "user-2":
            error = {"error": {"message": "a replica failed", "type": "service_unavailable"}}
            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
        else:
            usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def fake_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_client_tells_a_good_stream_a_refusal_and_a_broken_stream_apart(fake_server: str) -> None:
    async def three() -> list[RequestRecord]:
        async with httpx.AsyncClient(base_url=fake_server) as client:
            return [await stream_once(client, {"user": f"user-{i}"}, timeout_s=10) for i in range(3)]

    good, refused, broken = asyncio.run(three())
    assert good.ok and good.variant == "sim-b" and good.error is None
    assert not refused.ok and refused.status == 503 and refused.retryable
    assert not broken.ok and broken.status == 200 and broken.retryable
    assert "service_unavailable" in (broken.error or "")


def test_background_load_is_bounded_by_its_request_count(fake_server: str) -> None:
    load = BackgroundLoad(fake_server, users=3, duration_s=30, max_requests=12, body=lambda i, n: {"user": "user-0"})
    with load:
        records = load.wait()
    assert len(records) == 12 and all(r.ok for r in records)


def test_background_load_refuses_a_host_that_is_not_this_machine() -> None:
    with pytest.raises(ValueError):
        BackgroundLoad("http://example.com:8000", users=1, duration_s=1, max_requests=1)
