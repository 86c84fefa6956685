"""The Models, Configuration and Pipelines pages' operations in a real browser (Debian's Chromium through
Playwright) against a live ``autoglm deploy`` process, and the routes behind them over HTTP.

The server's store is fresh and its Hugging Face endpoint is the local hub of tests/hub (real HTTP in a
thread, the routes ``huggingface_hub`` calls; ModelScope is a dead port), so a pull really downloads:
through ``POST /admin/pulls`` and from the Models page, progress reaches 100 % and the model is in the
store; a bad repo id is a 4xx or an error state, never a 500. The demo model is scaled 1 -> 2 -> 1 from
the page with the planner's choice and reasons shown, and requests keep succeeding. A form edit of a
commented deploy file keeps its comments (and patchYAML's edits parse to the data the form holds). An
interrupted pipeline run (the light tabular example, run by the CLI before the server starts, then
left as a crash leaves it) is resumed from the Pipelines page. Screenshots as in test_console_browser.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.api.test_admin_resume import interrupt, light_tabular, wait_exited
from tests.conftest import _stop, free_port, wait_healthy
from tests.console.test_console_browser import ADMIN, Watched, browser, shoot  # noqa: F401 - browser: a fixture
from tests.hub.conftest import EXTRA_FILES, Hub, _make_handler, build_tiny_model

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-glm"))
    files = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    files.update(EXTRA_FILES)
    state = Hub(files=files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def home(tmp_path_factory, autoglm_home):
    from autoglm.hub.demo import ensure_demo_model

    ensure_demo_model("autoglm-demo", autoglm_home)
    h = tmp_path_factory.mktemp("ops-home")
    (h / "demo").symlink_to(autoglm_home / "demo")
    return h


@pytest.fixture(scope="module")
def interrupted_run(home, tmp_path_factory):
    """The light tabular example run by the CLI (until evaluate, no tracking), then interrupted."""
    pipeline = light_tabular(tmp_path_factory.mktemp("pipeline"))
    env = {**os.environ, "AUTOGLM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([sys.executable, "-m", "autoglm", "pipeline", "run", str(pipeline), "--until", "evaluate",
                          "--no-tracking", "--quiet"], env=env, capture_output=True, text=True, timeout=300,
                         cwd=pipeline.parent)
    assert run.returncode == 0, run.stderr
    runs = list((home / "pipelines" / "credit-tabular" / "runs").glob("*.json"))
    assert len(runs) == 1
    run_key = runs[0].stem
    interrupt(home, "credit-tabular", run_key, "evaluate")
    return run_key, pipeline


@pytest.fixture(scope="module")
def server(home, hub, interrupted_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("ops")
    port = free_port()
    deploy = d / "ops.yaml"
    deploy.write_text(f"""models:
  - name: autoglm-demo
    max_num_seqs: 4
gateway:
  state_store: {d / 'state.db'}
server:
  port: {port}
  log_level: warning
  access_log: "off"
  shutdown_grace: 1
