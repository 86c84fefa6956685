"""The benchmark scripts' shared helper starts a real server per flag value."""
from __future__ import annotations

import httpx

from autoglm.bench.scripts import SERVED_NAME, serve_per_value, variant_parser


def test_serve_per_value_starts_one_server_per_value_with_that_flag(tiny_glm4_dir):
    args = variant_parser("doc", "/tmp/unused.json").parse_args(["--model", str(tiny_glm4_dir), "--quantize", "none",
                                                             "--max-model-len", "512"])

    def measure(base_url):
        models = httpx.get(base_url + "/models", timeout=10).json()["data"]
        return base_url, [m["id"] for m in models]

    got = serve_per_value(args, "--prefill-chunk", [0, 64], measure)
    assert [value for value, _ in got] == [0, 64]
    (url0, ids0), (url1, ids1) = (r for _, r in got)
    assert ids0 == ids1 == [SERVED_NAME]
    assert url0 != url1  # a fresh server (port) each time
