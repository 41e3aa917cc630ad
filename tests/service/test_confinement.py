"""Submitted specs against a real `curate serve` whose data_root holds a specs folder, with files just outside it:
every path a spec names is checked as the run will use it."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_stage_paths_are_checked_where_the_run_reads_them(confined, layout):
    """Decontamination sets and model files resolve against specs_dir like sources, not against the server's
    working directory, so the path that passes the check is the one the run opens."""
    imgs = {"kind": "folder", "name": "imgs", "path": "../imgs"}
    evaluation = {"kind": "folder", "name": "eval", "path": "../eval"}
    inside = check(confined, spec_with(imgs, embed={"model": "builtin"}, decontaminate={"sets": [evaluation]}))
    assert inside.status_code == 200 and inside.json()["ok"], inside.text  # ROOT/data/eval, not CWD/../eval
    escape = {**evaluation, "path": "../../outside/imgs"}
    timm = {"model": "timm:vit_small_patch16_224", "pretrained": "../../outside/w.pth"}
    for stages in ({"embed": {"model": "builtin"}, "decontaminate": {"sets": [escape]}},
                   {"embed": {"model": "bundled:../../outside/b.json"}}, {"embed": timm}):  # fmt: skip
        refused = check(confined, spec_with(imgs, **stages))
        assert refused.status_code == 400 and "outside data_root" in refused.json()["detail"], (stages, refused.text)


def test_a_home_folder_in_a_model_path_is_checked_as_expanded(confined, layout):
    """The model readers expand `~`; the check must see that path, not specs_dir/~/..."""
    assert not Path.home().is_relative_to(layout)
    imgs = {"kind": "folder", "name": "imgs", "path": "../imgs"}
    for embed in ({"model": "bundled:~/.bashrc"}, {"model": "timm:vit_small_patch16_224", "pretrained": "~/w.pth"}):
        refused = check(confined, spec_with(imgs, embed=embed))
        assert refused.status_code == 400 and f"{Path.home()}" in refused.json()["detail"], (embed, refused.text)


def test_the_shipped_default_embedder_is_allowed_whatever_specs_dir_is(tmp_path):
    """`bundled:default` names the embedder in the package, not a file `default` under specs_dir (which may lie
    outside data_root)."""
    from curation.service.jobs import spec_from_text
    from curation.service.settings import ServiceSettings
    from curation.store.home import Home

    (tmp_path / "data" / "imgs").mkdir(parents=True)
    settings = ServiceSettings(data_root=tmp_path / "data", specs_dir=tmp_path / "specs").resolved()
    text = yaml.safe_dump(spec_with({"kind": "folder", "name": "imgs", "path": "../data/imgs"},
                                    embed={"model": "bundled:default"}))  # fmt: skip
    assert spec_from_text(text, settings, Home(tmp_path / "home")).stages.embed.model == "bundled:default"


def test_a_submitted_spec_cannot_send_the_servers_s3_credentials_to_another_host(confined):
    """Runs sign S3 requests with the server's credentials: an endpoint or region of the spec's own would get them."""
    bucket = {"kind": "s3", "name": "b", "uri": "s3://bucket/x"}
    for s3 in ({"endpoint_url": "http://127.0.0.1:9/"}, {"region": "elsewhere-1"}):
        for route in ("/api/specs/check", "/api/jobs"):
            refused = confined.post(
                route, role="curator", json={"spec": yaml.safe_dump({**spec_with(bucket), "s3": s3})}
            )
            assert refused.status_code == 400, (route, s3, refused.text)
            assert f"s3.{next(iter(s3))}" in refused.json()["detail"]
    assert confined.get("/api/jobs").json() == []


def test_a_submitted_spec_runs_against_the_servers_s3_endpoint(tmp_path):
    from curation.errors import SpecError
    from curation.service.jobs import spec_from_text
    from curation.service.settings import ServiceSettings
    from curation.store.home import Home

    settings = ServiceSettings(data_root=tmp_path, specs_dir=tmp_path, s3_endpoint_url="http://s3.internal:9000",
                               s3_region="eu-west-1").resolved()  # fmt: skip
    bucket = spec_with({"kind": "s3", "name": "b", "uri": "s3://bucket/x"})
    served = ("http://s3.internal:9000", "eu-west-1")
    for s3 in ({}, {"endpoint_url": served[0], "region": served[1]}):
        spec = spec_from_text(yaml.safe_dump({**bucket, "s3": s3}), settings, Home(tmp_path / "home"))
        assert (spec.s3.endpoint_url, spec.s3.region) == served
    with pytest.raises(SpecError, match="s3.endpoint_url 'http://s3.internal:9001'"):
        spec_from_text(yaml.safe_dump({**bucket, "s3": {"endpoint_url": "http://s3.internal:9001"}}), settings,
                       Home(tmp_path / "home"))  # fmt: skip


def test_a_submitted_spec_with_a_repeated_key_is_refused(tmp_path):
    """As for a spec file: YAML alone would keep the second `decode:` and drop the first without a word."""
    from curation.errors import SpecError
    from curation.service.jobs import spec_from_text
    from curation.service.settings import ServiceSettings
    from curation.store.home import Home

    (tmp_path / "data" / "imgs").mkdir(parents=True)
    settings = ServiceSettings(data_root=tmp_path / "data", specs_dir=tmp_path / "specs").resolved()
    text = ("name: demo\nsources: [{kind: folder, name: imgs, path: ../data/imgs}]\n"
            "stages:\n  decode: {min_side: 16}\n  decode: {min_side: 64}\n")  # fmt: skip
    with pytest.raises(SpecError, match="<submitted spec>: line 5: key 'decode' is repeated"):
        spec_from_text(text, settings, Home(tmp_path / "home"))
