"""A workload grid: our server against its peer in every cell, worst ratio first.

The cells sweep prompt length (~16 to ~2,000 tokens: ``--input-lens`` in words), output length
(16 to 512), ``ignore_eos`` on/off, distinct prompts vs prompts repeated across concurrency levels
(the same prompts first at c=1, then 4, then 16), and concurrency 1, 4, 16. One run starts every
server once (ours with the response cache off, ``--cache none``; prefix caches on for both, as
``llama-server`` keeps its slots' prompts), runs each cell with the ``autoglm bench`` client on every
server back to back (so load that drifts on a shared machine hits both sides of a cell alike), and
writes a Markdown table with both sides' output tokens/s, the ratio, the target where the issue sets
one, and whether every request was served in full, sorted worst ratio first.

On a shared 2-core VM one pass of a cell moves by +-20 % run to run, more than most targets' margins,
so ``--rounds R`` runs every cell R times, the two sides in alternating order (ours first in even
rounds, the peer first in odd ones), each round of a distinct cell with prompts nobody sent before.
A cell's ratio is the median of its R per-round ratios, shown with their range; a target is met when
that median reaches it. ``--quick`` runs 5 rounds unless told otherwise, the whole grid 1. The JSON
record (atomically) and the Markdown table (marked partial) are rewritten after every cell:
``--resume`` after a kill keeps the cells it holds and runs the rest (a repeated group cut short
runs again whole: the restarted servers hold none of its prompts). Two peers:

* ``--peer transformers`` (default): ``autoglm serve --quantize Q`` for each Q of ``--quantize``
  (default ``none,auto``) against ``transformers serve --continuous-batching`` (targets at c=16:
  1.3x at the same precision, 3x for ``auto``). ``transformers serve`` takes no ``ignore_eos``: it
  may stop at EOS in the ``ignore_eos`` cells (the token counts show it; tokens/s stays comparable).
* ``--peer llama-server --llama-server PATH``: ``autoglm serve --engine llamacpp`` against llama.cpp's
  ``llama-server`` on the same GGUF (``--gguf-type``; targets 1.0x at c=16, 0.95x at c=1).

    .venv/bin/python benchmarks/serve_grid.py --quick                  # 4 cells x 5 rounds, minutes
    .venv/bin/python benchmarks/serve_grid.py --quick --omp-threads 1  # on a shared, loaded CPU
    .venv/bin/python benchmarks/serve_grid.py                          # the whole grid (108 cells; hours on CPU)
    .venv/bin/python benchmarks/serve_grid.py --resume                 # after a kill: the cells not measured yet
    .venv/bin/python benchmarks/serve_grid.py --peer llama-server --llama-server /tmp/llama/bin/llama-server

Reuses the servers' command lines of ``compare_serve.py`` and ``llamacpp_vs_server.py``; knows
nothing of either server's internals. The demo models' weights are random (their text is noise).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

SERVED_NAME = "bench-model"
DEMO = "autoglm-demo-100m"
INPUT_LENS = (12, 200, 1500)  # words: ~16, ~260, ~2,000 tokens with the demo tokenizer and chat template
OUTPUTS = (16, 128, 512)
CONCURRENCY = (1, 4, 16)


@dataclass(frozen=True)
class Cell:
    """One workload: prompt words, output tokens, ignore_eos, prompt mode and concurrency."""

    input_len: int
    max_tokens: int
    ignore_eos: bool
    mode: str  # "distinct" | "repeated"
    concurrency: int

    @property
    def label(self) -> str:
        return (f"in {self.input_len}w, out {self.max_tokens}, {'ignore_eos' if self.ignore_eos else 'eos'}, "
                f"{self.mode}, c={self.concurrency}")

    def num_prompts(self, quick: bool = False) -> int:
        return max(2, self.concurrency) if quick else max(4, 2 * self.concurrency)


def grid_cells(quick: bool = False, input_lens: Iterable[int] = INPUT_LENS, outputs: Iterable[int] = OUTPUTS,
               concurrency: Iterable[int] = CONCURRENCY) -> list[Cell]:
    """Every cell in run order: for one (input, output, eos, mode), concurrency ascending, so a
    repeated prompt is first seen at the lowest concurrency. ``quick``: three cells that cover the
    short/long prompt, eos on/off, distinct/repeated and c=1/16 corners."""
    if quick:
        return [Cell(12, 64, False, "distinct", 1), Cell(12, 64, True, "repeated", 1),
                Cell(12, 64, True, "repeated", 16), Cell(200, 16, True, "distinct", 4)]
    return [Cell(i, o, e, m, c) for i, o, e, m, c in itertools.product(
        input_lens, outputs, (True, False), ("distinct", "repeated"), sorted(concurrency))]


def prompts_for(cell: Cell, index: int, quick: bool = False, round_: int = 0) -> list[str]:
    """Repeated cells share one prompt list per (input, output, eos) across concurrencies and
    rounds; distinct cells get prompts nobody has sent before (seeded by the cell's position in the
    grid and the round)."""
    from autoglm.bench.prompts import make_prompts

    n = cell.num_prompts(quick)
    if cell.mode == "repeated":
        seed = 1_000_000 + cell.input_len * 1000 + cell.max_tokens + (1 if cell.ignore_eos else 0)
        return make_prompts(max(n, 32), cell.input_len, seed=seed)[:n]
    return make_prompts(n, cell.input_len, seed=round_ * 1000 + index + 1)


def target(peer: str, ours: str, concurrency: int) -> float | None:
    """The issue's target ratio (ours / peer output tok/s) for a cell, or None where it sets none."""
    if peer == "transformers serve":
        if concurrency != 16:
            return None
        return 3.0 if ours.endswith("auto") else 1.3
    if peer == "llama-server":
        return {16: 1.0, 1: 0.95}.get(concurrency)
    return None


