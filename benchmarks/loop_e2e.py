"""The closed loop end to end on ``autoglm-demo``, timed, with a load generator running throughout.

In a fresh ``AUTOGLM_HOME``:

0. setup (not in the loop's time): a LoRA pipeline (``merge: false``: its output is an adapter over the
   demo model) runs once on ``examples/data/chat.jsonl`` and its version 1 becomes ``@champion``; ``autoglm
   deploy`` serves ``models:/demo-loop@champion`` (capture on, an ``app`` key, the admin key);
1. several openai SDK clients stream chat completions back to back until the end (the load);
2. **the loop** (timed): feedback is posted through the openai SDK (chats, then ``POST /v1/feedback``
   with corrections, via ``client.post``), ``autoglm loop run deploy.yaml --once --redeploy URL`` fires
   its ``feedback_count`` trigger, exports the feedback, trains version 2 (LoRA), scores candidate and
   champion on the held-out rows, promotes it, and the server swaps to it (the adapter built on the base
   already in memory); the loop's time ends when replies carry ``x-autoglm-model-version: 2``;
3. for comparison, a full reload of the same version from disk (the adapter merged into a checkpoint,
   swapped in through the same API) and a swap back by adapter.

Prints the loop's time, each swap's load time and mode, and the load's request and failure counts::

    python benchmarks/loop_e2e.py            # --clients 3 --feedback 24 --steps 8
    python benchmarks/loop_e2e.py --swap-times autoglm-demo-100m   # adapter vs full reload only, in-process
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin-" + secrets.token_hex(8)
MODEL = "demo-loop"

PIPELINE = """\
name: demo-loop
seed: 0
data: {{train: {data}, valid_fraction: 0.1}}
preprocess: {{max_length: 64}}
train:
  trainer: causal-lm
  model: autoglm-demo
  method: lora
  lora: {{r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}}
  merge: false
  batch_size: 4
  max_steps: {steps}
  lr: 3.0e-3
  guards: [{{type: explosion}}]
evaluate: {{}}
register: {{name: {model}, alias: challenger}}
"""

DEPLOY = """\
models:
  - name: demo
    source: models:/{model}@champion
    quantize: none
    max_num_seqs: 8
gateway:
  admin_key: ${{AUTOGLM_ADMIN_KEY}}
  state_store: {home}/state.db
  cache: {{backend: none}}
  keys: [{{name: app}}]
  capture: {{enabled: true}}
server: {{port: {port}, log_level: warning, access_log: "off"}}
improve:
  pipeline: pipeline.yaml
  model: {model}
  triggers: [{{type: feedback_count, count: {count}}}]
  export: {{format: sft, holdout_fraction: 0.25}}
  gate: {{metric: eval_loss, margin: 0.0}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run([sys.executable, "-m", "autoglm", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"autoglm {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


class Load:
    """``clients`` threads, each its own openai client, streaming chat completions back to back."""

    def __init__(self, base_url: str, key: str, clients: int, max_tokens: int = 16):
        import openai

        self.clients = [openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
                        for _ in range(clients)]
        self.max_tokens = max_tokens
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        client, n = self.clients[i], 0
        while not self._stop.is_set():
            n += 1
            try:
                with client.chat.completions.with_streaming_response.create(
                        model="demo", stream=True, max_tokens=self.max_tokens, temperature=0.7,
                        messages=[{"role": "user", "content": f"load {i}.{n}: say something"}]) as raw:
                    version = raw.headers.get("x-autoglm-model-version", "-")
                    finish = None
                    for chunk in raw.parse():
                        for choice in chunk.choices:
                            finish = choice.finish_reason or finish
                if finish not in ("stop", "length"):
                    raise RuntimeError(f"stream ended without a finish reason ({finish!r})")
                with self._lock:
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                with self._lock:
                    self.failed += 1
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:300])

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=300)