""")
    dead = free_port()
    env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONUNBUFFERED": "1", "AUTOGLM_ADMIN_KEY": ADMIN,
           "HF_ENDPOINT": hub.url, "MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{dead}"}
    for var in ("AUTOGLM_OFFLINE", "HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    log_path = d / "serve.log"
    with open(log_path, "wb") as log:
        # the working directory is the pipeline's folder: a CLI run's relative paths start there
        proc = subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(deploy)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=interrupted_run[1].parent)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log_path, what="autoglm deploy")
    yield url
    _stop(proc)


def wait_pull(server: str, pull_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{server}/admin/pulls/{pull_id}", headers=AUTH).json()
        if job["state"] != "running":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_pull_through_the_route_reaches_100_percent_and_lands_in_the_store(server, hub):
    from autoglm.hub.download import select_files

    r = httpx.post(f"{server}/admin/pulls", json={"name": "acme/tiny-glm"}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = wait_pull(server, r.json()["id"])
    wanted = select_files(list(hub.files))
    assert job["state"] == "done" and job["error"] is None and job["percent"] == 100.0, job
    assert job["files_done"] == job["files_total"] == len(wanted)
    assert job["bytes_done"] == job["bytes_total"] == sum(len(hub.files[f]) for f in wanted)
    assert job["from"] == "huggingface" and Path(job["path"], "model.safetensors").is_file()
    store = httpx.get(f"{server}/admin/pulls", headers=AUTH).json()["store"]
    assert any(m["repo_id"] == "acme/tiny-glm" and m["complete"] for m in store), store
    assert "pytorch_model.bin" not in os.listdir(job["path"])  # what autoglm pull skips, the route skips


@pytest.mark.parametrize("body,status,param", [
    ({"name": ""}, 400, "name"), ({"name": "../etc/passwd"}, 400, "name"), ({"name": "not a repo!"}, 404, "name"),
    ({"name": "acme/tiny-glm", "source": "ftp"}, 400, "source"), ({"name": "acme/tiny-glm", "x": 1}, 400, "x")])
def test_bad_pulls_are_4xx_naming_the_field(server, body, status, param):
    r = httpx.post(f"{server}/admin/pulls", json=body, headers=AUTH)
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


def test_a_repo_missing_on_every_hub_ends_in_an_error_state(server):
    r = httpx.post(f"{server}/admin/pulls", json={"name": "acme/no-such-model"}, headers=AUTH)
    assert r.status_code == 202
    job = wait_pull(server, r.json()["id"])
    assert job["state"] == "error" and "could not be downloaded" in job["error"] and "huggingface" in job["error"]
    assert httpx.get(f"{server}/admin/pulls/nope", headers=AUTH).status_code == 404
    assert httpx.post(f"{server}/admin/pulls", json={"name": "acme/tiny-glm"}).status_code == 401


def test_pull_from_the_models_page_shows_progress_and_the_result(server, browser, tmp_path):
    w = Watched(browser)
    w.open(server, "models")
    page = w.page
    page.fill("#pull-name", "glm-4-9b-chat")  # an alias: its Hugging Face repo is on the local hub
    page.click("#pull-btn")
    page.locator('#pull-status[data-state="done"]').wait_for(timeout=120_000)
    assert page.eval_on_selector("#pull-progress", "e => e.value") == 100
    assert "pulled into" in page.inner_text("#pull-status")
    page.locator("#pull-store td", has_text="zai-org/glm-4-9b-chat-hf").wait_for()
    shoot(page, tmp_path, "models-pulled")
    page.fill("#pull-name", "acme/no-such-model")  # well formed, on no hub: the error state
    page.click("#pull-btn")
    page.locator('#pull-status[data-state="error"]').wait_for(timeout=120_000)
    assert "could not be downloaded" in page.inner_text("#pull-status")
    page.fill("#pull-name", "not a repo!")  # refused before anything starts
    page.click("#pull-btn")
    page.locator('#pull-status[data-state="refused"]').wait_for()
    assert "neither a known alias" in page.inner_text("#pull-status")
    shoot(page, tmp_path, "models-pull-refused")
    w.close()
    # the refusal this test asked for (its response, and the browser's console line about it), nothing else
    assert [p for p in w.problems if "404" not in p] == []
    assert [p for p in w.problems if p.startswith("HTTP")] == [f"HTTP 404: {server}/admin/pulls"]


def test_scale_from_the_models_page_with_the_planner_reasons(server, browser, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key=ADMIN, max_retries=0)

    def ask() -> None:
        reply = client.chat.completions.create(model="autoglm-demo", max_tokens=3,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens >= 1

    w = Watched(browser)
    w.open(server, "models")
    page = w.page
    page.locator('[data-scale="autoglm-demo"]').wait_for()
    page.fill('[data-scale="autoglm-demo"]', "2")
    page.get_by_role("button", name="Scale autoglm-demo").click()
    page.locator("#scale-plan").wait_for(timeout=180_000)
    reasons = page.inner_text("#scale-plan")
    assert "--quantize" in reasons and "1 more replica(s)" in reasons and "fits" in reasons, reasons
    assert "1 → 2 replicas" in page.inner_text("#scale-result")
    entry = httpx.get(f"{server}/admin/deployments/autoglm-demo", headers=AUTH).json()
    assert [b["label"] for b in entry["backends"]] == ["autoglm-demo", "autoglm-demo#0"]
    for _ in range(4):
        ask()
    page.locator("td", has_text="autoglm-demo#0 (").first.wait_for(timeout=10_000)
    shoot(page, tmp_path, "models-scaled")
    page.fill('[data-scale="autoglm-demo"]', "1")
    page.get_by_role("button", name="Scale autoglm-demo").click()
    page.locator("#scale-result", has_text="2 → 1 replicas").wait_for(timeout=120_000)
    entry = httpx.get(f"{server}/admin/deployments/autoglm-demo", headers=AUTH).json()
    assert [b["label"] for b in entry["backends"]] == ["autoglm-demo"]
    ask()
    w.close()
    assert w.problems == []


COMMENTED = """# Deploy file of the ops team: keep these comments.
models:
  # the demo model (random weights: its replies are noise)
  - name: autoglm-demo   # the name clients send
    max_num_seqs: 8      # small batches on CPU

