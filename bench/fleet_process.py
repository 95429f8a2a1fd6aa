"""Runs the Node subscriber fleet (``fleet/fleet.js``) and reads its ``KIND {json}`` lines.

The fleet lives in its own process so the server under test and its clients do not share an
interpreter; Node's ``ws`` keeps up with far more deliveries per core than a Python client would.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs

FLEET_DIR = Path(__file__).resolve().parent / "fleet"


class BenchError(RuntimeError):
    """A scenario could not run or its result breaks an invariant (missed or duplicated deliveries)."""


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def npm_install(folder: Path) -> None:
    """``npm ci`` from the lockfile when ``node_modules`` is missing or older than the lockfile."""
    modules = folder / "node_modules"
    lock = folder / "package-lock.json"
    if modules.is_dir() and modules.stat().st_mtime >= lock.stat().st_mtime:
        return
    if not node_available():
        raise BenchError("node and npm are required for the websocket fleet (apt-get install nodejs npm)")
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
        cwd=folder,
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    modules.touch()


def basic_auth() -> str:
    raw = f"{procs.ACCOUNT_SID}:{procs.AUTH_TOKEN}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws?service=default"


class Fleet:
    """One ``node fleet.js`` run. ``config`` becomes the FLEET variable (see fleet.js for the keys)."""

    def __init__(self, config: dict[str, Any], log_dir: Path) -> None:
        self.config = {"clockTicks": procs.CLOCK_TICKS, "auth": basic_auth(), **config}
        self.log_path = log_dir / f"fleet-{config['mode']}-{int(time.time() * 1000)}.log"
        self.lines: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Fleet:
        npm_install(FLEET_DIR)
        env = {**os.environ, "FLEET": json.dumps(self.config)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["node", str(FLEET_DIR / "fleet.js")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log_path.open("a"),
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            kind, _, payload = line.strip().partition(" ")
            try:
                self.lines.put((kind, json.loads(payload)))
            except ValueError:
                self.lines.put(("LOG", line))
        self.lines.put(("EXIT", None))

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next ``kind`` line's value; other kinds are skipped (PHASE lines are kept in ``phases``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise BenchError(f"fleet ({self.config['mode']}): no {kind} within {timeout:g}s")
            try:
                got, value = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if got == kind:
                if isinstance(value, dict) and value.get("error"):
                    raise BenchError(f"fleet ({self.config['mode']}): {value['error']}")
                return dict(value)
            if got == "RESULT" and isinstance(value, dict) and value.get("error"):
                raise BenchError(f"fleet ({self.config['mode']}): {value['error']}\n{self.log_tail()}")
            if got == "EXIT":
                raise BenchError(f"fleet ({self.config['mode']}) exited before {kind}:\n{self.log_tail()}")

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""
