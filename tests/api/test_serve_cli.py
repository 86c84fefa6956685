"""`autoglm serve` flag parsing and start-up checks (no model is loaded here)."""
from __future__ import annotations

import socket

import pytest

from autoglm.cli.main import build_parser, main
from autoglm.cli.serve import settings_from_args


def test_flags_build_settings():
    args = build_parser().parse_args([
        "serve", "--model", "m", "--quantize", "int8", "--device", "cpu", "--engine", "transformers",
        "--host", "0.0.0.0", "--port", "9001", "--max-model-len", "512", "--max-num-seqs", "4",
        "--max-queue", "7", "--prefill-chunk", "64", "--prefix-cache-tokens", "0", "--request-timeout", "3.5", "--served-model-name", "alias", "--api-key", "k",
        "--log-level", "warning"])
    engine, server = settings_from_args(args)
    assert (engine.model, engine.quantize, engine.device, engine.engine) == ("m", "int8", "cpu", "transformers")
    assert (engine.max_model_len, engine.max_num_seqs, engine.max_queue, engine.request_timeout) == (512, 4, 7, 3.5)
    assert engine.name == "alias" and engine.prefill_chunk == 64 and engine.prefix_cache_tokens == 0
    assert (server.host, server.port, server.api_keys, server.log_level) == ("0.0.0.0", 9001, ["k"], "warning")


def test_defaults():
    engine, server = settings_from_args(build_parser().parse_args(["serve"]))
    assert (engine.model, engine.quantize, engine.device, engine.engine) == ("autoglm-demo", "auto", "auto", "auto")
    assert engine.num_threads is None  # torch's own default
    assert (server.host, server.port, server.api_keys) == ("127.0.0.1", 8000, [])


def test_threads_reach_the_engine_settings_and_a_bad_count_is_refused(capsys):
    engine, _ = settings_from_args(build_parser().parse_args(["serve", "--threads", "1"]))
    assert engine.num_threads == 1
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--threads", "0"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_shutdown_grace_and_request_limits_reach_the_server_settings():
    _, server = settings_from_args(build_parser().parse_args([
        "serve", "--shutdown-grace", "2.5", "--max-request-bytes", "2048", "--max-schema-bytes", "512",
        "--allow-control-tokens"]))
    assert (server.shutdown_grace, server.max_request_bytes, server.max_schema_bytes) == (2.5, 2048, 512)
    assert server.allow_control_tokens is True
    _, default = settings_from_args(build_parser().parse_args(["serve"]))
    assert (default.shutdown_grace, default.allow_control_tokens) == (30.0, False)


@pytest.mark.parametrize("flag,value", [("--port", "0"), ("--port", "70000"), ("--max-num-seqs", "-1"),
                                        ("--quantize", "int3"), ("--request-timeout", "abc"),
                                        ("--prefill-chunk", "-5"), ("--shutdown-grace", "-1"),
                                        ("--max-request-bytes", "10")])
def test_bad_flags_exit_2(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_port_in_use_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "--log-level", "error"])
    err = capsys.readouterr().err
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err


def test_public_host_without_key_warns(capsys):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        main(["serve", "--host", "0.0.0.0", "--port", str(port)])
    assert "without --api-key" in capsys.readouterr().err
