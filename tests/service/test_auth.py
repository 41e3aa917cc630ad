"""Every route of the real server, walked from its own route table: tokens, roles and states are enforced."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from curation.service.tokens import ROLES, TokenStore
from tests.service.conftest import start_service

PAGE_ROUTES = {"/", "/static", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def operations(service) -> list[tuple[str, str, str, bool]]:
    """(method, path with placeholders filled, role, public) for every operation the OpenAPI description lists."""
    spec = requests.get(service.base + "/openapi.json", timeout=10).json()
    found = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            filled = re.sub(r"\{[^}]+\}", "x", path)
            found.append((method.upper(), filled, operation["x-role"], operation["x-public"]))
    return found


def test_the_route_table_and_the_openapi_description_agree(service):
    from curation.service.app import create_app
    from curation.service.settings import ServiceSettings
    from curation.store.home import Home

    app = create_app(Home(service.home), ServiceSettings(), start_jobs=False)
    listed = {(method, re.sub(r"\{[^}]+\}", "x", path)) for method, path, _, _ in operations(service)}
    for route in app.routes:
        if route.path.startswith("/api"):
            for method in route.methods:
                assert (method, re.sub(r"\{[^}:]+(:path)?\}", "x", route.path)) in listed, route.path
        else:
            assert route.path in PAGE_ROUTES, f"{route.path} is neither an API route nor part of the page"
    assert len(listed) >= 30


def test_every_route_refuses_missing_bad_expired_and_revoked_tokens(service):
    checked = 0
    for method, path, _role, public in operations(service):
        if not public:
            response = requests.request(method, service.base + path, timeout=10)
            assert response.status_code == 401, (method, path, "no token", response.status_code)
            assert response.headers.get("www-authenticate") == "Bearer"
        for presented in ("Bearer cur_00000000_forged", "Basic YWRtaW46YWRtaW4=",
                          f"Bearer {service.tokens['expired']}", f"Bearer {service.tokens['revoked']}"):  # fmt: skip
            response = requests.request(method, service.base + path, headers={"Authorization": presented}, timeout=10)
            assert response.status_code == 401, (method, path, presented[:20], response.status_code)
        checked += 1
    assert checked >= 30


def test_every_route_refuses_roles_below_its_own_and_admits_its_own(service):
    for method, path, role, _public in operations(service):
        for held in ROLES:
            response = service.request(method, path, role=held)
            if ROLES.index(held) < ROLES.index(role):
                assert response.status_code == 403, (method, path, held, response.status_code)
            else:
                assert response.status_code not in (401, 403), (method, path, held, response.status_code)


def test_public_routes_are_only_the_ones_policy_opens(service):
    public = {(method, path) for method, path, _, is_public in operations(service) if is_public}
    assert public == {("GET", "/api/health"), ("GET", "/api/policy"), ("POST", "/api/optouts"),
                      ("GET", "/api/optouts/x")}  # fmt: skip


def test_withdrawing_an_opt_out_needs_the_curator_role(service):
    """Anyone may ask for an opt-out; only a curator may withdraw one (else any viewer could undo anyone's)."""
    created = service.post("/api/optouts", role="viewer", data={"kind": "domain", "value": "withdrawn.example"})
    withdrawal = {"kind": "withdraw", "value": created.json()["request_id"]}
    refused = service.post("/api/optouts", role="viewer", data=withdrawal)
    assert refused.status_code == 403 and "curator" in refused.json()["detail"]
    assert service.get(f"/api/optouts/{withdrawal['value']}").json()["status"] == "received"
    assert service.post("/api/optouts", role="curator", data=withdrawal).status_code == 201
    assert service.get(f"/api/optouts/{withdrawal['value']}").json()["status"] == "withdrawn"


def test_token_lifetimes_are_capped_with_a_clear_error(service, tmp_path):
    """Over HTTP and in the CLI: ten years at most, and an absurd one is a TokenError, not an OverflowError."""
    for expires in ("99999999999d", "999999999d", "3651d"):
        refused = service.post("/api/tokens", json={"name": "t", "role": "viewer", "expires": expires})
        assert refused.status_code == 422 and "longer than 3650 days" in refused.json()["detail"], refused.text
    assert service.post("/api/tokens", json={"name": "t", "role": "viewer", "expires": "3650d"}).status_code == 201
    command = [sys.executable, "-m", "curation.cli", "--home", str(tmp_path), "token", "create", "--name", "t",
               "--role", "viewer", "--expires", "99999999999d"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "longer than 3650 days" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def closed_service(tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("closed") / "home", "--no-public-optouts")
    yield running
    running.stop()


def test_policy_can_close_opt_outs_to_the_public(closed_service):
    response = closed_service.post("/api/optouts", role=None, data={"kind": "domain", "value": "example.com"})
    assert response.status_code == 401
    assert closed_service.post("/api/optouts", role="viewer", data={"kind": "domain", "value": "example.com"}).ok


def test_revoking_with_the_cli_store_takes_effect_on_the_running_server(closed_service):
    store = TokenStore(closed_service.home)
    token, record = store.create("short-lived", "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(closed_service.base + "/api/whoami", headers=headers, timeout=10).json()["role"] == "viewer"
    store.revoke(record.token_id)
    assert requests.get(closed_service.base + "/api/whoami", headers=headers, timeout=10).status_code == 401
    assert token not in (closed_service.home / "service" / "tokens.json").read_text()


def test_public_opt_outs_are_rate_limited_per_address_but_token_holders_are_not(service):
    limit = int(requests.get(service.base + "/api/policy", timeout=10).json()["public_optout_limit"].split("/")[0])
    codes = [service.post("/api/optouts", role=None, data={"kind": "domain", "value": f"site{i}.example"}).status_code
             for i in range(limit + 1)]  # fmt: skip
    assert codes == [201] * limit + [429]
    assert service.post("/api/optouts", role="viewer", data={"kind": "domain", "value": "other.example"}).ok


def test_fuzzing_every_operation_from_the_openapi_description_finds_no_server_error(service, tmp_path):
    """Schemathesis generates requests from /openapi.json (valid and invalid) for every operation, as admin;
    token revocation (DELETE) is left out so the run keeps its token. A finished job first gives the fuzzer real
    ids to find in responses. Any 5xx fails."""
    from tests.service.conftest import SPECS

    assert service.wait_job(service.submit((SPECS / "fashion.yaml").read_text())["job_id"])["status"] == "finished"
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{service.base}/openapi.json",
               "-H", f"Authorization: Bearer {service.tokens['admin']}", "--checks", "not_a_server_error",
               "--max-examples", "25", "--phases", "examples,coverage,fuzzing", "--exclude-method", "DELETE",
               "--seed", "1"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"Tested: 3\d", result.stdout), result.stdout[-2000:]  # every operation but DELETE ran
