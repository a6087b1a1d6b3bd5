import hashlib
import json
import pickle

import pytest
from pydantic import ValidationError

from serve_app.auth import (
    ANONYMOUS,
    AuthConfig,
    Authenticator,
    Forbidden,
    KeyEntry,
    Unauthenticated,
    admin_refusal,
    exposure_warning,
    hash_token,
    is_loopback,
    load_key_entries,
    new_token,
)
from serve_app.config import ConfigError

ALICE_TOKEN = "sf-alice-0123456789abcdefghijklmnopqrstuv"
BOB_TOKEN = "sf-bob-0123456789abcdefghijklmnopqrstuvwxyz"


def entry(name, token, **fields):
    return {"name": name, "key_hash": hash_token(token), "variants": ["*"], **fields}


def authenticator(*entries):
    return Authenticator([KeyEntry.model_validate(e) for e in entries])


def write_keys(path, entries, mode=0o600):
    path.write_text(json.dumps({"keys": entries}))  # JSON is YAML
    path.chmod(mode)
    return path


# ---- hashing ----


def test_hash_is_sha256_of_the_token_and_never_contains_it():
    digest = hash_token(ALICE_TOKEN)
    assert digest == "sha256:" + hashlib.sha256(ALICE_TOKEN.encode()).hexdigest()
    assert ALICE_TOKEN not in digest
    assert hash_token(BOB_TOKEN) != digest


@pytest.mark.parametrize("token", ["short-token", "x" * 31, "a" * 40 + " b", "ключ" * 10, "a" * 40 + "\n"])
def test_hash_refuses_weak_or_unsendable_tokens(token):
    with pytest.raises(ValueError):
        hash_token(token)


def test_new_tokens_are_distinct_long_and_enrollable():
    first, second = new_token(), new_token()
    assert first != second
    assert first.startswith("sf-") and len(first) >= 43
    KeyEntry(name="k", key_hash=hash_token(first), variants=["*"])


# ---- key entries ----


def test_a_plaintext_token_in_key_hash_is_refused_without_echoing_it():
    environ = {"SERVEFLEET_API_KEYS": json.dumps([{"name": "alice", "key_hash": ALICE_TOKEN, "variants": ["*"]}])}
    with pytest.raises(ConfigError) as info:
        load_key_entries(AuthConfig(enabled=True), environ=environ)
    assert "0.key_hash" in str(info.value) and "servefleet keys hash" in str(info.value)
    assert ALICE_TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "key_hash",
    ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 64, "a" * 64, "sha256:" + "g" * 64],
)
def test_key_hash_must_be_a_lowercase_sha256_digest(key_hash):
    with pytest.raises(ValidationError, match="key_hash"):
        KeyEntry(name="k", key_hash=key_hash, variants=["*"])


@pytest.mark.parametrize("variants", [["*", "tiny-v1"], ["tiny-v1", "tiny-v1"], [""]])
def test_variant_lists_must_be_unambiguous(variants):
    with pytest.raises(ValidationError, match="variants"):
        KeyEntry(name="k", key_hash=hash_token(ALICE_TOKEN), variants=variants)


def test_variants_have_no_default_and_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="variants"):
        KeyEntry(name="k", key_hash=hash_token(ALICE_TOKEN))
    with pytest.raises(ValidationError, match="token"):
        KeyEntry.model_validate({**entry("k", ALICE_TOKEN), "token": ALICE_TOKEN})


@pytest.mark.parametrize(("field", "value"), [("requests_per_s", 0), ("tokens_per_minute", -5)])
def test_rate_limits_must_be_positive(field, value):
    with pytest.raises(ValidationError, match=field):
        KeyEntry.model_validate({**entry("k", ALICE_TOKEN), field: value})


# ---- loading ----


def test_auth_is_off_by_default_and_then_loads_nothing():
    config = AuthConfig()
    assert config.enabled is False
    assert config.keys_env == "SERVEFLEET_API_KEYS"
    environ = {"SERVEFLEET_API_KEYS": json.dumps([entry("alice", ALICE_TOKEN)])}
    assert load_key_entries(config, environ=environ) == []


