"""Auth, rate limits, request limits and feedback on a real deployment: a second app on the session's Ray
cluster, with API keys on and the SIMULATED engine (the guards under test sit in front of the engine, so the
real one adds only minutes here; the main app covers vLLM)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.auth import hash_token
from serve_app.config import parse_config

ALICE = "sf-alice-" + "a" * 40  # may use sim-a only
SLOW = "sf-slow-" + "b" * 40  # one request per 2 seconds
ADMIN = "sf-admin-" + "c" * 40
MSG = [{"role": "user", "content": "hello"}]
PREFIX = "/guarded"


@pytest.fixture(scope="module")
def guarded(running_app, tmp_path_factory) -> Iterator[httpx.Client]:
    from ray import serve

    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    keys = Path(tmp_path_factory.mktemp("keys")) / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{name: alice, key_hash: '{hash_token(ALICE)}', variants: [sim-a]}}\n"
        f"  - {{name: slow, key_hash: '{hash_token(SLOW)}', variants: ['*'], requests_per_s: 0.5}}\n"
        f"  - {{name: admin, key_hash: '{hash_token(ADMIN)}', variants: ['*'], admin: true}}\n"
    )
    os.chmod(keys, 0o600)
    sim = {"model": "builtin:tiny-v1", "backend": "sim", "num_cpus": 0, "engine": {"max_model_len": 1024}}
    config = parse_config(
        {
            "app_name": "guarded",
            "server": {"port": running_app.config.server.port},
            "variants": [{"name": "sim-a", "weight": 100, **sim}, {"name": "sim-b", "weight": 0, **sim}],
            "auth": {"enabled": True, "keys_file": str(keys)},
            "limits": {"max_body_bytes": 4096, "max_tokens": 64, "max_prompt_tokens": 200},
            "shadow": {"variant": "sim-b", "fraction": 1.0},
            "feedback": {"path": str(tmp_path_factory.mktemp("feedback") / "feedback.sqlite3")},
            # The main app routes and preprocesses inside its ingress; this one has them as deployments, so
            # that path (routing, limits, shadow copies, a weight change) runs for real too.
            "pools": {"route_and_prepare": "deployments"},
        }
    )
    url = f"{running_app.url}{PREFIX}"

    def deploy(new: object = config) -> None:
        serve.run(build_app(new), name=config.app_name, route_prefix=PREFIX, blocking=False)
        wait_ready(url, timeout_s=300)

    try:
        deploy()
        with httpx.Client(base_url=url, timeout=60) as client:
            client.redeploy = deploy  # type: ignore[attr-defined]
            client.config = config  # type: ignore[attr-defined]
            client.config = config  # type: ignore[attr-defined]
            yield client
    finally:
        serve.delete(config.app_name)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def chat(client: httpx.Client, token: str | None, **body) -> httpx.Response:
    headers = bearer(token) if token else {}
    headers.update(body.pop("headers", {}))
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, **body}, headers=headers)


def test_probes_stay_open_without_a_key(guarded):
    assert guarded.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer sf-unknown-" + "z" * 40}, {"authorization": "Basic abc"}],
    ids=["missing", "unknown", "malformed"],
)
def test_requests_without_a_valid_key_get_401(guarded, headers):
    response = guarded.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_401_comes_before_the_body_is_even_parsed(guarded):
    response = guarded.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401


def test_a_key_gets_403_for_a_variant_it_was_not_granted(guarded):
    assert chat(guarded, ALICE, max_tokens=4).status_code == 200
    response = chat(guarded, ALICE, max_tokens=4, headers={"x-servefleet-variant": "sim-b"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"


def test_admin_routes_need_an_admin_key(guarded):
    assert guarded.get("/admin/status").status_code == 401
    refused = guarded.get("/admin/status", headers=bearer(ALICE))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_required")
    assert guarded.post("/admin/rollout/abort", headers=bearer(ALICE)).status_code == 403
    status = guarded.get("/admin/status", headers=bearer(ADMIN))
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["app"] == "guarded" and body["rollout"] is None
    assert {(v["name"], v["weight"], v["healthy"]) for v in body["variants"]} == {
        ("sim-a", 100.0, True),
        ("sim-b", 0.0, True),
    }
    no_rollout = guarded.post("/admin/rollout/promote", headers=bearer(ADMIN))
    assert (no_rollout.status_code, no_rollout.json()["error"]["code"]) == (409, "no_rollout")
    unknown = guarded.post("/admin/rollout/explode", headers=bearer(ADMIN))
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "action")


def test_models_lists_only_what_the_key_may_use(guarded):
    ids = {card["id"] for card in guarded.get("/v1/models", headers=bearer(ALICE)).json()["data"]}
    assert "sim-a" in ids and "sim-b" not in ids
    ids = {card["id"] for card in guarded.get("/v1/models", headers=bearer(ADMIN)).json()["data"]}
    assert {"sim-a", "sim-b"} <= ids


def test_rate_limit_answers_429_with_retry_after_and_recovers(guarded):
    assert chat(guarded, SLOW, max_tokens=4).status_code == 200
    refused = chat(guarded, SLOW, max_tokens=4)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 3
    time.sleep(wait)
    assert chat(guarded, SLOW, max_tokens=4).status_code == 200


def test_body_over_the_limit_is_413(guarded):
    big = [{"role": "user", "content": "x" * 5000}]
    response = guarded.post("/v1/chat/completions", json={"model": "tiny", "messages": big}, headers=bearer(ADMIN))
    assert response.status_code == 413
    assert "limit is 4096" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(guarded):
    def chunks():
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = guarded.post(
        "/v1/chat/completions", content=chunks(), headers={**bearer(ADMIN), "content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 65}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "w " * 300}]}, "messages"),
    ],
    ids=["max_tokens cap", "n", "prompt tokens"],
)
def test_each_request_limit_has_its_own_400(guarded, body, param):
    response = chat(guarded, ADMIN, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_feedback_is_stored_and_survives_a_restart_of_the_app(guarded):
    answer = chat(guarded, ADMIN, max_tokens=4)
    request_id = answer.headers["x-request-id"]
    body = {"request_id": request_id, "variant": answer.headers["x-servefleet-variant"], "score": 4}
    first = guarded.post("/v1/feedback", json=body, headers=bearer(ADMIN))
    assert first.status_code == 200 and first.json()["first_rating"] is True
    bad = guarded.post("/v1/feedback", json={**body, "score": 9}, headers=bearer(ADMIN))
    assert bad.status_code == 400
    unknown = guarded.post("/v1/feedback", json={**body, "variant": "nope"}, headers=bearer(ADMIN))
    assert unknown.status_code == 400

    from ray import serve

    from serve_app.feedback import FeedbackStore

    serve.delete("guarded")  # every replica of the app goes away...
    guarded.redeploy()  # ...and new ones start
    with FeedbackStore(guarded.config.feedback.path) as store:
        entry = store.get(request_id)
        assert entry is not None and entry.score == 4 and entry.variant == body["variant"]
    again = guarded.post("/v1/feedback", json={**body, "score": 5}, headers=bearer(ADMIN))
    assert again.status_code == 200 and again.json()["first_rating"] is False  # the new ingress saw the old row


def test_shadow_copies_are_compared_in_metrics_while_the_client_gets_the_primary(guarded, running_app):
    for n in range(3):
        answer = chat(guarded, ADMIN, max_tokens=8, temperature=0, messages=[{"role": "user", "content": f"hi {n}"}])
        assert answer.status_code == 200
        assert answer.headers["x-servefleet-variant"] == "sim-a"
        assert answer.json()["model"] == "sim-a"
    metrics_url = f"http://127.0.0.1:{running_app.metrics_port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        lines = [
            line
            for line in httpx.get(metrics_url, timeout=10).text.splitlines()
            if line.startswith("ray_servefleet_shadow_comparisons_total{") and 'primary="sim-a"' in line
        ]
        if lines:
            break
        assert time.monotonic() < deadline, "no shadow comparison reached Ray's metrics agent"
        time.sleep(1)
    assert any('variant="sim-b"' in line and 'outcome="match"' in line for line in lines), lines


def test_config_update_and_rollback_under_load_fail_no_request(guarded):
    """Change the weights and an engine's costs (new router and engine replicas) while clients stream, then
    roll back; count every failed request. Bounded: 4 clients, each stops at the deadline or 400 requests."""
    import threading

    from serve_app.config import parse_config

    old = guarded.config
    data = old.model_dump(mode="json")
    data["variants"][0]["weight"], data["variants"][1]["weight"] = 50, 50
    data["variants"][1]["sim"]["base_step_ms"] = 6.0
    new = parse_config(data)
    stop = threading.Event()
    results: list[int] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=str(guarded.base_url), timeout=60) as own:
            for i in range(400):
                if stop.is_set():
                    return
                body = {"model": "tiny", "messages": [{"role": "user", "content": f"u{n} {i}"}], "max_tokens": 16}
                try:
                    with own.stream(
                        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=bearer(ADMIN)
                    ) as r:
                        text = r.read().decode()
                        results.append(r.status_code if '"error"' not in text else 599)
                except httpx.HTTPError:
                    results.append(0)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        guarded.redeploy(new)
        time.sleep(2)
        guarded.redeploy(old)
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert len(results) > 20
    assert [code for code in results if code != 200] == [], f"{len(results)} requests"
