"""The console's server side without a browser: assets, the session, the planner, the deploy validator.

In-process apps on the scripted engine (tests/api/fake_engine.py); the browser tests are
test_console_browser.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

LOCAL = ("127.0.0.1", 50000)  # the operator routes of an open server answer loopback callers

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.console import console_enabled
from autoglm.console.assets import bundle_sizes, load_assets
from autoglm.console.routes import validate_deploy_text
from tests.api.fake_engine import FakeEngine

BAD = "models:\n  - name: a\n    quantize: int3\n"


@pytest.fixture()
def gateway(tmp_path):
    from autoglm.gateway.facade import Gateway, GatewaySettings

    gw = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), admin_key="adm-test"))
    yield gw
    import asyncio

    asyncio.run(gw.close())


def test_pages_are_served_with_etag_gzip_and_a_csp():
    c = TestClient(build_app({"fake": FakeEngine()}), client=LOCAL)
    r = c.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = c.get("/ui/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="js/main.js">' in r.text
    assert c.get("/ui/", headers={"if-none-match": r.headers["etag"]}).status_code == 304
    js = c.get("/ui/js/main.js", headers={"accept-encoding": "gzip"})
    assert js.headers["content-type"].startswith("text/javascript") and js.headers["content-encoding"] == "gzip"
    missing = c.get("/ui/js/nope.js")
    assert missing.status_code == 404 and "open /ui/" in missing.json()["error"]["message"]
    assert c.get("/ui/../config.py").status_code == 404


def test_every_module_the_pages_import_is_shipped():
    assets = load_assets()
    import re

    for name, asset in assets.items():
        if not name.endswith(".js"):
            continue
        base = name.rsplit("/", 1)[0]
        for ref in re.findall(r"""(?:from|import\()\s*['"](\.{1,2}/[^'"]+)['"]""", asset.body.decode()):
            parts = (base + "/" + ref).split("/")
            out: list[str] = []
            for p in parts:
                if p == "..":
                    out.pop()
                elif p != ".":
                    out.append(p)
            assert "/".join(out) in assets, f"{name} imports {ref}, which is not in static/"
    raw, gz = bundle_sizes()
    print(f"\nconsole bundle: {raw / 1024:.1f} KiB raw, {gz / 1024:.1f} KiB gzipped")
    assert gz < 500 * 1024


def test_ui_off_and_default_by_host():
    assert console_enabled(ServerSettings(host="127.0.0.1"))
    assert not console_enabled(ServerSettings(host="0.0.0.0"))
    assert console_enabled(ServerSettings(host="0.0.0.0", ui=True))
    c = TestClient(build_app({"fake": FakeEngine()}, ServerSettings(ui=False)), client=LOCAL)
    assert c.get("/ui/").status_code == 404
    assert c.get("/admin/schema/deploy").status_code == 200  # the helpers stay for API clients


def test_no_ui_flag_reaches_the_server_settings():
    from autoglm.cli.main import build_parser
    from autoglm.cli.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--no-ui"])
    assert settings_from_args(args)[1].ui is False
    assert settings_from_args(build_parser().parse_args(["serve"]))[1].ui is None


def test_session_without_and_with_keys(gateway):
    c = TestClient(build_app({"fake": FakeEngine()}, gateway=gateway), client=LOCAL)
    anon = c.get("/ui/api/session").json()  # never a 401: the page decides what to ask for
    assert anon["key_required"] and not anon["caller"]["valid"] and anon["models"] == []
    assert "no API key" in anon["caller"]["error"]
    admin = c.get("/ui/api/session", headers={"authorization": "Bearer adm-test"}).json()
    assert admin["caller"]["valid"] and admin["caller"]["gateway_admin"] and admin["caller"]["deploy"]
    assert admin["models"] == [{"id": "fake", "root": "fake", "demo": False}]
    assert admin["features"]["keys"] and admin["metrics"]["readable"]
    made = c.post("/admin/keys", json={"name": "limited", "models": ["other"]},
                  headers={"authorization": "Bearer adm-test"}).json()["key"]
    user = c.get("/ui/api/session", headers={"authorization": f"Bearer {made}"}).json()
    assert user["caller"]["valid"] and user["caller"]["name"] == "limited" and not user["caller"]["admin"]
    assert user["models"] == [] and not user["metrics"]["readable"]
    # the console's admin helpers refuse the limited key and a missing one
    assert c.get("/admin/schema/deploy", headers={"authorization": f"Bearer {made}"}).status_code == 401
    assert c.post("/admin/validate/deploy", content=BAD).status_code == 401


def test_validate_matches_the_cli(tmp_path):
    out = validate_deploy_text(BAD)
    assert not out["valid"] and out["error"]["line"] == 3 and out["error"]["key"] == "models[0].quantize"
    assert out["data"] == {"models": [{"name": "a", "quantize": "int3"}]}
    (tmp_path / "autoglm-deploy.yaml").write_text(BAD)
    cli = subprocess.run([sys.executable, "-m", "autoglm", "deploy", "autoglm-deploy.yaml", "--dry-run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and out["error"]["text"] in cli.stderr
    good = validate_deploy_text("models:\n  - name: a\n    source: autoglm-demo\n")
    assert good["valid"] and any("model a" in line for line in good["plan"])


def test_validate_never_shows_the_servers_environment(monkeypatch):
    monkeypatch.setenv("H5_SECRET", "hunter2-not-a-port")
    out = validate_deploy_text("models:\n  - name: a\nserver:\n  port: ${H5_SECRET}\n")
    assert not out["valid"] and "hunter2" not in str(out) and out["error"]["key"] == "server.port"


def test_plan_route():
    c = TestClient(build_app({"fake": FakeEngine()}), client=LOCAL)
    plan = c.get("/admin/plan", params={"model": "glm-4-9b-chat", "device": "cuda", "free_gb": "12"}).json()
    # 9.4B parameters, 16 sequences of 4096 tokens: bf16 and int8 do not fit in 12 GiB, int4 does
    assert plan["precision"] == "int4" and {r["precision"] for r in plan["rows"]} >= {"fp32", "bf16", "int4"}
    assert any(r["chosen"] for r in plan["rows"]) and plan["reasons"]
    assert c.get("/admin/plan", params={"model": "no-such-model-xyz"}).status_code == 404
    bad = c.get("/admin/plan", params={"device": "tpu"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "device"


def test_schema_is_the_deploy_schema():
    from autoglm.deploy.schema import DeployConfig

    c = TestClient(build_app({"fake": FakeEngine()}), client=LOCAL)
    assert c.get("/admin/schema/deploy").json() == DeployConfig.model_json_schema()


def test_every_text_of_the_pages_has_a_chinese_entry():
    import re

    assets = load_assets()
    i18n = assets["js/i18n.js"].body.decode()
    block = i18n[i18n.index("const ZH = {"):i18n.index("\n};")]
    keys = set()
    for m in re.finditer(r"""^\s+(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([A-Za-z]\w*)):""", block, re.M):
        keys.add((m[1] or m[2] or m[3] or "").replace("\\'", "'"))
    used = set()
    for name, asset in assets.items():
        if name.endswith(".js"):
            for m in re.finditer(r"""\bt\('((?:[^'\\]|\\.)*)'""", asset.body.decode()):
                used.add(m[1].replace("\\'", "'"))
    missing = sorted(used - keys)
    assert not missing, f"texts without a Chinese entry in js/i18n.js: {missing}"


def test_capabilities_see_routes_mounted_by_included_routers():
    from fastapi import APIRouter, FastAPI

    from autoglm.console.routes import _mounted

    app = FastAPI()
    assert not _mounted(app, "GET", "/admin/runs/r1")
    inner = APIRouter(prefix="/runs")

    @inner.get("/{run_id}")
    async def run(run_id: str) -> dict:
        return {}

    outer = APIRouter(prefix="/admin")
    outer.include_router(inner)
    app.include_router(outer)
    assert _mounted(app, "GET", "/admin/runs/r1") and not _mounted(app, "POST", "/admin/runs/r1")
    features = TestClient(build_app({"fake": FakeEngine()}), client=LOCAL).get("/ui/api/session").json()["features"]
    assert not features["keys"] and features["deployments"]  # no gateway here: no key routes
