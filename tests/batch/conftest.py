"""Fixtures of the batch tests: a simulated multi-node Ray cluster."""

import os

import pytest

from batch_support import HEAD, SYSTEM_CONFIG, WORKER


@pytest.fixture(scope="module")
def sim_cluster():
    """A 3-node Ray test cluster (ray.cluster_utils.Cluster): a CPU head and two 4-GPU (fake) workers."""
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**HEAD, "_system_config": SYSTEM_CONFIG,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(**WORKER) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        cluster.shutdown()
