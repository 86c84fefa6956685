"""`autoglm webhooks list|test|deliveries|redeliver` as a real process against a real receiver."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.registry.test_webhooks import Receiver

SECRET = "cli-secret-not-to-print"


def autoglm(home, hooks, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOGLM_HOME": str(home), "AUTOGLM_WEBHOOKS": str(hooks), "HOOK_SECRET": SECRET}
    env.pop("AUTOGLM_STATE_URL", None)
    return subprocess.run([sys.executable, "-m", "autoglm", "webhooks", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_list_test_deliveries_and_a_bad_id(tmp_path):
    receiver = Receiver()
    try:
        hooks = tmp_path / "hooks.yaml"
        hooks.write_text(f"outbound:\n  - name: ops\n    url: {receiver.url}\n    secret: ${{HOOK_SECRET}}\n"
                         "    events: [deploy]\n")
        listed = autoglm(tmp_path, hooks, "list")
        assert listed.returncode == 0 and "ops" in listed.stdout and "signed" in listed.stdout
        assert SECRET not in listed.stdout + listed.stderr

        sent = autoglm(tmp_path, hooks, "test", "ops", "--json")
        assert sent.returncode == 0, sent.stderr
        (row,) = json.loads(sent.stdout)
        assert (row["status"], row["attempts"], row["event"]) == ("delivered", 1, "webhook.test")
        assert len(receiver.requests) == 1 and receiver.requests[0][0]["x-mlflow-delivery-id"] == row["id"]

        log = autoglm(tmp_path, hooks, "deliveries", "--status", "delivered")
        assert row["id"] in log.stdout and SECRET not in log.stdout

        bad = autoglm(tmp_path, hooks, "redeliver", "no-such-id")
        assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
            "error: no webhook delivery 'no-such-id'; `autoglm webhooks deliveries` lists them"]
    finally:
        receiver.close()
