"""Session fixtures for the docker lab and the stand-in API server.

The lab comes up once per pytest session and is torn down at its end (dockerd too, if the session started it).
Without root or docker the lab tests skip and say why; under CI (`CI=true`) they fail instead, because a lab suite
that silently skips proves nothing.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/lab/test_watch_lab.py imports it from here)
if str(ROOT) not in sys.path:  # run from any directory without installing svcdoctor
    sys.path.insert(0, str(ROOT))

from . import harness  # noqa: E402
from . import scenario as sc  # noqa: E402
from .standin_apiserver import StandinApiServer  # noqa: E402

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
LAB_FIXTURES = {"lab", "docker_daemon", "docker_client"}
LAB_LOCK = "/tmp/svcdoctor-lab.lock"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def _cannot_run(reason: str):
    if IN_CI:
        pytest.fail(f"the docker lab cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"docker lab: {reason}")


@pytest.fixture(scope="session")
def docker_daemon():
    """The docker daemon, started for this session when none answers (and then stopped at its end)."""
    reason = harness.unavailable_reason()
    if reason:
        _cannot_run(reason)
    # one lab per machine: a second pytest session would tear the first one's cluster down (Lab.up starts with
    # down()), so sessions wait for each other here
    lock = open(LAB_LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    daemon = harness.DockerDaemon()
    try:
        try:
            daemon.ensure()
        except harness.LabUnavailable as exc:
            _cannot_run(str(exc))
        yield daemon
        daemon.stop()
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture(scope="session")
def docker_client(docker_daemon):
    client = docker_daemon.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def lab(docker_client):
    """The seed scenario's cluster `myk8s`, healthy. Tests that plant a fault heal it before they return."""
    lab = harness.Lab(docker_client)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def standin():
    """The stand-in API server with the seed scenario's objects; at most 2 items per page, so every list pages."""
    with StandinApiServer(sc.seed_scenario().api_objects(), max_page_size=2) as server:
        yield server


@pytest.fixture(scope="session")
def kubeconfig(standin, tmp_path_factory) -> str:
    return str(standin.write_kubeconfig(tmp_path_factory.mktemp("standin") / "kubeconfig"))


@pytest.fixture
def planted(lab):
    """plant(node, fault) for the test; every planted node is healed afterwards."""
    touched = []

    def plant(node: str, fault: str):
        touched.append(node)
        lab.plant(node, fault)

    yield plant
    for node in touched:
        lab.heal(node)
