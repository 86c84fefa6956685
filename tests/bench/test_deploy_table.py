"""`autoglm bench deploy` and the Dockerfiles under deploy/docker.

The table test starts real ``autoglm serve`` processes on the demo model (one per engine) and checks
the rows it prints and writes. The planning test checks which pairs are skipped, without servers. No
Docker engine runs on CI, so the Dockerfiles are parsed, not built: every COPY source exists and is
inside the build context, the CMD parses with the real ``autoglm serve`` parser, the torch pin matches
constraints.txt, the user is not root, and the health check asks /health on the exposed port.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

from autoglm.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
HAS_LLAMACPP = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "gguf"))


# --------------------------------------------------------------------------------------------------
# the table, measured


def test_deploy_table_on_demo(autoglm_home, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    out = tmp_path / "deploy.json"
    rc = main(["bench", "deploy", "autoglm-demo", "--engines", "transformers,llamacpp", "--precisions", "int8",
               "--concurrency", "1,4", "--max-tokens", "8", "--num-prompts", "4", "--input-len", "16",
               "--device", "cpu", "--quiet", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    text = captured.out
    assert "| engine | precision | start-up s | RSS MiB warm | RSS MiB loaded | tok/s c=1 | tok/s c=4 |" in text
    assert "random weights" in text and "quality" in text
    assert "[1/" in captured.err and "healthy after" in captured.err  # progress lines

    report = json.loads(out.read_text())
    rows = {(r["engine"], r["precision"]): r for r in report["rows"]}
    assert list(rows) == [("transformers", "int8"), ("llamacpp", "int8")]
    measured = [rows[("transformers", "int8")]]
    if HAS_LLAMACPP:
        measured.append(rows[("llamacpp", "int8")])
        assert rows[("llamacpp", "int8")]["gguf"] in ("q8_0 converted", "q8_0 cached")
    else:
        assert rows[("llamacpp", "int8")]["status"] == "skipped"
        assert "llamacpp" in rows[("llamacpp", "int8")]["reason"]
    for row in measured:
        assert row["status"] == "ok", row
        assert 0 < row["startup_s"] < 300
        assert row["rss_warm_mib"] > 50 and row["rss_loaded_mib"] > 50  # a python + torch/llama.cpp process
        assert set(row["tok_s"]) == {"1", "4"} and all(v > 0 for v in row["tok_s"].values())
        assert row["failed_requests"] == 0 and row["log_path"] == ""  # a good run leaves no log behind
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row['engine']} | int8 |"))
        assert f"{row['tok_s']['4']:.1f}" in line and f"{row['startup_s']:.1f}" in line


def test_server_that_does_not_start_is_a_failed_row(autoglm_home, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    out = tmp_path / "deploy.json"
    rc = main(["bench", "deploy", "autoglm-demo", "--engines", "transformers", "--precisions", "fp32",
               "--max-model-len", "100000000", "--device", "cpu", "--quiet", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 1
    [row] = json.loads(out.read_text())["rows"]
    assert row["status"] == "failed" and row["startup_s"] is None and row["tok_s"] == {}
    assert "server did not start: error: max_model_len 100000000 exceeds" in row["reason"]
    assert Path(row["log_path"]).is_file()  # kept, because it failed
    Path(row["log_path"]).unlink()
    assert "| transformers | fp32 | — |" in text and "failed: server did not start" in text


# --------------------------------------------------------------------------------------------------
# planning and flags, no servers


def test_plan_skips_what_cannot_run_here():
    from autoglm.bench.deploy import DeployBenchConfig, plan_combos
    from autoglm.quantization.device import DeviceInfo

    cpu = DeviceInfo(kind="cpu", name="test", total_bytes=8 << 30, free_bytes=4 << 30)
    cfg = DeployBenchConfig(model="m", precisions=("fp32", "fp16", "bf16", "int4"))
    combos = {(c.engine, c.precision): c.skip for c in plan_combos(cfg, cpu)}
    assert combos[("transformers", "fp32")] == "" and combos[("transformers", "fp16")] == ""
    assert "CUDA" in combos[("transformers", "int4")]
    assert combos[("llamacpp", "int4")] == ""  # q4_k_m runs on a CPU
    assert combos[("llamacpp", "bf16")] == "runs the same f16 GGUF as fp16"
    missing = plan_combos(cfg, cpu, llamacpp_missing="needs llama-cpp-python: pip install 'autoglm[llamacpp]'")
    assert all("autoglm[llamacpp]" in c.skip for c in missing if c.engine == "llamacpp")


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--engines", "transformers,vllm2"], "--engines: unknown engine 'vllm2'; use a comma list of transformers"),
        (["--precisions", "int3"], "--precisions: unknown precision 'int3'"),
        (["--concurrency", "1,x"], "--concurrency: 'x' is not a whole number"),
        (["--concurrency", "0"], "every level must be a positive integer, got 0"),
        (["--max-tokens", "-1"], "--max-tokens must be a positive integer, got -1"),
        (["--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda, mps"),
    ],
)
def test_bad_flags_one_line(capsys, flags, needle):
    rc = main(["bench", "deploy", "autoglm-demo", *flags])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_plain_bench_still_needs_base_url(capsys):
    rc = main(["bench", "--model", "m"])
    err = capsys.readouterr().err
    assert rc == 2 and "--base-url is required" in err and "autoglm bench deploy" in err


# --------------------------------------------------------------------------------------------------
# Dockerfiles (parsed, not built)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _excluded(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for a top-level name: the last matching pattern wins; '!' re-includes."""
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def serve_help() -> str:
    """What `autoglm serve --help` prints."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["serve", "--help"])
    return buf.getvalue()


@pytest.mark.parametrize("name,base", [("Dockerfile.cpu", "python:3.11-slim"), ("Dockerfile.cuda", "nvidia/cuda:")])
def test_dockerfile(name, base, serve_help):
    path = DOCKER / name
    ins = _instructions(path)
    args = {k: v for k, v in (a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)}
    froms = [a.split()[0] for w, a in ins if w == "FROM"]
    images = [args[f[2:-1]] if f.startswith("${") else f for f in froms]
    assert len(images) == 2 and all(img.startswith(base) for img in images)  # build stage, runtime stage
    if base.startswith("nvidia/"):
        assert "runtime" in images[-1]

    # torch: the pinned release, from PyTorch's own index, before `pip install -c constraints.txt`
    pin = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == pin
    runs = [a for w, a in ins if w == "RUN"]
    torch_i = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r and "--index-url" in r)
    pkg_i = next(i for i, r in enumerate(runs) if "pip install -c constraints.txt" in r)
    assert torch_i < pkg_i

    # every COPY source is in the repository and in the build context
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    copies = [shlex.split(a) for w, a in ins if w == "COPY"]
    local = [c for c in copies if not any(x.startswith("--from=") for x in c)]
    assert local and len(local) < len(copies)  # sources copied in, the venv copied between stages
    for c in local:
        for src in [x for x in c if not x.startswith("--")][:-1]:
            assert (ROOT / src).exists(), f"{name}: COPY source {src} does not exist"
            assert not _excluded(src, ignore), f"{name}: COPY source {src} is excluded by .dockerignore"

    # a non-root user runs the server, with the store in a volume
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(a for w, a in ins if w == "ENV")
    assert "AUTOGLM_HOME=/data" in env and any('"/data"' in a for w, a in ins if w == "VOLUME")

    # CMD: real `autoglm serve` flags, listening on the exposed port, checked by the health check
    cmd = json.loads(next(a for w, a in reversed(ins) if w == "CMD"))
    assert cmd[:2] == ["autoglm", "serve"]
    for flag in (x for x in cmd if x.startswith("--")):
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", serve_help), f"{flag} is not in `autoglm serve --help`"
    parsed = build_parser().parse_args(cmd[1:])
    assert parsed.host == "0.0.0.0" and parsed.model == "autoglm-demo"
    expose = [a for w, a in ins if w == "EXPOSE"]
    assert expose == [str(parsed.port)]
    health = next(a for w, a in ins if w == "HEALTHCHECK")
    assert f"127.0.0.1:{parsed.port}/health" in health
