"""The real-fleet manifests in cluster/: they parse, Ray's own validators accept them, and the app they deploy
is this project's app with a config its pydantic schema accepts. No cluster is started."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from serve_app.config import ServeFleetConfig, load_config, parse_config
from serve_app.paths import PROJECT_ROOT

CLUSTER = PROJECT_ROOT / "cluster"
GPU_CONFIG = CLUSTER / "configs" / "gpu.yaml"
AWS_CLUSTER = CLUSTER / "aws" / "cluster.yaml"
AWS_SERVE = CLUSTER / "aws" / "serve.yaml"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
DOCKERFILE = CLUSTER / "kuberay" / "Dockerfile"
# Home of the `ray` user in Ray's images, where `~` in file_mounts lands inside the container.
CONTAINER_HOME = PurePosixPath("/home/ray")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def pinned_ray(pyproject: dict[str, Any]) -> str:
    """The Ray minor version the project pins, e.g. ``2.60``."""
    spec = next(dep for dep in pyproject["project"]["dependencies"] if dep.startswith("ray["))
    match = re.search(r"==\s*(\d+\.\d+)", spec)
    assert match, spec
    return match.group(1)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return load_yaml(RAYSERVICE)


@pytest.fixture(scope="module")
def rayservice_serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    raw = rayservice["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "KubeRay takes serveConfigV2 as a YAML string"
    return yaml.safe_load(raw)


def only_app(serve_config: dict[str, Any]) -> dict[str, Any]:
    (app,) = serve_config["applications"]
    return app


def assert_gpu_fleet_config(config: ServeFleetConfig) -> None:
    for variant in config.variants:
        assert not variant.is_builtin, f"{variant.name}: a real fleet serves a real checkpoint"
        assert variant.num_gpus >= 1, variant.name
        assert variant.engine.gpu_memory_utilization is not None, variant.name
        assert variant.engine.max_model_len is not None, variant.name
        assert variant.engine.cpu_affinity is None, f"{variant.name}: cpu_affinity is for the CPU build"
        assert variant.engine.dtype in {"bfloat16", "float16", "auto"}, variant.name
        assert not [key for key in variant.env if key.startswith("VLLM_CPU_")], variant.name
        assert variant.max_ongoing_requests <= variant.engine.max_num_seqs, variant.name


# ---------------------------------------------------------------------------------------------- the app config


def test_gpu_config_validates_with_the_apps_own_schema() -> None:
    config = load_config(GPU_CONFIG, environ={})
    assert_gpu_fleet_config(config)
    assert config.server.host == "0.0.0.0"


# ---------------------------------------------------------------------------------------------- KubeRay


def test_rayservice_has_the_expected_structure(rayservice: dict[str, Any], pinned_ray: str) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"].startswith(f"{pinned_ray}.")
    assert cluster["enableInTreeAutoscaling"] is True

    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {port["containerPort"] for port in head["ports"]} >= {6379, 8265, 8000}
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"]
    assert worker["resources"]["limits"] == worker["resources"]["requests"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    mounts = {mount["mountPath"] for mount in worker["volumeMounts"]}
    assert "/dev/shm" in mounts


def test_rayservice_serve_config_is_valid_for_ray_serve(rayservice_serve_config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(rayservice_serve_config)
    assert [app.name for app in schema.applications] == ["servefleet"]
    assert schema.applications[0].route_prefix == "/"


def test_rayservice_embeds_a_valid_gpu_config_equal_to_the_shared_one(
    rayservice_serve_config: dict[str, Any],
) -> None:
    args = only_app(rayservice_serve_config)["args"]
    config = parse_config(args, source="rayservice.yaml", environ={})
    assert_gpu_fleet_config(config)
    assert args == load_yaml(GPU_CONFIG), "rayservice.yaml's args drifted from cluster/configs/gpu.yaml"
    http = rayservice_serve_config["http_options"]
    assert (http["port"], http["request_timeout_s"]) == (config.server.port, config.server.request_timeout_s)


def test_rayservice_workers_fit_one_engine_replica_each(
    rayservice: dict[str, Any], rayservice_serve_config: dict[str, Any]
) -> None:
    config = parse_config(only_app(rayservice_serve_config)["args"], environ={})
    (workers,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    for variant in config.variants:
        assert variant.num_gpus <= int(limits["nvidia.com/gpu"])
        assert variant.num_cpus <= float(limits["cpu"])
    # Enough workers for every variant at its floor and at its ceiling.
    floor = sum(v.autoscaling.min_replicas if v.autoscaling else v.replicas for v in config.variants)
    ceiling = sum(v.autoscaling.max_replicas if v.autoscaling else v.replicas for v in config.variants)
    assert workers["minReplicas"] >= floor
    assert workers["maxReplicas"] >= ceiling


def test_rayservice_import_path_builds_the_app_as_serve_would(rayservice_serve_config: dict[str, Any]) -> None:
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    app = only_app(rayservice_serve_config)
    builder = import_attr(app["import_path"])
    assert callable(builder)
    # Exactly what Serve's controller does with a config file's import_path and args (no cluster needed).
    built = call_user_app_builder_with_args_if_necessary(builder, copy.deepcopy(app["args"]))
    assert isinstance(built, Application)
    assert_engines_on_gpus(built, parse_config(app["args"], environ={}))


def assert_engines_on_gpus(app: Any, config: ServeFleetConfig) -> None:
    # Ray's own graph walk (private, pinned with Ray itself): the deployments Serve would create.
    from ray.serve._private.build_app import build_app

    deployments = {d.name: d for d in build_app(app, name=config.app_name).deployments}
    for variant in config.variants:
        options = deployments[f"engine-{variant.name}"].ray_actor_options
        assert options["num_gpus"] == variant.num_gpus


def test_dockerfile_builds_on_the_pinned_ray_image_with_the_gpu_extra(
    rayservice: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    text = DOCKERFILE.read_text()
    version = rayservice["spec"]["rayClusterConfig"]["rayVersion"]
    assert f"FROM rayproject/ray:{version}-py311-gpu" in text
    assert 'pip install --no-cache-dir ".[gpu]"' in text
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    for source in ("serve_app", "deployments", "pyproject.toml", "README.md"):
        assert source in text
        assert (PROJECT_ROOT / source).exists()


# ---------------------------------------------------------------------------------------------- AWS launcher


def test_aws_cluster_passes_the_launchers_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load_yaml(AWS_CLUSTER)))


def test_aws_cluster_has_a_gpu_worker_type_and_installs_the_gpu_extra(
    pyproject: dict[str, Any], pinned_ray: str
) -> None:
    cluster = load_yaml(AWS_CLUSTER)
    assert cluster["provider"]["type"] == "aws"
    node_types = cluster["available_node_types"]
    assert cluster["head_node_type"] in node_types
    gpu_types = {name: spec for name, spec in node_types.items() if spec.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker type offers a GPU"
    assert cluster["head_node_type"] not in gpu_types
    for spec in gpu_types.values():
        assert 0 < spec["max_workers"] <= cluster["max_workers"]
    image = cluster["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pinned_ray)}\.\d+-py311-gpu", image), image
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    assert any(re.search(r"pip install .*servefleet\[gpu\]", command) for command in cluster["setup_commands"])


def test_aws_serve_config_points_at_the_shared_gpu_config_through_file_mounts() -> None:
    from ray.serve.schema import ServeDeploySchema

    cluster = load_yaml(AWS_CLUSTER)
    serve_config = load_yaml(AWS_SERVE)
    ServeDeploySchema.model_validate(serve_config)
    app = only_app(serve_config)
    assert app["import_path"] == only_app(yaml.safe_load(load_yaml(RAYSERVICE)["spec"]["serveConfigV2"]))["import_path"]

    # The checkout is mounted at ~/servefleet; inside Ray's container `~` is the ray user's home.
    (remote,) = [remote for remote, local in cluster["file_mounts"].items() if local in {".", "./"}]
    mount = CONTAINER_HOME / PurePosixPath(remote).relative_to("~")
    in_repo = PurePosixPath(app["args"]["config_path"]).relative_to(mount)
    assert PROJECT_ROOT / in_repo == GPU_CONFIG

    config = load_config(GPU_CONFIG, environ={})
    http = serve_config["http_options"]
    assert (http["port"], http["request_timeout_s"]) == (config.server.port, config.server.request_timeout_s)

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_app.builder import app_builder

    built = call_user_app_builder_with_args_if_necessary(app_builder, {"config_path": str(GPU_CONFIG)})
    assert_engines_on_gpus(built, config)
