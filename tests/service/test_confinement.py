"""Submitted specs against a real `curate serve` whose data_root holds a specs folder, with files just outside it:
every path a spec names is checked as the run will use it."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.corpus import image_bytes, tar_bytes
from tests.service.conftest import start_service


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """ROOT/data (the data_root, with specs/ inside) and ROOT/outside (what no submitted spec may read)."""
    root = tmp_path_factory.mktemp("confined")
    data, outside = root / "data", root / "outside"
    for folder in (data / "specs", data / "imgs", data / "eval", outside / "imgs"):
        folder.mkdir(parents=True)
    for number in range(3):
        (data / "imgs" / f"{number}.png").write_bytes(image_bytes(number, fmt="PNG"))
        (data / "eval" / f"{number}.png").write_bytes(image_bytes(10 + number, fmt="PNG"))
        (outside / "imgs" / f"{number}.png").write_bytes(image_bytes(20 + number, fmt="PNG"))
    (outside / "secret.tar").write_bytes(tar_bytes([("a.png", image_bytes(30, fmt="PNG"))]))
    (data / "link.tar").symlink_to(outside / "secret.tar")
    return root


@pytest.fixture(scope="module")
def confined(layout):
    data = layout / "data"
    running = start_service(layout / "home", "--data-root", str(data), "--specs-dir", str(data / "specs"))
    yield running
    running.stop()


def check(service, spec: dict):
    return service.post("/api/specs/check", role="curator", json={"spec": yaml.safe_dump(spec)})


def spec_with(source: dict, **stages) -> dict:
    return {"name": "probe", "sources": [source], **({"stages": stages} if stages else {})}


def test_webdataset_braces_and_symlinks_cannot_leave_the_data_root(confined, layout):
    data = layout / "data"
    hidden = f"{data}/imgs/{{..,..}}/{{..,..}}/outside/secret.ta?"  # expands to ROOT/outside/secret.ta?
    for url in (hidden, f"{data}/link.tar", f"{data}/*.tar"):
        response = check(confined, spec_with({"kind": "webdataset", "name": "t", "urls": [url]}))
        assert response.status_code == 400, (url, response.text)
        assert "'..' part" in response.json()["detail"] or "outside data_root" in response.json()["detail"]
    inside = check(confined, spec_with({"kind": "folder", "name": "imgs", "path": "../imgs"}))
    assert inside.status_code == 200 and inside.json()["ok"], inside.text
    assert "secret" not in json.dumps(confined.get("/api/jobs").json())
