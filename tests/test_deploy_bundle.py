"""The deployable bundle: compose.yaml, the Dockerfile and constraints.txt, checked without a Docker
engine: compose.yaml names only settings the server reads, the Dockerfile copies files that exist,
installs with the constraints, runs as a non-root user and has a health check, and constraints.txt
pins every runtime dependency at a version its requirement allows."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

from sync_server.config import Limits
from tests.support.processes import REPO_ROOT

SETTING_READ = re.compile(r"""env(?:iron)?(?:\.get\(|\[)\s*"(SYNC_[A-Z0-9_]+)"|_ENV = "(SYNC_[A-Z0-9_]+)\"""")
HEALTHZ = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"


def known_settings() -> set[str]:
    """Every ``SYNC_*`` variable the server reads, found where it reads them (``env.get("SYNC_…")``,
    ``env["SYNC_…"]``, ``os.environ…`` and ``…_ENV = "SYNC_…"`` constants)."""
    names: set[str] = set()
    for path in (REPO_ROOT / "sync_server").rglob("*.py"):
        for match in SETTING_READ.finditer(path.read_text()):
            names.add(match[1] or match[2])
    return names


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (REPO_ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_settings_registry_finds_what_the_server_reads() -> None:
    known = known_settings()
    expected = {"SYNC_HOST", "SYNC_PORT", "SYNC_REDIS_URL", "SYNC_REDIS_SERVER", "SYNC_PUBLIC_URL"}
    expected |= {"SYNC_ALLOWED_HOSTS", "SYNC_WORKERS", "SYNC_DRAIN_TIMEOUT", "SYNC_ACCOUNT_SID"}
    expected |= {"SYNC_AUTH_TOKEN", "SYNC_API_KEY_SID", "SYNC_API_KEY_SECRET", "SYNC_MAX_BODY_BYTES"}
    assert expected <= known, expected - known
    assert all(f"SYNC_{field.upper()}" in known for field in Limits.__dataclass_fields__)


def test_compose_names_only_known_settings_and_real_services() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "sync-server"}
    server, redis = services["sync-server"], services["redis"]
    environment: dict[str, str] = server["environment"]
    unknown = {name for name in environment if name not in known_settings()}
    assert unknown == set(), f"compose.yaml sets settings the server never reads: {sorted(unknown)}"
    # ${NAME:-default} interpolations too: a variable the operator sets must mean something.
    interpolated = set(re.findall(r"\$\{(\w+)", (REPO_ROOT / "compose.yaml").read_text()))
    assert interpolated <= known_settings(), interpolated - known_settings()
    assert {"SYNC_PUBLIC_URL", "SYNC_ALLOWED_HOSTS", "SYNC_ACCOUNT_SID", "SYNC_AUTH_TOKEN"} <= set(
        environment
    )
    assert {"SYNC_API_KEY_SID", "SYNC_API_KEY_SECRET"} <= set(environment)
    assert environment["SYNC_REDIS_URL"] == "redis://redis:6379/0"
    assert server["build"] == "." and (REPO_ROOT / "Dockerfile").is_file()
    assert server["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert server["volumes"] == ["sync-data:/data"]
    assert redis["image"] == "redis:7"
    assert redis["command"] == ["redis-server", "--appendonly", "yes"]
    assert redis["volumes"] == ["redis-data:/data"]
    assert set(compose()["volumes"]) == {"redis-data", "sync-data"}


def test_compose_healthchecks_use_commands_in_their_images() -> None:
    services = compose()["services"]
    # redis-cli ships in the redis image; the server image is python:*-slim, without curl.
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    test = services["sync-server"]["healthcheck"]["test"]
    assert test == ["CMD", "python", "-c", HEALTHZ]
    compile(test[3], "healthcheck", "exec")
    base = next(arguments for instruction, arguments in dockerfile() if instruction == "FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base


def test_compose_stop_grace_outlasts_the_drain_timeout() -> None:
    server = compose()["services"]["sync-server"]
    grace = int(server["stop_grace_period"].removesuffix("s"))
    drain = int(
        server["environment"]["SYNC_DRAIN_TIMEOUT"].removeprefix("${SYNC_DRAIN_TIMEOUT:-").rstrip("}")
    )
    assert drain == Limits.drain_timeout
    assert grace > drain + 5


def test_dockerfile_copies_what_exists_pins_and_runs_as_non_root() -> None:
    instructions = dockerfile()
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, _ = shlex.split(arguments)
            assert all((REPO_ROOT / source).exists() for source in sources), arguments
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    assert any("pip install --no-cache-dir -c /tmp/src/constraints.txt /tmp/src" in run for run in runs)
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users == ["sync"]
    assert any("useradd --system" in run and " sync" in run for run in runs)
    assert ("EXPOSE", "8080") in instructions
    healthcheck = next(arguments for instruction, arguments in instructions if instruction == "HEALTHCHECK")
    assert HEALTHZ in healthcheck
    cmd = next(arguments for instruction, arguments in instructions if instruction == "CMD")
    assert cmd == '["sync-server", "--host", "0.0.0.0", "--port", "8080"]'
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert not {"constraints.txt", "sync_server", "protocol", "pyproject.toml"} & set(ignored)


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dependency in map(Requirement, project["dependencies"]):
        version = pins.get(canonical(dependency.name))
        assert version is not None, f"constraints.txt misses {dependency.name}: run scripts/lock"
        assert dependency.specifier.contains(version), f"{dependency.name}=={version} vs {dependency}"
    assert Path(REPO_ROOT / "scripts" / "lock").stat().st_mode & 0o111


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