def test_keys_load_from_the_file_then_the_environment(tmp_path):
    path = write_keys(tmp_path / "keys.yaml", [entry("alice", ALICE_TOKEN, admin=True)])
    environ = {"MY_KEYS": json.dumps([entry("bob", BOB_TOKEN, variants=["tiny-v1"], tokens_per_minute=600)])}
    config = AuthConfig(enabled=True, keys_file=path, keys_env="MY_KEYS")
    entries = load_key_entries(config, environ=environ)
    assert [e.name for e in entries] == ["alice", "bob"]
    assert entries[0].admin and not entries[1].admin
    assert entries[1].variants == ["tiny-v1"] and entries[1].tokens_per_minute == 600


def test_keys_file_in_yaml_syntax(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: alice\n    key_hash: {hash_token(ALICE_TOKEN)}\n    variants: [tiny-v2]\n")
    path.chmod(0o600)
    entries = load_key_entries(AuthConfig(enabled=True, keys_file=path), environ={})
    assert entries[0].variants == ["tiny-v2"]


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_keys_file_others_can_write_is_refused(tmp_path, mode):
    path = write_keys(tmp_path / "keys.yaml", [entry("alice", ALICE_TOKEN)], mode=mode)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_key_entries(AuthConfig(enabled=True, keys_file=path), environ={})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("keys: [unclosed", "not valid YAML"),
        ("- just a list", "single `keys:` list"),
        ("keys: []\nextra: 1", "single `keys:` list"),
        ("keys:\n  - name: a\n    key_hash: nope\n    variants: ['*']", r"keys\.yaml:\n  0\.key_hash"),
    ],
)
def test_a_bad_keys_file_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        load_key_entries(AuthConfig(enabled=True, keys_file=path), environ={})


def test_a_missing_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_key_entries(AuthConfig(enabled=True, keys_file=tmp_path / "none.yaml"), environ={})


def test_bad_json_in_the_environment_is_reported_without_its_contents():
    secret = "sf-" + "s" * 40
    with pytest.raises(ConfigError) as info:
        load_key_entries(AuthConfig(enabled=True), environ={"SERVEFLEET_API_KEYS": f"[{{{secret}"})
    assert "$SERVEFLEET_API_KEYS is not valid JSON" in str(info.value)
    assert secret not in str(info.value)


def test_enabled_with_no_keys_fails_at_start_up_rather_than_refusing_everyone():
    with pytest.raises(ConfigError, match="no API keys"):
        load_key_entries(AuthConfig(enabled=True), environ={"SERVEFLEET_API_KEYS": "  "})


def test_repeated_names_across_sources_are_refused(tmp_path):
    path = write_keys(tmp_path / "keys.yaml", [entry("alice", ALICE_TOKEN)])
    environ = {"SERVEFLEET_API_KEYS": json.dumps([entry("alice", BOB_TOKEN)])}
    with pytest.raises(ConfigError, match="repeated key names: alice"):
        load_key_entries(AuthConfig(enabled=True, keys_file=path), environ=environ)


def test_the_same_token_enrolled_twice_is_refused_without_showing_the_digest():
    environ = {"SERVEFLEET_API_KEYS": json.dumps([entry("alice", ALICE_TOKEN), entry("bob", ALICE_TOKEN)])}
    with pytest.raises(ConfigError, match="repeated key digests") as info:
        load_key_entries(AuthConfig(enabled=True), environ=environ)
    assert hash_token(ALICE_TOKEN) not in str(info.value)


# ---- authenticating ----


def test_with_auth_off_everyone_is_the_anonymous_principal():
    auth = Authenticator.from_config(AuthConfig(), environ={})
    assert auth.authenticate(None) is ANONYMOUS
    assert auth.authenticate("Bearer whatever") is ANONYMOUS
    assert ANONYMOUS.may_use("any-variant")