# where it listens
server:
  host: 127.0.0.1  # loopback only
  port: 8000
"""


def test_a_form_edit_keeps_the_comments_of_the_yaml(server, browser, tmp_path):
    w = Watched(browser)
    w.open(server, "config")
    page = w.page
    page.fill("#yaml-editor", COMMENTED)
    page.locator("#validate-status .note.ok").wait_for()
    page.fill('[data-path="models[0].max_num_seqs"]', "4")
    page.select_option('[data-path="models[0].quantize"]', "int8")
    page.fill('[data-path="server.port"]', "8100")
    page.wait_for_function("document.getElementById('yaml-editor').value.includes('port: 8100')")
    page.locator("#validate-status .note.ok").wait_for()
    text = page.input_value("#yaml-editor")
    comments = [line.split("#", 1)[1] for line in COMMENTED.splitlines() if "#" in line]
    assert all(c in text for c in comments), text
    assert "    max_num_seqs: 4      # small batches on CPU" in text and "  port: 8100" in text
    assert yaml.safe_load(text) == {"models": [{"name": "autoglm-demo", "max_num_seqs": 4, "quantize": "int8"}],
                                    "server": {"host": "127.0.0.1", "port": 8100}}
    assert page.inner_text("#yaml-note") == ""  # no rewrite happened
    shoot(page, tmp_path, "config-comments-kept")
    # patchYAML itself on more edits: each result parses to the data with that one change
    cases = [(["models", 0, "name"], "renamed"), (["models", 0, "max_num_seqs"], None),
             (["models", 0, "aliases"], ["a", "b"]), (["gateway", "cache", "enabled"], True),
             (["server", "port"], None), (["server", "ui"], False),
             (["models"], [{"name": "autoglm-demo", "max_num_seqs": 8}, {"name": "two", "source": "autoglm-demo"}])]
    out = page.evaluate("""async ([text, cases]) => { const m = await import('/ui/js/yaml.js');
        return cases.map(([path, value]) => m.patchYAML(text, path, value ?? undefined)); }""", [COMMENTED, cases])
    for (path, value), patched in zip(cases, out):
        assert patched is not None, path
        want = yaml.safe_load(COMMENTED)
        node = want
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        assert yaml.safe_load(patched) == want, (path, patched)
        assert "# where it listens" in patched and "# Deploy file of the ops team" in patched
    w.close()
    assert w.problems == []


def test_resume_an_interrupted_run_from_the_pipelines_page(server, browser, tmp_path, interrupted_run):
    run_key, _ = interrupted_run
    assert httpx.get(f"{server}/admin/runs/{run_key}", headers=AUTH).json()["status"] == "interrupted"
    w = Watched(browser)
    w.open(server, "improve")
    page = w.page
    page.locator("#pipelines-body tr", has_text="credit-tabular").get_by_role("button", name="Open").click()
    page.get_by_role("button", name=f"Resume {run_key}").click()
    page.locator("main .note.ok, main .note.error").first.wait_for(timeout=60_000)
    assert page.locator("main .note.error").count() == 0, page.locator("main .note.error").all_inner_texts()
    page.locator('[data-run-status="finished"]').wait_for(timeout=180_000)
    assert "Resumed run" in page.locator("main .note.ok").first.inner_text()
    run = httpx.get(f"{server}/admin/runs/{run_key}", headers=AUTH).json()
    assert run["status"] == "finished" and run["stages"]["evaluate"]["status"] == "finished"
    assert page.get_by_role("button", name="Resume").count() == 0  # finished: nothing to resume
    shoot(page, tmp_path, "pipelines-resumed")
    wait_exited(run["pid"]) if run.get("pid") else None
    w.close()
    assert w.problems == []
