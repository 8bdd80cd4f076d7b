"""A private three-node RabbitMQ cluster on this machine, for the cluster tests.

Nothing here touches the shared node on 5672: the nodes have names, ports, data and log
folders, an Erlang cookie (in a HOME of their own) and configuration files of their own. The
scripts in /usr/lib/rabbitmq/bin are used directly, because the /usr/sbin wrappers switch to
the rabbitmq user and its cookie; every rabbitmqctl call names its node with `-n`, because
without it the CLI talks to the shared node.
"""

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
HOST = "localhost"
NODES = 3
START_SECONDS = 120.0
CTL_SECONDS = 60.0
# Every variable the start scripts would otherwise read from /etc/rabbitmq, which names the
# shared node and binds 5672.
CONFIG = "loopback_users = none\nlog.console = false\n"


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a private RabbitMQ cluster; the message says why."""


def cluster_available() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


@dataclass
class Node:
    """One node: its Erlang name, AMQP port and the files it owns."""

    name: str
    port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def environment(self, home: Path, config: Path, plugins: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        env.update(
            HOME=str(home),
            RABBITMQ_CONF_ENV_FILE=str(home / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(config),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env


class RabbitCluster:
    """Start, cluster, inspect and stop the nodes; `stop_node` is the fault the tests inject."""

    def __init__(self, root: Path, size: int = NODES) -> None:
        self.root = root
        self.home = root / "home"
        self.config = root / "rabbitmq.conf"
        self.plugins = root / "enabled_plugins"
        tag = secrets.token_hex(3)
        self.nodes = [
            Node(
                f"chat-cluster-{tag}-{index}@{HOST}",
                free_port(),
                free_port(),
                root / f"node-{index}",
            )
            for index in range(size)
        ]

    def start(self) -> None:
        """Boot every node at once, then join the others to the first (about 20-30 s here)."""
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.home / "rabbitmq-env.conf").write_text("")
        self.config.write_text(CONFIG)
        self.plugins.write_text("[].\n")
        for node in self.nodes:
            self._boot(node)
        for node in self.nodes:
            self._wait(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self.ctl(first, "await_online_nodes", str(len(self.nodes)))

    def start_stopped(self) -> None:
        """Boot again the nodes stopped earlier; each rejoins the cluster its data names."""
        stopped = [node for node in self.nodes if node not in self.running()]
        for node in stopped:
            self._boot(node)
        for node in stopped:
            self._wait(node)
        if stopped:
            self.ctl(stopped[0], "await_online_nodes", str(len(self.nodes)))

    def _boot(self, node: Node) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        log = (node.base / "console.log").open("ab")
        node.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=node.environment(self.home, self.config, self.plugins),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.base,
            start_new_session=True,
        )
        log.close()

    def _wait(self, node: Node) -> None:
        """`rabbitmqctl wait PIDFILE` returns once the node has booted (or failed to)."""
        self.ctl(node, "wait", str(node.pid_file), "--timeout", str(int(START_SECONDS)))

    def ctl(self, node: Node, *args: str, timeout: float = CTL_SECONDS) -> str:
        completed = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
            env=node.environment(self.home, self.config, self.plugins),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        if completed.returncode != 0:
            raise ClusterUnavailable(
                f"rabbitmqctl -n {node.name} {' '.join(args)} failed "
                f"({completed.returncode}): {completed.stderr or completed.stdout}\n"
                f"{self.log_tail(node)}"
            )
        return completed.stdout

    def log_tail(self, node: Node, lines: int = 20) -> str:
        path = node.base / "console.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.process and node.process.poll() is None]

    def queue_leader(self, queue: str, vhost: str = "/") -> Node:
        """The node that leads a quorum queue now, as the cluster reports it."""
        survivor = self.running()[0]
        rows = self.ctl(
            survivor, "list_queues", "-p", vhost, "name", "leader", "--no-table-headers"
        )
        for line in rows.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return next(node for node in self.nodes if node.name == leader.strip())
        raise LookupError(f"no queue {queue} in vhost {vhost}")

    def queue_info(self, queue: str, *columns: str, vhost: str = "/") -> dict[str, str]:
        """Columns of `rabbitmqctl list_queues` for one queue, asked of a running node."""
        survivor = self.running()[0]
        rows = self.ctl(
            survivor, "list_queues", "-p", vhost, "name", *columns, "--no-table-headers"
        )
        for line in rows.splitlines():
            name, *values = line.split("\t")
            if name == queue:
                return dict(zip(columns, values, strict=True))
        raise LookupError(f"no queue {queue} in vhost {vhost}")

    def stop_node(self, node: Node) -> None:
        """A clean shutdown of one node; returns once its process has exited."""
        self.ctl(node, "stop", str(node.pid_file))
        if node.process is not None:
            node.process.wait(timeout=CTL_SECONDS)

    def stop(self) -> None:
        for node in self.running():
            with contextlib.suppress(ClusterUnavailable, subprocess.TimeoutExpired):
                self.stop_node(node)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.killpg(node.process.pid, 9)
                node.process.wait()


@contextlib.contextmanager
def rabbit_cluster(root: Path, size: int = NODES) -> Iterator[RabbitCluster]:
    """A running cluster for the duration of the block; stopped and its nodes gone after."""
    if not cluster_available():
        raise ClusterUnavailable(f"needs RabbitMQ's scripts in {RABBITMQ_BIN} and epmd")
    cluster = RabbitCluster(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
