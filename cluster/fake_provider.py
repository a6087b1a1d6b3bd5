"""Ray's fake multi-node node provider, with its nodes on a loopback address of our choosing.

Ray's autoscaler (the monitor process on the head) imports this module by name (``provider.type: external``) when
``servefleet cluster up --autoscale`` starts the head. It is Ray's ``FakeMultiNodeProvider`` unchanged except
for how a node starts: Ray's version binds each new raylet to ``get_node_ip_address()``, the machine's external
address here, where the head's GCS on 127.0.0.2 cannot be reached (FACTS.md); this one passes the configured
``node_ip_address``, names the node and caps its object store. Node ids, tags, resource reports and termination
are Ray's own, so scale-up and idle scale-down decisions are entirely the autoscaler's.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import ray
import ray._private.ray_constants as ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)


class LoopbackFakeProvider(FakeMultiNodeProvider):
    """Fake nodes as real raylets on ``provider.node_ip_address``, joining ``provider.gcs_address``."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        if not self._gcs_address:
            raise ValueError("provider.gcs_address is required")
        self._node_ip = provider_config["node_ip_address"]
        self._object_store_memory = provider_config.get("object_store_memory")

    def _create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int, resources: dict[str, Any], labels: Any
    ) -> None:
        resources = copy.deepcopy(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            params = ray._private.parameter.RayParams(
                node_ip_address=self._node_ip,
                node_name=f"auto-{int(node_id[-5:])}",
                min_worker_port=0,
                max_worker_port=0,
                dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", self._object_store_memory),
                resources=resources,
                labels=labels,
                redis_address=self._gcs_address,
                gcs_address=self._gcs_address,
                env_vars={
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                    "RAY_CLOUD_INSTANCE_ID": node_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[node_id] = {
                "tags": {
                    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                    TAG_RAY_USER_NODE_TYPE: node_type,
                    TAG_RAY_NODE_NAME: node_id,
                    TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                    **tags,
                },
                "node": node,
            }