def test_a_known_bearer_token_is_its_principal():
    auth = authenticator(entry("alice", ALICE_TOKEN, requests_per_s=5), entry("bob", BOB_TOKEN))
    alice = auth.authenticate(f"Bearer {ALICE_TOKEN}")
    assert alice.name == "alice" and alice.requests_per_s == 5
    # The scheme is case-insensitive and surrounding whitespace is not part of the token.
    assert auth.authenticate(f"  bearer   {BOB_TOKEN} ").name == "bob"
    assert [p.name for p in auth.principals] == ["alice", "bob"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("   ", "missing API key"),
        (f"Basic {ALICE_TOKEN}", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer ", "malformed"),
        (f"Bearer {ALICE_TOKEN} extra", "malformed"),
        (f"Bearer\t{ALICE_TOKEN}", "malformed"),
        (f"Bearer {ALICE_TOKEN}é", "malformed"),
        ("Bearer " + "a" * 5000, "malformed"),
        (f"Bearer {ALICE_TOKEN}x", "invalid API key"),
        (f"Bearer {hash_token(ALICE_TOKEN)}", "invalid API key"),  # the stored digest is not a credential
    ],
)
def test_missing_malformed_or_unknown_keys_are_401(header, message):
    auth = authenticator(entry("alice", ALICE_TOKEN))
    with pytest.raises(Unauthenticated, match=message) as info:
        auth.authenticate(header)
    error = info.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.response_headers() == {"www-authenticate": 'Bearer realm="servefleet"'}
    assert ALICE_TOKEN not in error.message


def test_variant_grants_are_enforced_with_403():
    auth = authenticator(entry("alice", ALICE_TOKEN, variants=["tiny-v1"]), entry("bob", BOB_TOKEN))
    alice = auth.authenticate(f"Bearer {ALICE_TOKEN}")
    auth.authorize_variant(alice, "tiny-v1")
    with pytest.raises(Forbidden) as info:
        auth.authorize_variant(alice, "tiny-v2")
    assert info.value.status_code == 403
    assert (info.value.code, info.value.param) == ("model_not_allowed", "model")
    auth.authorize_variant(auth.authenticate(f"Bearer {BOB_TOKEN}"), "tiny-v2")  # "*" grants all


def test_admin_routes_need_an_admin_key():
    auth = authenticator(entry("alice", ALICE_TOKEN, admin=True), entry("bob", BOB_TOKEN))
    auth.authorize_admin(auth.authenticate(f"Bearer {ALICE_TOKEN}"))
    with pytest.raises(Forbidden) as info:
        auth.authorize_admin(auth.authenticate(f"Bearer {BOB_TOKEN}"))
    assert info.value.code == "admin_required"


def test_admin_routes_answer_only_on_loopback_and_with_auth_on_only_to_admin_keys():
    auth = authenticator(entry("alice", ALICE_TOKEN, admin=True), entry("bob", BOB_TOKEN))
    alice, bob = auth.authenticate(f"Bearer {ALICE_TOKEN}"), auth.authenticate(f"Bearer {BOB_TOKEN}")
    assert admin_refusal(auth, alice, "127.0.0.1") is None
    assert admin_refusal(auth, bob, "127.0.0.1").code == "admin_required"
    for remote in ("10.0.0.7", None):  # an admin key from another machine, or an unknown peer, is refused
        refused = admin_refusal(auth, alice, remote)
        assert (refused.status_code, refused.code) == (403, "admin_loopback_only")
    off = Authenticator([], enabled=False)
    assert admin_refusal(off, off.authenticate(None), "::1") is None
    assert admin_refusal(off, off.authenticate(None), "192.168.1.9").code == "admin_loopback_only"


def test_auth_errors_pickle_across_a_ray_hop_and_render_openai_style():
    for error in (Unauthenticated("invalid API key"), Forbidden("no", param="model", code="model_not_allowed")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert copy.to_response() == error.to_response()
    body = Forbidden("no", param="model", code="model_not_allowed").to_response().model_dump()
    assert body == {
        "error": {"message": "no", "type": "permission_error", "param": "model", "code": "model_not_allowed"}
    }


# ---- network exposure ----


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.7", False),
        ("0.0.0.0", False),
        ("::", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_exposure_warning_only_for_auth_off_beyond_loopback():
    assert "0.0.0.0" in exposure_warning(AuthConfig(), "0.0.0.0")
    assert exposure_warning(AuthConfig(), "127.0.0.1") is None
    assert exposure_warning(AuthConfig(enabled=True), "0.0.0.0") is None
