from pathlib import Path

import pytest

from serve_app.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config


def minimal(**overrides):
    data = {
        "variants": [
            {"name": "a", "model": "builtin:tiny-v1", "weight": 70},
            {"name": "b", "model": "/models/b", "weight": 30},
        ]
    }
    data.update(overrides)
    return data


def test_default_config_is_valid_and_splits_two_builtin_variants():
    config = load_config(DEFAULT_CONFIG_PATH, environ={})
    assert [v.name for v in config.variants] == ["tiny-v1", "tiny-v2"]
    assert config.weights == {"tiny-v1": 50, "tiny-v2": 50}
    assert config.server.host == "127.0.0.1"
    assert all(v.is_builtin for v in config.variants)


def test_builtin_and_path_models_are_told_apart():
    config = parse_config(minimal(), environ={})
    assert config.variant("a").builtin_name == "tiny-v1"
    assert config.variant("b").builtin_name is None


def test_duplicate_variant_names_are_refused():
    data = minimal()
    data["variants"][1]["name"] = "a"
    with pytest.raises(ConfigError, match="unique; repeated: a"):
        parse_config(data, environ={})


def test_weights_must_sum_to_100():
    data = minimal()
    data["variants"][1]["weight"] = 20
    with pytest.raises(ConfigError, match="sum to 100, they sum to 90"):
        parse_config(data, environ={})


def test_unknown_field_is_named_with_its_path():
    data = minimal()
    data["variants"][0]["engine"] = {"max_num_seq": 8}
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="my.yaml", environ={})
    assert "my.yaml" in str(info.value)
    assert "variants.0.engine.max_num_seq" in str(info.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"server\.port"):
        parse_config(minimal(server={"port": "eighty"}), environ={})


def test_public_model_may_not_shadow_a_variant():
    with pytest.raises(ConfigError, match="clashes"):
        parse_config(minimal(routing={"public_model": "a"}), environ={})


def test_headers_are_lower_cased():
    config = parse_config(minimal(routing={"sticky_header": "X-User"}), environ={})
    assert config.routing.sticky_header == "x-user"


def test_precedence_yaml_then_environment_then_explicit():
    data = minimal(server={"port": 8100})
    assert parse_config(data, environ={}).server.port == 8100
    assert parse_config(data, environ={"SERVEFLEET_PORT": "8200"}).server.port == 8200
    explicit = parse_config(data, environ={"SERVEFLEET_PORT": "8200"}, overrides={"server": {"port": 8300}})
    assert explicit.server.port == 8300
    assert explicit.server.host == "127.0.0.1"


def test_config_is_frozen():
    config = parse_config(minimal(), environ={})
    with pytest.raises(ValueError):
        config.server.port = 1  # type: ignore[misc]


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_autoscaling_bounds():
    data = minimal()
    data["variants"][0]["autoscaling"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ConfigError, match="max_replicas must be >= min_replicas"):
        parse_config(data, environ={})


def test_cpu_affinity_is_optional_but_never_empty():
    assert parse_config(minimal(), environ={}).variant("a").engine.cpu_affinity is None
    data = minimal()
    data["variants"][0]["engine"] = {"cpu_affinity": []}
    with pytest.raises(ConfigError, match=r"variants\.0\.engine\.cpu_affinity"):
        parse_config(data, environ={})


def test_default_config_pins_engines_and_widens_the_window_with_load():
    config = load_config(DEFAULT_CONFIG_PATH, environ={})
    assert all(v.engine.cpu_affinity == [0] for v in config.variants)
    assert config.stream.coalesce_per_stream_ms > 0
    assert config.stream.coalesce_ms >= config.stream.coalesce_per_stream_ms


SHIPPED_CONFIGS = sorted((Path(__file__).parents[2] / "cluster" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path):
    config = load_config(path)
    assert config.variants


def test_the_canary_demo_has_a_failing_simulated_candidate():
    config = load_config(Path(__file__).parents[2] / "cluster" / "configs" / "canary-demo.yaml")
    assert config.rollout is not None
    candidate = next(v for v in config.variants if v.name == config.rollout.candidate)
    assert candidate.backend == "sim" and candidate.sim.error_rate > config.rollout.guards.max_error_rate


def test_haproxy_frontend_on_loopback_needs_no_auth():
    config = parse_config(minimal(server={"frontend": "haproxy"}), environ={})
    assert config.server.frontend == "haproxy"


def test_haproxy_frontend_on_the_network_needs_auth():
    # Behind HAProxy every client arrives from loopback, so admin routes could not refuse remote callers.
    with pytest.raises(ConfigError, match=r"needs auth\.enabled"):
        parse_config(minimal(server={"frontend": "haproxy", "host": "0.0.0.0"}), environ={})


def test_the_default_frontend_prefers_haproxy_and_accepts_a_ray_proxy_cluster():
    assert parse_config(minimal(), environ={}).frontends() == ("haproxy", "ray-proxy")
    assert load_config().frontends() == ("haproxy", "ray-proxy")


def test_the_default_frontend_keeps_rays_proxy_for_an_api_exposed_without_auth():
    config = parse_config(minimal(server={"host": "0.0.0.0"}), environ={})
    assert config.frontends() == ("ray-proxy",)
    authed = config.model_copy(update={"auth": config.auth.model_copy(update={"enabled": True})})
    assert authed.frontends() == ("haproxy", "ray-proxy")


@pytest.mark.parametrize("frontend", ["haproxy", "ray-proxy"])
def test_a_named_frontend_is_the_only_one(frontend: str):
    assert parse_config(minimal(server={"frontend": frontend}), environ={}).frontends() == (frontend,)


def test_an_unknown_frontend_is_named():
    with pytest.raises(ConfigError, match=r"server\.frontend"):
        parse_config(minimal(server={"frontend": "nginx"}), environ={})