def swap(url: str, source: str) -> dict:
    r = httpx.post(f"{url}/admin/deployments/demo/swap", json={"source": source},
                   headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
    if r.status_code != 200:
        sys.exit(f"swap to {source} failed: {r.status_code} {r.text}")
    return r.json()


def swap_times(model: str, repeats: int) -> None:
    """In one process, no HTTP: swap a served ``model`` (fp32) to a LoRA adapter over it, by a full reload
    of the merged checkpoint from disk and by building it on the loaded base; each time is load + health check."""
    import asyncio
    import statistics

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autoglm.config import EngineSettings
    from autoglm.deploy.live import Deployments
    from autoglm.engine.base import create_engine
    from autoglm.gateway.router import Router
    from autoglm.hub.adapters import merged_adapter
    from autoglm.hub.resolve import resolve_model

    home = Path(tempfile.mkdtemp(prefix="autoglm-swap-times-"))
    settings = EngineSettings(model=model, served_model_name="m", quantize="none", store_dir=home, max_num_seqs=4)
    base = resolve_model(model, settings, progress=False).path
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    adapter = home / "adapter"
    peft_model.save_pretrained(adapter)
    del peft_model
    merged = merged_adapter(adapter, home, lambda b: resolve_model(b, settings, progress=False).path)

    async def run() -> tuple[list[float], list[float]]:
        router = Router.from_engines({"m": create_engine(settings)})
        await router.routes[0].backends[0].engine.start()
        dep = Deployments(router)
        full, fast = [], []
        try:
            for _ in range(repeats):
                r = await dep.swap("m", str(merged))
                assert r["mode"] == "full"
                full.append(r["load_s"])
                r = await dep.swap("m", str(adapter))
                assert r["mode"] == "adapter", r
                fast.append(r["load_s"])
                await dep.swap("m", str(base))  # back to the plain base for the next round
        finally:
            for engine in router.local_engines():
                await engine.shutdown()
        return full, fast

    try:
        full, fast = asyncio.run(run())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"swap load of a LoRA version of {model} (fp32; median of {repeats}): full reload from disk "
          f"{statistics.median(full):.2f}s, adapter on the loaded base {statistics.median(fast):.2f}s")
    print(f"RESULT model={model} full_s={statistics.median(full):.2f} adapter_s={statistics.median(fast):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="streaming clients of the load generator")
    ap.add_argument("--feedback", type=int, default=24, help="rated exchanges posted (the trigger's count)")
    ap.add_argument("--steps", type=int, default=8, help="LoRA training steps of each version")
    ap.add_argument("--keep", action="store_true", help="keep the AUTOGLM_HOME (its path is printed)")
    ap.add_argument("--swap-times", metavar="MODEL", help="only compare full-reload and adapter swap load times "
                    "for MODEL in one process (e.g. autoglm-demo-100m)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of --swap-times")
    args = ap.parse_args()
    if args.swap_times:
        swap_times(args.swap_times, args.repeats)
        return

    import openai

    home = Path(tempfile.mkdtemp(prefix="autoglm-loop-e2e-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AUTOGLM_HOME": str(home), "AUTOGLM_ADMIN_KEY": ADMIN, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    (home / "pipeline.yaml").write_text(PIPELINE.format(data=ROOT / "examples" / "data" / "chat.jsonl",
                                                        steps=args.steps, model=MODEL))
    (home / "deploy.yaml").write_text(DEPLOY.format(model=MODEL, home=home, port=port, count=args.feedback))
    server = None
    load = None
    try:
        t_setup = time.monotonic()
        print("setup: training version 1 and making it @champion ...", flush=True)
        cli(["pipeline", "run", str(home / "pipeline.yaml"), "--quiet"], env)
        cli(["models", "promote", MODEL, "1"], env)
        log = open(home / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(home / "deploy.yaml")], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            text = (home / "server.log").read_text(errors="replace")
            m = re.search(r"created API key 'app': (agl-\S+)", text)
            if m and "serving 1 model" in text:
                key = m.group(1)
                break
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{text[-3000:]}")
            time.sleep(0.3)
        print(f"setup: {time.monotonic() - t_setup:.1f}s (train v1, promote, serve models:/{MODEL}@champion)",
              flush=True)

        load = Load(url + "/v1", key, args.clients)
        load.start()
        time.sleep(2.0)

        t0 = time.monotonic()
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        answers = [("What is 2 + 3?", "2 + 3 = 5."), ("Name a colour.", "Blue is a colour."),
                   ("Say hello.", "Hello! How can I help you today?"), ("What is the capital of France?",
                                                                         "The capital of France is Paris.")]
        for i in range(args.feedback):
            q, a = answers[i % len(answers)]
            reply = client.chat.completions.create(model="demo", max_tokens=8, temperature=0.7,
                                                   messages=[{"role": "user", "content": f"{q} ({i})"}])
            client.post("/feedback", cast_to=object, body={"id": reply.id, "rating": -1.0, "correction": a})
        t_feedback = time.monotonic() - t0
        print(f"loop: {args.feedback} exchanges rated with corrections in {t_feedback:.1f}s", flush=True)

        out = cli(["loop", "run", str(home / "deploy.yaml"), "--once", "--redeploy", url], env)
        t_loop = time.monotonic() - t0
        for line in out.splitlines():
            print("  " + line, flush=True)
        if "promoted" not in out:
            sys.exit("the loop did not promote (see above); nothing to swap")
        deadline = time.monotonic() + 60
        while True:  # the swap is done when replies come from version 2
            raw = client.chat.completions.with_raw_response.create(
                model="demo", max_tokens=1, messages=[{"role": "user", "content": "which version?"}])
            if raw.headers.get("x-autoglm-model-version") == "2":
                break
            if time.monotonic() > deadline:
                sys.exit("replies do not come from version 2 a minute after the loop")
            time.sleep(0.2)
        total = time.monotonic() - t0
        entry = httpx.get(f"{url}/admin/deployments", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"][0]
        print(f"loop: feedback -> trigger -> LoRA retrain -> evaluate -> promote -> swap: {total:.1f}s "
              f"(loop run {t_loop - t_feedback:.1f}s); serving {entry['source']} v{entry['version']}", flush=True)

        # full reload of the same version vs building it on the loaded base
        from autoglm.config import EngineSettings
        from autoglm.hub.adapters import merged_adapter
        from autoglm.hub.resolve import resolve_model

        adapter = home / "registry" / MODEL / "v2"
        settings = EngineSettings(store_dir=home)
        merged = merged_adapter(adapter, home, lambda base: resolve_model(base, settings, progress=False).path)
        full = swap(url, str(merged))
        back = swap(url, f"models:/{MODEL}@champion")
        print(f"swap load: full reload from disk {full['load_s']:.2f}s ({full['mode']}), adapter on the loaded "
              f"base {back['load_s']:.2f}s ({back['mode']})", flush=True)
        time.sleep(1.0)
    finally:
        if load is not None:
            load.stop()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"home kept: {home}")
    print(f"load: {load.ok} streamed requests, {load.failed} failed; by version header: "
          f"{json.dumps(load.versions, sort_keys=True)}")
    for f in load.failures[:5]:
        print(f"  failure: {f}")
    print(f"RESULT loop_seconds={total:.1f} failed_requests={load.failed} requests={load.ok}")


if __name__ == "__main__":
    main()
