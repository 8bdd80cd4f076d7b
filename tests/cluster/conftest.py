"""Cluster-suite fixtures: a private three-node RabbitMQ cluster and a stack spread over it.

The processes connect to different nodes (each gets RABBITMQ_URL with the nodes in its own
order), exactly as a deployment over a cluster does; the shared broker on 5672 is not used.
"""

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.processes import Process
from devstack.stack import Stack, start_mock_model, start_secantus
from tests.infra import Broker, service_env
from tests.rabbit_cluster import Node, RabbitCluster, rabbit_cluster

LOG_TAIL_LINES = 25
MOCK_TOKENS = 60
MOCK_DELAY_MS = 30

_log_dirs: list[Path] = []


def node_list(nodes: list[Node], first: int) -> str:
    """RABBITMQ_URL for a process that should connect to `nodes[first]` and fail over onwards."""
    order = nodes[first:] + nodes[:first]
    return ",".join(node.url for node in order)


@dataclass
class ClusterStack:
    cluster: RabbitCluster
    stack: Stack
    mock_url: str
    api_urls: list[str]
    api_nodes: list[Node]
    responders: list[Process]
    responder_nodes: list[Node]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    root = tmp_path_factory.mktemp("rabbit-cluster")
    _log_dirs.append(root)
    with rabbit_cluster(root) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_stack(
    cluster: RabbitCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStack]:
    """Responder 0 on node 0 (it declares chat-message, so node 0 leads it), responder 1 on
    node 1; API 0 on node 2, API 1 on node 0: each node serves someone, and the APIs publish
    jobs through other nodes than the ones the responders consume from.
    """
    base = tmp_path_factory.mktemp("cluster-stack")
    _log_dirs.append(base)
    log_dir = base / "logs"
    stack = Stack(env={}, log_dir=log_dir)
    try:
        mongo, mongodb_url = start_secantus(log_dir, str(base / "mongo"))
        stack.processes.append(mongo)
        mock, model_url = start_mock_model(log_dir, tokens=MOCK_TOKENS, delay_ms=MOCK_DELAY_MS)
        stack.processes.append(mock)
        nodes = cluster.nodes
        env = service_env(mongodb_url, Broker(nodes[0].url, None), model_url)
        env.pop("RABBITMQ_URL")  # each process gets its own order of the nodes
        stack.env.update(env)
        responder_nodes = [nodes[0], nodes[1]]
        responders = [
            stack.start_responder(
                name=f"cluster-responder-{index}", RABBITMQ_URL=node_list(nodes, nodes.index(node))
            )
            for index, node in enumerate(responder_nodes)
        ]
        api_nodes = [nodes[2], nodes[0]]
        api_urls = [
            stack.start_api(
                name=f"cluster-api-{index}", RABBITMQ_URL=node_list(nodes, nodes.index(node))
            )[1]
            for index, node in enumerate(api_nodes)
        ]
        yield ClusterStack(
            cluster,
            stack,
            model_url.removesuffix("/v1"),
            api_urls,
            api_nodes,
            responders,
            responder_nodes,
        )
    finally:
        stack.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, the tail of every service and node log."""
    report = yield
    if report.failed and "cluster" in item.keywords:
        for directory in _log_dirs:
            for path in sorted(directory.rglob("*.log")):
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"log {path.name}", "\n".join(lines)))
    return report
