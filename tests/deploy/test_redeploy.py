"""Redeploy on promotion, on a real server serving ``models:/NAME@champion`` from a real MLflow registry:
a signed ``model_version_alias.created`` webhook makes it swap to the LoRA version the alias names now
(built on the base it already holds), replies carry the new ``x-autoglm-model-version``; a repeated
delivery swaps nothing; :func:`autoglm.deploy.redeploy.redeploy` (what ``autoglm loop run --redeploy URL``
calls) swaps it back when the alias moves back; a failing redeploy is a 502 and the old version serves on."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, start_live_server

openai = pytest.importorskip("openai")
pytest.importorskip("peft")
pytest.importorskip("mlflow")

ADMIN = "redeploy-test-admin"
SECRET = "hook-secret-for-tests"
NAME = "swapme"


def _register(uri: str, model_dir: Path) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(NAME)
    except Exception:  # noqa: BLE001 - first version
        client.create_registered_model(NAME)
    exp = client.get_experiment_by_name("redeploy-test") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("redeploy-test")
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(mv.version)


def _alias(uri: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(NAME, "champion", version)


@pytest.fixture(scope="module")
def stack(autoglm_home, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autoglm.hub.demo import ensure_demo_model

    home = tmp_path_factory.mktemp("redeploy-home")
    base = Path(ensure_demo_model("autoglm-demo", autoglm_home))
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = home / "adapter-src"
    peft_model.save_pretrained(adapter)
    shutil.copy2(base / "tokenizer.json", adapter / "tokenizer.json")
    shutil.copy2(base / "tokenizer_config.json", adapter / "tokenizer_config.json")

    from autoglm.config import tracking_uri

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = tracking_uri(home)
    v1, v2 = _register(uri, base), _register(uri, adapter)
    _alias(uri, v1)
    hooks = home / "hooks.yaml"
    hooks.write_text(f"inbound:\n  - name: registry\n    secret: {SECRET}\n    action: redeploy\n"
                     "    aliases: [champion]\n")
    old = os.environ.get("AUTOGLM_WEBHOOKS")
    os.environ["AUTOGLM_WEBHOOKS"] = str(hooks)
    try:
        srv = start_live_server(home, f"models:/{NAME}@champion", "--served-model-name", "demo", "--admin-key",
                                ADMIN, "--quantize", "none", "--max-num-seqs", "4", "--log-level", "warning")
    finally:
        if old is None:
            os.environ.pop("AUTOGLM_WEBHOOKS")
        else:
            os.environ["AUTOGLM_WEBHOOKS"] = old
    yield {"server": srv, "uri": uri, "v1": v1, "v2": v2}
    _stop(srv.process)


def _version(srv) -> str | None:
    client = openai.OpenAI(base_url=srv.base_url, api_key=ADMIN, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model="demo", max_tokens=2,
                                                           messages=[{"role": "user", "content": "hi"}])
    raw.parse()
    return raw.headers.get("x-autoglm-model-version")


def _deliver(srv, version: str, delivery_id: str) -> httpx.Response:
    from autoglm.registry.signing import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": NAME, "alias": "champion", "version": version}}).encode()
    stamp = str(int(time.time()))
    headers = {DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: stamp,
               SIGNATURE_HEADER: sign(SECRET, delivery_id, stamp, body), "content-type": "application/json"}
    return httpx.post(srv.url + "/admin/hooks/registry", content=body, headers=headers, timeout=300)


def test_webhook_and_loop_redeploy_swap_the_served_version(stack):
    srv = stack["server"]
    assert _version(srv) == stack["v1"]
    entry = httpx.get(srv.url + "/admin/deployments", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"][0]
    assert entry["source"] == f"models:/{NAME}@champion" and entry["version"] == stack["v1"]

    _alias(stack["uri"], stack["v2"])  # the promotion ...
    delivery = uuid.uuid4().hex
    r = _deliver(srv, stack["v2"], delivery)  # ... and the registry's webhook
    assert r.status_code == 200, r.text
    outcome = r.json()["result"]["outcome"]
    assert outcome["redeployed"] is True
    (swapped,) = outcome["swapped"]
    assert swapped["from_version"] == stack["v1"] and swapped["to_version"] == stack["v2"]
    assert swapped["mode"] == "adapter" and swapped["drained"] is True
    assert _version(srv) == stack["v2"]
    again = _deliver(srv, stack["v2"], delivery)  # a redelivery is answered from its receipt
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    fresh = _deliver(srv, stack["v2"], uuid.uuid4().hex)  # a new event for the version already served
    assert fresh.json()["result"]["outcome"]["redeployed"] is False

    from autoglm.deploy.redeploy import RedeployError, redeploy

    _alias(stack["uri"], stack["v1"])  # a rollback, told by the loop's --redeploy
    (done,) = redeploy(srv.url + "/v1", NAME, "champion", stack["v1"], admin_key=ADMIN)
    assert done["to_version"] == stack["v1"] and done["mode"] == "full"
    assert _version(srv) == stack["v1"]
    assert redeploy(srv.url, NAME, "champion", stack["v1"], admin_key=ADMIN)[0]["skipped"]
    with pytest.raises(RedeployError, match="admin key"):
        redeploy(srv.url, NAME, "champion", None, admin_key="wrong")