def pair_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (ours variant, cell) with the peer's result of the same cell beside it.

    ``results``: dicts with ``side`` ("peer" / "ours"), ``server`` (its label), ``cell`` (a dict
    of :class:`Cell` fields), ``round`` (0 when absent), ``metrics`` (``output_throughput``,
    ``completed``, ``failed``, ``total_output_tokens``) and ``sent``. Each round of ours is paired with
    the peer's same round; the row's ratio is the median of the per-round ratios (``ratio_min`` /
    ``ratio_max`` their range, ``rounds`` how many), tokens/s the medians of each side. The ratio is
    None when the peer is missing or produced nothing; a side is served in full only if it was in
    every round.
    """
    peers = {(_key(r["cell"]), r.get("round", 0)): r for r in results if r["side"] == "peer"}
    groups: dict[tuple, list[tuple[dict[str, Any], dict[str, Any] | None]]] = {}
    for r in results:
        if r["side"] == "ours":
            peer = peers.get((_key(r["cell"]), r.get("round", 0)))
            groups.setdefault((r["server"], _key(r["cell"])), []).append((r, peer))
    rows = []
    for (server, _), pairs in groups.items():
        cell = Cell(**pairs[0][0]["cell"])
        theirs = [p for _, p in pairs if p is not None]
        ratios = [o["metrics"]["output_throughput"] / p["metrics"]["output_throughput"]
                  for o, p in pairs if p is not None and p["metrics"]["output_throughput"]]
        ratio = statistics.median(ratios) if ratios else None
        peer = theirs[0]["server"] if theirs else None
        goal = target(peer, server, cell.concurrency) if peer else None
        rows.append({"cell": cell, "ours": server, "peer": peer,
                     "ours_tok_s": statistics.median(o["metrics"]["output_throughput"] for o, _ in pairs),
                     "peer_tok_s": (statistics.median(p["metrics"]["output_throughput"] for p in theirs)
                                    if theirs else None),
                     "ratio": ratio, "ratio_min": min(ratios) if ratios else None,
                     "ratio_max": max(ratios) if ratios else None, "rounds": len(ratios), "target": goal,
                     "meets": None if goal is None or ratio is None else ratio >= goal,
                     "ours_full": all(_full(o, cell) for o, _ in pairs),
                     "peer_full": all(_full(p, cell) for p in theirs) if theirs else None,
                     "ours_tokens": sum(o["metrics"]["total_output_tokens"] for o, _ in pairs),
                     "peer_tokens": sum(p["metrics"]["total_output_tokens"] for p in theirs) if theirs else None})
    return rows


def _key(cell: dict[str, Any]) -> tuple:
    return tuple(cell[k] for k in ("input_len", "max_tokens", "ignore_eos", "mode", "concurrency"))


def _full(result: dict[str, Any], cell: Cell) -> bool:
    """Every request completed (and, with ignore_eos honoured, every one produced max_tokens)."""
    m = result["metrics"]
    ok = m["completed"] == result["sent"] and not m["failed"]
    if ok and cell.ignore_eos and result.get("ignore_eos_sent", True):
        ok = m["total_output_tokens"] >= result["sent"] * cell.max_tokens
    return ok


def markdown(rows: list[dict[str, Any]]) -> str:
    """The grid, worst ratio first (rows with no ratio last), with the target and full-service marks."""
    ordered = sorted(rows, key=lambda r: (r["ratio"] is None, r["ratio"] if r["ratio"] is not None else 0.0))
    out = ["| cell | ours | peer | ours tok/s | peer tok/s | ratio | target | served in full (ours/peer) "
           "| ratio range (rounds) |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in ordered:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        goal = "-" if r["target"] is None else f"{r['target']:.2f}x {'ok' if r['meets'] else 'MISSED'}"
        peer_tps = f"{r['peer_tok_s']:.1f}" if r["peer_tok_s"] is not None else "-"
        full = f"{_yes(r['ours_full'])}/{_yes(r['peer_full'])}"
        spread = (f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} ({r['rounds']})" if r.get("rounds", 0) > 1
                  else "-")
        out.append(f"| {r['cell'].label} | {r['ours']} | {r['peer'] or '-'} | {r['ours_tok_s']:.1f} | {peer_tps} "
                   f"| {ratio} | {goal} | {full} | {spread} |")
    return "\n".join(out)


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


# --------------------------------------------------------------------------------------------------
# running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few cells for day-to-day use")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells an interrupted run of the same grid saved in --json, run the rest")
    p.add_argument("--rounds", type=int, default=None,
                   help="runs of every cell, the sides in alternating order; the median ratio counts "
                        "(default 5 with --quick, else 1)")
    p.add_argument("--peer", choices=("transformers", "llama-server"), default="transformers")
    p.add_argument("--model", default=DEMO, help=f"demo model name or model directory (default {DEMO})")
    p.add_argument("--quantize", default="none,auto", help="our --quantize values, one server each (transformers peer)")
    p.add_argument("--gguf-type", default="q8_0", help="GGUF type for the llama-server peer (default q8_0)")
    p.add_argument("--llama-server", default=None, help="path of the llama-server binary")
    p.add_argument("--input-lens", default=",".join(map(str, INPUT_LENS)), help="prompt lengths in words")
    p.add_argument("--outputs", default=",".join(map(str, OUTPUTS)), help="output lengths (max_tokens)")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--max-model-len", type=int, default=4096, help="context per sequence for both (default 4096)")
    p.add_argument("--cb-num-blocks", type=int, default=256, help="transformers serve KV blocks of 256 tokens")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-server / llamacpp threads")
    p.add_argument("--omp-threads", type=int, default=0,
                   help="OMP_NUM_THREADS for both servers (default: unset; 1 on a shared, loaded CPU, where torch's "
                        "threads wait for each other)")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--json", dest="json_out", default="benchmarks/results/serve_grid.json")
    p.add_argument("--markdown", dest="md_out", default="benchmarks/results/serve_grid.md")
    return p.parse_args(argv)



@dataclass
class Side:
    """One server of the run: which side it is, its label, command line and how to talk to it."""

    side: str  # "ours" | "peer"
    label: str
    cmd: list[str]
    port: int
    model_name: str
    send_ignore_eos: bool
    env: dict[str, str] | None = None


def done_cells(results: list[dict[str, Any]], sides: list[str], rounds: int,
               cells: list[Cell] | None = None) -> set[tuple]:
    """The cells (as :func:`_key` tuples) that ``results`` hold every round of on every side.

    With the grid's ``cells``, a repeated cell counts only when every cell of its group (same
    input, output and eos; the concurrencies in order) is done: a resumed run starts its servers
    cold, so a group cut short runs again from its lowest concurrency, which sends its prompts
    first, as in an uninterrupted run."""
    have = {(_key(r["cell"]), r["server"], r.get("round", 0)) for r in results}
    done = {_key(r["cell"]) for r in results}
    done = {c for c in done if all((c, s, i) in have for s in sides for i in range(rounds))}
    for cell in cells or []:
        key = _key(asdict(cell))
        if cell.mode == "repeated" and key not in done:
            done = {c for c in done if c[:4] != key[:4]}
    return done


def run_grid(sides: list[Side], cells: list[Cell], args: argparse.Namespace,
             earlier: list[dict[str, Any]] | None = None,
             save: Any = None) -> list[dict[str, Any]]:
    """Start every server, then run each cell on each server back to back: load that drifts during
    a long run (a shared machine) then hits both sides of a cell alike instead of one whole side.

    ``earlier``: results of an interrupted run of the same grid; the cells they hold in full are
    kept and not run again. ``save(results)`` is called after every finished cell."""
    from contextlib import ExitStack

    from autoglm.bench.client import BenchConfig, run_benchmark
    from autoglm.bench.servers import ServerProcess

    finished = done_cells(earlier or [], [s.label for s in sides], args.rounds, cells)
    out = [r for r in (earlier or []) if _key(r["cell"]) in finished]
    todo = [(i, c) for i, c in enumerate(cells) if _key(asdict(c)) not in finished]
    if finished:
        print(f"[grid] resuming: {len(cells) - len(todo)} of {len(cells)} cells already measured", flush=True)
    with ExitStack() as stack:
        servers = []
        for side in sides:
            print(f"[{side.label}] starting: {' '.join(side.cmd)}", flush=True)
            t0 = time.perf_counter()
            srv = stack.enter_context(ServerProcess(side.cmd, side.port, startup_timeout=args.startup_timeout,
                                                    name=side.label, env=side.env))
            print(f"[{side.label}] healthy after {time.perf_counter() - t0:.0f}s; log {srv.log_path}", flush=True)
            servers.append(srv)
        pairs = list(zip(sides, servers))
        warm = True  # the first cell this run measures warms every (fresh) server up first
        for index, cell in todo:
            for round_ in range(args.rounds):
                prompts = prompts_for(cell, index, args.quick, round_)
                for side, srv in (pairs if round_ % 2 == 0 else pairs[::-1]):
                    ignore_eos = cell.ignore_eos and side.send_ignore_eos
                    cfg = BenchConfig(base_url=srv.base_url, model=side.model_name, num_prompts=len(prompts),
                                      concurrency=cell.concurrency, max_tokens=cell.max_tokens,
                                      input_len=cell.input_len, prompts=prompts, ignore_eos=ignore_eos,
                                      warmup=warm, request_timeout=3600.0, progress=False)
                    m = run_benchmark(cfg)
                    which = f" (round {round_ + 1}/{args.rounds})" if args.rounds > 1 else ""
                    print(f"[{side.label}] {cell.label}{which}: "
                          f"{m.completed}/{len(prompts)} ok, {m.total_output_tokens} tokens, "
                          f"{m.output_throughput:.1f} tok/s", flush=True)
                    out.append({"side": side.side, "server": side.label, "cell": asdict(cell), "round": round_,
                                "sent": len(prompts), "ignore_eos_sent": ignore_eos, "metrics": m.to_dict()})
                warm = False
            if save is not None:
                save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    from autoglm.bench.scripts import int_list, write_record
    from autoglm.bench.servers import autoglm_serve_command, free_port, transformers_serve_command
    from autoglm.errors import ConfigError

    args = parse_args(argv)
    if args.rounds is None:
        args.rounds = 5 if args.quick else 1
    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds} must be at least 1")
    cells = grid_cells(args.quick, int_list(args.input_lens, "--input-lens", "12,200,1500"),
                       int_list(args.outputs, "--outputs", "16,128,512"), int_list(args.concurrency, "--concurrency"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' command lines
    # every server gets a fresh store: keys or state another run leaves in the default one (it is shared)
    # must not turn on authentication or change routing in the middle of a grid
    home = tempfile.mkdtemp(prefix="autoglm-serve-grid-")
    omp = {"AUTOGLM_HOME": home, **({"OMP_NUM_THREADS": str(args.omp_threads)} if args.omp_threads else {})}
    print(f"[grid] {len(cells)} cells x {args.rounds} round(s), peer {args.peer}, model {args.model}", flush=True)
    sides: list[Side] = []
    if args.peer == "transformers":
        model_dir = _model_dir(args.model)
        for q in [q.strip() for q in args.quantize.split(",") if q.strip()]:
            port = free_port()
            cmd = autoglm_serve_command(str(model_dir), port, extra=[
                "--quantize", q, "--device", "cpu", "--served-model-name", SERVED_NAME, "--cache", "none",
                "--max-model-len", str(args.max_model_len), "--max-num-seqs", str(max(c.concurrency for c in cells)),
                "--access-log", "off", "--log-level", "warning"])
            sides.append(Side("ours", f"autoglm serve {q}", cmd, port, SERVED_NAME, True, omp))
        port = free_port()
        cmd = transformers_serve_command(model_dir, port, extra=["--cb-num-blocks", str(args.cb_num_blocks)])
        sides.append(Side("peer", "transformers serve", cmd, port, str(model_dir), False, omp))
    else:
        import llamacpp_vs_server as lvs

        from autoglm.config import EngineSettings
        from autoglm.quantization.gguf import ensure_gguf

        if not (args.llama_server and Path(args.llama_server).is_file()):
            raise ConfigError(f"--llama-server {args.llama_server!r} is not a file; build llama-server (see "
                              "benchmarks/llamacpp_vs_server.py) or use --peer transformers")
        settings = EngineSettings(model=args.model)
        gguf = ensure_gguf(args.model, settings, args.gguf_type).path
        env = omp
        ns = argparse.Namespace(parallel=max(c.concurrency for c in cells), max_model_len=args.max_model_len,
                                threads=args.threads)
        port = free_port()
        sides.append(Side("ours", f"autoglm llamacpp {args.gguf_type}", lvs.autoglm_command(gguf, port, ns), port,
                          SERVED_NAME, True, env))
        port = free_port()
        sides.append(Side("peer", "llama-server", lvs.llama_server_command(args.llama_server, gguf, port, ns), port,
                          SERVED_NAME, True, env))
    grid_id = {"peer": args.peer, "model": args.model, "quick": args.quick, "rounds": args.rounds,
               "cells": [c.label for c in cells], "servers": [s.label for s in sides]}
    earlier = load_partial(args.json_out, grid_id) if args.resume else None

    def save(results: list[dict[str, Any]]) -> None:
        save_partial(args.json_out, {**grid_id, "partial": True, "runs": results})
        done = len(done_cells(results, grid_id["servers"], args.rounds, cells))
        Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md_out).write_text(f"Partial: {done} of {len(cells)} cells so far (`--resume` runs the rest).\n\n"
                                     + markdown(pair_rows(results)) + "\n", encoding="utf-8")

    try:
        results = run_grid(sides, cells, args, earlier, save)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    table = markdown(pair_rows(results))
    print("\n" + table)
    Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.md_out).write_text(table + "\n", encoding="utf-8")
    write_record(args.json_out, {**grid_id, "partial": False,
                                 "omp_threads": args.omp_threads or None, "runs": results,
                                 "markdown": table, "machine": {"platform": platform.platform(),
                                                                "cpus": os.cpu_count()}})
    return 0


def save_partial(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a kill mid-write leaves the previous file)."""
    from autoglm.training.rundir import write_json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)


def load_partial(path: str | Path, grid_id: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs an interrupted run of the same grid (``grid_id``: peer, model, cells, servers,
    rounds) saved at ``path``; [] when there is none. A file of another grid is a ConfigError: its
    cells would not pair with this run's."""
    import json

    from autoglm.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        return []
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {file} is not a grid record ({exc}); remove it or drop --resume") from None
    differs = [k for k, v in grid_id.items() if record.get(k) != v]
    if differs:
        raise ConfigError(f"--resume: {file} holds another grid (its {', '.join(differs)} differ); "
                          "remove it, pass another --json, or drop --resume")
    return list(record.get("runs") or [])


def _model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    from autoglm.config import default_store_dir
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model(model, default_store_dir())).resolve()


if __name__ == "__main__":
    from autoglm.bench.scripts import script_main

    script_main(main)
