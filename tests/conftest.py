"""Shared real parts for the tests: one local Ray instance, one S3-compatible server process on 127.0.0.1.

Each test gets its own home directory and its own bucket. Nothing here is mocked: Ray is started, the S3 server
is `moto_server` over real HTTP, the catalog is a DuckDB file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"
S3_KEY_ID = "AKIATESTCURATION0001"
S3_SECRET = "curation-test-secret-9f8e7d6c5b4a"  # distinctive, so tests can prove it never reaches a log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One Ray instance for the whole session (it takes seconds to start on 2 cores)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server process (moto_server) on loopback; stopped at the end of the session."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("moto_server did not start")
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_client(s3_endpoint):
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    )


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_spec(s3_endpoint) -> dict:
    """The `s3:` section of a spec that reaches the test server (credentials in the spec, as SecretStr)."""
    return {"endpoint_url": s3_endpoint, "region": "us-east-1", "access_key_id": S3_KEY_ID,
            "secret_access_key": S3_SECRET}  # fmt: skip


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def single_thread_torch():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two threads that
    spin while other processes hold the cores (the trainer tests use it; the default is restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
