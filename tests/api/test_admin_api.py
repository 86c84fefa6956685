"""The admin REST API through ``autoglm.Client`` against a real ``autoglm serve`` process.

One server (admin key set, an outbound webhook to a local receiver) on a fresh AUTOGLM_HOME where the
tabular example pipeline is run *through the API* and an Optuna study exists; the SDK lists and gets
them, validates a bad file (line + key, the CLI's message), promotes and rolls back in MLflow (the alias
moves, the webhook receiver gets signed events), and refuses callers without the admin key. The CLI's
``--server`` mode is the same calls. The OpenAPI document names every admin route and validates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import autoglm
from autoglm.client import APIError
from tests.conftest import _stop, start_live_server
from tests.registry.test_webhooks import SECRET, Receiver

ROOT = Path(__file__).resolve().parents[2]
TABULAR = ROOT / "examples" / "pipelines" / "credit-tabular.yaml"
ADMIN = "admin-key-for-the-admin-api-tests"
ADMIN_PATHS = {
    ("get", "/admin/pipelines"), ("get", "/admin/pipelines/{name}"), ("post", "/admin/pipelines/validate"),
    ("post", "/admin/pipelines/run"), ("get", "/admin/runs/{run_id}"), ("get", "/admin/studies"),
    ("get", "/admin/studies/{name}"), ("get", "/admin/models"), ("get", "/admin/models/{name}"),
    ("post", "/admin/models/{name}/promote"), ("post", "/admin/models/{name}/rollback"), ("get", "/admin/loop"),
}
BAD_PIPELINE = "name: bad\ndata:\n  train: credit.csv\ntrain:\n  trainer: tabular\n  target: default\n  lr: 3\n"


def _make_study(home: Path) -> None:
    """A real Optuna study in the journal file ``autoglm tune`` would write (trials are quick functions)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (home / "studies").mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies" / "tiny.journal")))
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("autoglm.metric", "score")
    study.set_user_attr("autoglm.pipeline", "tiny")
    study.optimize(lambda t: -(t.suggest_float("x", -2.0, 2.0) - 1.0) ** 2 + 0.01 * t.suggest_int("n", 1, 4),
                   n_trials=8)


def _light_tabular(folder: Path) -> Path:
    """The tabular example, lighter: 3 folds, fewer trees, no SHAP (the same stages and trainer)."""
    text = TABULAR.read_text()
    for old, new in (("../data/credit.csv", str(TABULAR.parent.parent / "data" / "credit.csv")),
                     ("n_estimators: 200", "n_estimators: 40"), ("cv_folds: 5", "cv_folds: 3"),
                     ("explain: true", "explain: false")):
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "credit-tabular.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def admin_home(tmp_path_factory, live_server, autoglm_home) -> Path:
    home = tmp_path_factory.mktemp("admin-home")
    (home / "demo").symlink_to(autoglm_home / "demo")  # the demo model the session's live server built
    _make_study(home)
    _light_tabular(home)
    return home


@pytest.fixture(scope="module")
def server(admin_home, receiver):
    hooks = admin_home / "hooks.yaml"
    hooks.write_text(f"outbound:\n  - name: ops\n    url: {receiver.url}\n    secret: {SECRET}\n"
                     "    events: [registry]\n")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "AUTOGLM_SERVER", "AUTOGLM_API_KEY", "AUTOGLM_STATE_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AUTOGLM_ADMIN_KEY", ADMIN)
        mp.setenv("AUTOGLM_WEBHOOKS", str(hooks))
        live = start_live_server(admin_home, "autoglm-demo", "--log-level", "warning")
    yield live
    _stop(live.process)


