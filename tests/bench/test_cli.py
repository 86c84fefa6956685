"""`autoglm bench` input errors: one line on stderr, non-zero exit, no traceback."""
from __future__ import annotations

import pytest

from autoglm.bench.servers import free_port
from autoglm.cli.main import main


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["bench", *argv])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--concurrency", "0"], "--concurrency must be a positive integer, got 0"),
        (["--num-prompts", "-3"], "--num-prompts must be a positive integer, got -3"),
        (["--max-tokens", "0"], "--max-tokens must be a positive integer"),
    ],
)
def test_bad_numbers(capsys, flags, needle):
    rc, err = _run(capsys, "--base-url", "http://127.0.0.1:9/v1", "--model", "m", *flags)
    assert rc == 2
    assert needle in err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1


def test_bad_url(capsys):
    rc, err = _run(capsys, "--base-url", "localhost:8000", "--model", "m")
    assert rc == 2 and "'localhost:8000' is not an http(s) URL" in err


def test_unreachable_server(capsys):
    port = free_port()
    rc, err = _run(capsys, "--base-url", f"http://127.0.0.1:{port}", "--model", "m", "--quiet")
    assert rc == 2
    assert f"cannot reach the server at http://127.0.0.1:{port}/v1" in err
    assert err.count("\n") == 1


def test_json_into_missing_directory(capsys, tmp_path):
    rc, err = _run(capsys, "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                   "--json", str(tmp_path / "nope" / "out.json"))
    assert rc == 2 and "does not exist" in err
