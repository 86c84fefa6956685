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


def test_int_list_reads_positive_integers_and_names_the_flag_otherwise():
    import pytest

    from autoglm.bench.scripts import int_list
    from autoglm.errors import ConfigError

    assert int_list("1, 4,16,", "--concurrency") == [1, 4, 16]
    with pytest.raises(ConfigError, match=r"^--batch '1,x' is not a comma-separated list of integers; use e.g. 1,16$"):
        int_list("1,x", "--batch", "1,16")
    for bad in ("", "0,4", "-1"):
        with pytest.raises(ConfigError, match=r"must list positive integers, e\.g\. 1,4,16$"):
            int_list(bad, "--concurrency")
