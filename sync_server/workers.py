"""Running uvicorn's server, with a worker supervisor that stops accepting at once on SIGTERM.

uvicorn's own supervisor (``--workers`` > 1) binds the listening socket in the parent and hands it to
the workers. On SIGTERM each worker stops accepting, but the parent's copy of the socket stays open
until the workers have drained: the kernel keeps completing handshakes into a backlog nobody accepts
from, so new clients hang and are reset at exit instead of being refused and trying another server.
The parent also looks at its signals only twice a second. :class:`DrainingMultiprocess` closes the
parent's socket and signals the workers as soon as SIGTERM or SIGINT arrives.
"""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess

__all__ = ["DrainingMultiprocess", "run"]

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(config: Config) -> None:
    """What ``uvicorn.run`` does with an import string (no reload), with :class:`DrainingMultiprocess`."""
    if config.workers > 1:
        DrainingMultiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server = Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class DrainingMultiprocess(Multiprocess):
    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        for signum in EXIT_SIGNALS:
            signal.signal(signum, self._exit_now)

    def _exit_now(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, while it waits on should_exit: setting the
        # event wakes it at once, and it then terminates the workers.
        getattr(self, f"handle_{SIGNALS[signum].lower()}")()

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()  # the workers close their copies as they receive SIGTERM, right after
        super().terminate_all()