@pytest.fixture(scope="module")
def client(server):
    with autoglm.Client(server.url, api_key=ADMIN, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def pipeline_file(admin_home) -> Path:
    return admin_home / "credit-tabular.yaml"


@pytest.fixture(scope="module")
def tabular_run(client, pipeline_file):
    """The example pipeline, started through the API and waited for."""
    handle = client.pipelines.run(str(pipeline_file))
    assert handle["status"] == "started" and handle["started"] and handle["pid"]
    run = client.runs.wait(handle["id"], timeout=300)
    return handle, run


def test_pipeline_runs_through_the_api_and_is_listed_with_stages_metrics_and_history(client, tabular_run,
                                                                                   pipeline_file):
    handle, run = tabular_run
    assert run["status"] == "finished", run.get("error")
    assert list(run["stages"]) == ["preprocess", "train", "evaluate", "register"]
    assert all(s["status"] == "finished" and s["seconds"] is not None for s in run["stages"].values())
    assert 0.5 < run["metrics"]["test_auc"] <= 1.0
    folds = run["history"]["cv_auc"]  # one point per cross-validation fold, as the trainer reported them
    assert [p["step"] for p in folds] == [1, 2, 3]
    assert {(e["kind"], e["source"], e["action"]) for e in run["events"]} >= {("stage", "train", "started")}

    pipelines = {p["name"]: p for p in client.pipelines.list()}
    assert pipelines["credit-tabular"]["n_runs"] == 1 and pipelines["credit-tabular"]["status"] == "finished"
    one = client.pipelines.get("credit-tabular")
    assert one["runs"][0]["id"] == handle["id"] and one["runs"][0]["stages"]["train"]["metrics"]["cv_auc_mean"] > 0.5
    assert client.runs.get(handle["id"][:8])["id"] == handle["id"]  # the short id `pipeline status` prints

    again = client.pipelines.run(str(pipeline_file))  # same content: found finished, nothing started
    assert again["status"] == "finished" and again["started"] is False and again["id"] == handle["id"]


def test_unknown_names_are_404_error_objects(client, server):
    for call in (lambda: client.pipelines.get("no-such"), lambda: client.runs.get("0123456789abcdef"),
                 lambda: client.studies.get("no-such"), lambda: client.models.promote("no-such", 1)):
        with pytest.raises(APIError) as err:
            call()
        assert err.value.status == 404 and err.value.code == "not_found" and err.value.message
    r = httpx.get(f"{server.url}/admin/studies/no-such", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_validate_gives_line_and_key_with_the_cli_message(client, tmp_path):
    answer = client.pipelines.validate(BAD_PIPELINE)
    assert answer["ok"] is False
    (error,) = answer["errors"]
    assert error["line"] == 7 and error["key"] == "train.lr" and "unknown key 'lr'" in error["message"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PIPELINE)
    cli = subprocess.run([sys.executable, "-m", "autoglm", "pipeline", "validate", str(bad)], capture_output=True,
                         text=True, env={**os.environ, "AUTOGLM_SERVER": ""})
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {bad}:7 train.lr: {error['message']}"

    good = client.pipelines.validate(TABULAR.read_text(), base_dir=str(TABULAR.parent))
    assert good["ok"] and good["pipeline"]["stages"] == ["preprocess", "train", "evaluate", "register"]


def test_bad_bodies_are_400_naming_the_field(client):
    cases = [("/admin/pipelines/validate", {"yaml": "x", "bogus": 1}, "bogus"),
             ("/admin/pipelines/validate", {}, "yaml"),
             ("/admin/pipelines/run", {"path": str(TABULAR), "until": "deploy"}, "until"),
             ("/admin/pipelines/run", {"path": str(TABULAR), "yaml": "name: x"}, "path"),
             ("/admin/pipelines/run", {"path": "/no/such/file.yaml"}, "path"),
             ("/admin/models/credit-tabular/promote", {"version": "two"}, "version")]
    for path, body, param in cases:
        with pytest.raises(APIError) as err:
            client.request("POST", path, json=body)
        assert (err.value.status, err.value.param) == (400, param), (path, body, err.value)


def test_studies_list_and_detail_with_importances(client):
    (study,) = [s for s in client.studies.list() if s["name"] == "tiny"]
    assert study["n_trials"] == 8 and study["direction"] == "maximize" and study["metric"] == "score"
    detail = client.studies.get("tiny")
    assert len(detail["trials"]) == 8 and detail["counts"] == {"complete": 8}
    values = [t["value"] for t in detail["trials"]]
    assert detail["best"]["value"] == max(values) == detail["best_value"]
    assert set(detail["importances"]) == {"x", "n"} and abs(sum(detail["importances"].values()) - 1) < 1e-6


def _alias_in_mlflow(home: Path, name: str, alias: str) -> str:
    import mlflow

    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    return str(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name, alias).version)


def _second_version(home: Path, name: str) -> str:
    import mlflow

    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = c.get_model_version(name, "1")
    return str(c.create_model_version(name, source=first.source, run_id=first.run_id).version)


def test_promote_and_rollback_move_the_alias_in_mlflow_and_fire_signed_webhooks(client, tabular_run, admin_home,
                                                                                 receiver):
    from autoglm.registry.signing import signature_matches

    (model,) = [m for m in client.models.list() if m["name"] == "credit-tabular"]
    assert model["aliases"] == {"challenger": "1"}
    v2 = _second_version(admin_home, "credit-tabular")
    before = len(receiver.requests)

    first = client.models.promote("credit-tabular", 1)
    assert first["changed"] and first["previous"] is None and _alias_in_mlflow(admin_home, "credit-tabular",
                                                                                "champion") == "1"
    second = client.models.promote("credit-tabular", v2)
    assert second["previous"] == "1" and _alias_in_mlflow(admin_home, "credit-tabular", "champion") == v2
    assert client.models.get("credit-tabular")["aliases"]["champion"] == v2
    back = client.models.rollback("credit-tabular")
    assert (back["from"], back["version"]) == (v2, "1") and _alias_in_mlflow(admin_home, "credit-tabular",
                                                                              "champion") == "1"
    same = client.models.promote("credit-tabular", 1)  # already there: nothing moves, nothing is sent
    assert same["changed"] is False and same["webhooks"] == []

    deadline = time.monotonic() + 30
    while len(receiver.requests) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = receiver.requests[before:]
    assert [json.loads(b)["data"]["version"] for _, b in sent] == ["1", v2, "1"]
    for headers, body in sent:
        event = json.loads(body)
        assert (event["entity"], event["action"]) == ("model_version_alias", "created")
        assert event["data"]["alias"] == "champion"
        assert signature_matches(SECRET, headers["x-mlflow-delivery-id"], headers["x-mlflow-timestamp"], body,
                                 headers["x-mlflow-signature"])


def test_admin_key_is_required(server):
    r = httpx.get(f"{server.url}/admin/pipelines")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with autoglm.Client(server.url, api_key="wrong-key") as wrong:
        for call in (wrong.pipelines.list, wrong.studies.list, wrong.models.list, wrong.loop.cycles):
            with pytest.raises(APIError) as err:
                call()
            assert err.value.status == 401
        with pytest.raises(APIError) as err:
            wrong.models.promote("credit-tabular", 1)
        assert err.value.status == 401


def test_loop_keys_and_feedback_through_the_sdk(client, admin_home):
    from autoglm.loop.state import LoopState

    state = LoopState.load(admin_home, "demo-loop")
    state["history"] = [{"id": "c1", "trigger": "feedback", "phase": "refused",
                         "decision": {"promote": False, "reasons": ["not better by 0.01"]}}]
    state["cycle"] = {"id": "c2", "trigger": "drift", "phase": "trained"}
    state.save()
    cycles = client.loop.cycles()
    assert [(c["loop"], c["id"], c["in_progress"]) for c in cycles] == [("demo-loop", "c1", False),
                                                                         ("demo-loop", "c2", True)]
    assert cycles[0]["decision"]["reasons"] == ["not better by 0.01"]

    created = client.keys.create("sdk-bot", rpm=60)
    assert created["key"] and "sdk-bot" in [k["name"] for k in client.keys.list()]
    client.keys.revoke("sdk-bot")
    with pytest.raises(APIError) as err:
        client.keys.revoke("sdk-bot-never-made")
    assert err.value.status == 404
    assert isinstance(client.feedback.stats(), dict) and client.feedback.list() == []
    assert client.feedback.export("dpo") == []  # nothing rated yet: no pairs
    with pytest.raises(APIError) as err:
        client.feedback.export("ppo")
    assert (err.value.status, err.value.param) == (400, "format")
    with pytest.raises(APIError) as err:
        client.feedback.export("sft", min_support=0)
    assert (err.value.status, err.value.param) == (400, "min_support")
    assert client.health()["status"] in ("ok", "degraded")


def test_deployments_through_the_sdk(client):
    try:
        deployed = client.deployments.list()
    except APIError as exc:
        if exc.status in (404, 405):
            pytest.skip("/admin/deployments is not mounted on this build")
        raise
    assert "autoglm-demo" in [d["name"] for d in deployed]


def _cli(server, *args: str, key: str = ADMIN) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOGLM_SERVER": server.url, "AUTOGLM_API_KEY": key, "AUTOGLM_HOME": "/nonexistent-home"}
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_with_server_uses_the_api(server, tabular_run):
    status = _cli(server, "pipeline", "status", "--name", "credit-tabular", "--json")
    assert status.returncode == 0, status.stderr
    (run,) = json.loads(status.stdout)
    assert run["run_key"] == tabular_run[0]["id"] and run["status"] == "finished"
    studies = _cli(server, "tune", "status", "tiny")
    assert studies.returncode == 0 and "8 complete" in studies.stdout and "importance x" in studies.stdout
    listed = _cli(server, "models", "list")
    assert listed.returncode == 0 and "credit-tabular" in listed.stdout and "@champion" in listed.stdout
    refused = _cli(server, "models", "promote", "credit-tabular", "1", key="wrong-key")
    assert refused.returncode != 0 and refused.stderr.startswith("error: 401") and refused.stderr.count("\n") == 1


def test_openapi_names_every_admin_route_and_validates(server):
    doc = httpx.get(f"{server.url}/openapi.json", headers={"authorization": f"Bearer {ADMIN}"}).json()
    found = {(m, p) for p, item in doc["paths"].items() for m, op in item.items()
             if isinstance(op, dict) and "admin" in op.get("tags", [])}
    assert ADMIN_PATHS <= found
    assert doc["paths"]["/admin/models/{name}/promote"]["post"]["requestBody"]
    from openapi_spec_validator import validate

    validate(doc)


def test_an_open_server_answers_admin_calls_only_from_loopback(live_server):
    from fastapi.testclient import TestClient

    from autoglm.api.app import build_app
    from autoglm.config import ServerSettings
    from tests.api.fake_engine import FakeEngine

    assert httpx.get(f"{live_server.url}/admin/loop").status_code == 200  # an open server, called from this host
    engine = FakeEngine()
    app = build_app({engine.model_name: engine}, ServerSettings())  # no gateway, no keys
    with TestClient(app, client=("10.1.2.3", 40000)) as remote:
        r = remote.get("/admin/pipelines")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_loopback_only"
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/admin/pipelines").status_code == 200
