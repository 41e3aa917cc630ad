"""A real `curate serve` process on 127.0.0.1 for the service tests, with tokens of every role and state."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from curation.service.tokens import TokenStore
from tests.conftest import REPO, free_port

SPECS = Path(__file__).parent / "specs"


class Service:
    """A running server: HTTP helpers that send the token of a role, and the process to stop or kill."""

    def __init__(self, home: Path, port: int, process: subprocess.Popen, log: Path, tokens: dict[str, str]):
        self.home, self.port, self.process, self.log, self.tokens = home, port, process, log, tokens
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, *, role: str | None = "admin", **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return requests.request(method, self.base + path, headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def submit(self, spec_text: str, **kwargs) -> dict:
        response = self.post("/api/jobs", json={"spec": spec_text, **kwargs})
        assert response.status_code == 201, response.text
        return response.json()

    def wait_job(self, job_id: str, until=("finished", "failed", "cancelled"), timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s; server log:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=30)


def make_tokens(home: Path) -> dict[str, str]:
    """One active token per role, plus an expired and a revoked admin token."""
    store = TokenStore(home)
    tokens = {role: store.create(f"test-{role}", role)[0] for role in ("viewer", "curator", "admin")}
    tokens["expired"], expired = store.create("test-expired", "admin", expires_in=timedelta(seconds=1))
    tokens["revoked"], revoked = store.create("test-revoked", "admin")
    store.revoke(revoked.token_id)
    time.sleep(1.1)  # let the expired token expire
    return tokens


def start_service(home: Path, *extra: str, tokens: dict[str, str] | None = None) -> Service:
    home.mkdir(parents=True, exist_ok=True)
    tokens = tokens or make_tokens(home)
    port = free_port()
    log = home.parent / f"serve-{port}.log"
    command = [sys.executable, "-m", "curation.cli", "--home", str(home), "serve", "--port", str(port),
               "--data-root", str(REPO / "tests"), "--specs-dir", str(SPECS), *extra]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    service = Service(home, port, process, log, tokens)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"curate serve exited with {process.returncode}:\n{service.output()}")
        try:
            if requests.get(service.base + "/api/health", timeout=1).ok:
                return service
        except requests.ConnectionError:
            time.sleep(0.3)
    service.stop(kill=True)
    pytest.fail(f"curate serve did not answer within 90 s:\n{service.output()}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("service") / "home")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def fashion_spec() -> str:
    return (SPECS / "fashion.yaml").read_text()
