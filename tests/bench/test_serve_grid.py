"""benchmarks/serve_grid.py's table logic: the cells, the pairing of peer and ours, targets, worst first."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from autoglm.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_grid.py"
_spec = importlib.util.spec_from_file_location("serve_grid", SCRIPT)
grid = importlib.util.module_from_spec(_spec)
sys.modules["serve_grid"] = grid  # dataclasses look their module up by name
_spec.loader.exec_module(grid)


def _result(side: str, server: str, cell, tok_s: float, completed: int | None = None, tokens: int | None = None,
            ignore_eos_sent: bool = True, round_: int = 0) -> dict:
    sent = cell.num_prompts()
    return {"side": side, "server": server, "cell": asdict(cell), "sent": sent, "ignore_eos_sent": ignore_eos_sent,
            "round": round_,
            "metrics": {"output_throughput": tok_s, "completed": sent if completed is None else completed,
                        "failed": 0 if completed is None else sent - completed,
                        "total_output_tokens": sent * cell.max_tokens if tokens is None else tokens}}


def test_full_grid_covers_every_axis_and_runs_repeated_prompts_low_concurrency_first():
    cells = grid.grid_cells()
    assert len(cells) == 3 * 3 * 2 * 2 * 3
    assert {c.input_len for c in cells} == set(grid.INPUT_LENS) and {c.max_tokens for c in cells} == {16, 128, 512}
    assert {c.ignore_eos for c in cells} == {True, False} and {c.mode for c in cells} == {"distinct", "repeated"}
    for i, o, e in {(c.input_len, c.max_tokens, c.ignore_eos) for c in cells}:
        order = [c.concurrency for c in cells if (c.input_len, c.max_tokens, c.ignore_eos, c.mode) == (i, o, e, "repeated")]
        assert order == [1, 4, 16]
    quick = grid.grid_cells(quick=True)
    assert 2 <= len(quick) <= 6 and {c.concurrency for c in quick} >= {1, 16}


def test_repeated_prompts_are_shared_across_concurrency_and_distinct_ones_are_new():
    rep1, rep16 = grid.Cell(12, 64, True, "repeated", 1), grid.Cell(12, 64, True, "repeated", 16)
    a, b = grid.prompts_for(rep1, 0), grid.prompts_for(rep16, 1)
    assert b[:len(a)] == a  # what c=16 sends begins with what c=1 sent
    d1, d2 = grid.prompts_for(grid.Cell(12, 64, True, "distinct", 1), 2), grid.prompts_for(
        grid.Cell(12, 64, True, "distinct", 16), 3)
    assert not set(d1) & set(d2) and not set(d1) & set(b)


def test_rows_pair_cells_apply_targets_and_sort_worst_first():
    c1, c16, c4 = grid.Cell(12, 64, True, "distinct", 1), grid.Cell(12, 64, True, "distinct", 16), \
        grid.Cell(200, 16, False, "repeated", 4)
    results = [
        _result("peer", "transformers serve", c1, 10.0), _result("peer", "transformers serve", c16, 40.0),
        _result("peer", "transformers serve", c4, 20.0),
        _result("ours", "autoglm serve none", c1, 25.0), _result("ours", "autoglm serve none", c16, 48.0),
        _result("ours", "autoglm serve auto", c16, 130.0),
        _result("ours", "autoglm serve none", c4, 30.0, completed=7, tokens=100),
    ]
    rows = grid.pair_rows(results)
    by = {(r["ours"], r["cell"].concurrency): r for r in rows}
    assert by[("autoglm serve none", 16)]["target"] == 1.3 and by[("autoglm serve none", 16)]["meets"] is False
    assert by[("autoglm serve auto", 16)]["target"] == 3.0 and by[("autoglm serve auto", 16)]["meets"] is True
    assert by[("autoglm serve none", 1)]["target"] is None  # the issue sets targets at c=16 for this peer
    assert by[("autoglm serve none", 4)]["ours_full"] is False  # 7 of 8 served
    table = grid.markdown(rows).splitlines()
    ratios = [line.split("|")[6].strip() for line in table[2:]]
    assert ratios == ["1.20x", "1.50x", "2.50x", "3.25x"]  # worst first
    assert "1.30x MISSED" in table[2] and "yes/yes" in table[2] and "NO/yes" in table[3]


def test_missing_peer_cell_sorts_last_and_llama_server_targets():
    c = grid.Cell(12, 16, True, "distinct", 1)
    rows = grid.pair_rows([_result("ours", "autoglm llamacpp q8_0", c, 5.0),
                           _result("ours", "autoglm llamacpp q8_0", grid.Cell(12, 16, True, "distinct", 16), 9.0),
                           _result("peer", "llama-server", grid.Cell(12, 16, True, "distinct", 16), 10.0)])
    table = grid.markdown(rows).splitlines()
    assert "0.90x" in table[2] and "1.00x MISSED" in table[2] and table[-1].split("|")[6].strip() == "-"
    assert grid.target("llama-server", "x", 1) == 0.95 and grid.target("llama-server", "x", 4) is None


def test_short_output_with_ignore_eos_is_not_served_in_full_unless_the_peer_was_not_asked():
    c = grid.Cell(12, 64, True, "distinct", 1)
    short = _result("peer", "transformers serve", c, 10.0, tokens=10)
    assert grid._full(short, c) is False
    assert grid._full({**short, "ignore_eos_sent": False}, c) is True  # transformers serve takes no ignore_eos


def test_rounds_pair_like_with_like_and_the_median_ratio_decides():
    c = grid.Cell(12, 64, True, "repeated", 16)
    ours = [30.0, 100.0, 36.0, 50.0, 33.0]  # round 1 is an outlier on our side, round 3 on the peer's
    peer = [30.0, 30.0, 36.0, 100.0, 30.0]
    results = [_result("ours", "autoglm llamacpp q8_0", c, o, round_=i) for i, o in enumerate(ours)]
    results += [_result("peer", "llama-server", c, p, round_=i) for i, p in enumerate(peer)]
    (row,) = grid.pair_rows(results)
    # per-round ratios 1.0, 3.33, 1.0, 0.5, 1.1: median 1.0 (the ratio of medians would say 36/30 = 1.2)
    assert row["rounds"] == 5 and abs(row["ratio"] - 1.0) < 1e-9 and row["meets"] is True
    assert abs(row["ratio_min"] - 0.5) < 1e-9 and abs(row["ratio_max"] - 100 / 30) < 1e-9
    assert row["ours_tok_s"] == 36.0 and row["peer_tok_s"] == 30.0
    line = grid.markdown([row]).splitlines()[2]
    assert "| 1.00x |" in line and "0.50-3.33 (5)" in line
    short = results[:4] + [_result("ours", "autoglm llamacpp q8_0", c, 33.0, completed=1, round_=4)] + results[5:]
    assert grid.pair_rows(short)[0]["ours_full"] is False  # one short round: not served in full


def test_each_round_of_a_distinct_cell_sends_new_prompts_and_repeated_ones_stay():
    d, r = grid.Cell(12, 16, True, "distinct", 4), grid.Cell(12, 16, True, "repeated", 4)
    assert not set(grid.prompts_for(d, 3, round_=0)) & set(grid.prompts_for(d, 3, round_=1))
    assert grid.prompts_for(r, 3, round_=0) == grid.prompts_for(r, 3, round_=2)


def test_a_cell_counts_as_done_only_with_every_round_of_every_server(tmp_path):
    a, b = grid.Cell(12, 16, True, "distinct", 1), grid.Cell(12, 16, True, "distinct", 4)
    results = [_result("ours", "ours", a, 1.0, round_=i) for i in range(2)]
    results += [_result("peer", "peer", a, 1.0, round_=i) for i in range(2)]
    results += [_result("ours", "ours", b, 1.0, round_=0), _result("peer", "peer", b, 1.0, round_=0),
                _result("ours", "ours", b, 1.0, round_=1)]  # killed before the peer's second round of b
    done = grid.done_cells(results, ["ours", "peer"], rounds=2)
    assert done == {grid._key(asdict(a))}
    assert grid.done_cells(results, ["ours", "peer"], rounds=1) == {grid._key(asdict(a)), grid._key(asdict(b))}


def test_a_repeated_group_cut_short_runs_again_from_its_lowest_concurrency():
    group = [grid.Cell(12, 16, True, "repeated", c) for c in (1, 4, 16)]
    other = grid.Cell(12, 16, True, "distinct", 16)
    results = [_result(side, side, c, 1.0) for c in (*group[:2], other) for side in ("ours", "peer")]
    done = grid.done_cells(results, ["ours", "peer"], rounds=1, cells=[*group, other])
    # c=16 of the repeated group is missing: a resumed server would not hold the prompts c=1 and c=4 sent
    assert done == {grid._key(asdict(other))}
    results += [_result(side, side, group[2], 1.0) for side in ("ours", "peer")]
    assert len(grid.done_cells(results, ["ours", "peer"], rounds=1, cells=[*group, other])) == 4


def test_a_saved_partial_grid_resumes_only_into_the_same_grid(tmp_path):
    path = tmp_path / "grid.json"
    grid_id = {"peer": "llama-server", "model": "m", "quick": True, "rounds": 5, "cells": ["x"], "servers": ["a", "b"]}
    assert grid.load_partial(path, grid_id) == []  # nothing saved yet: start from scratch
    runs = [_result("ours", "a", grid.Cell(12, 16, True, "distinct", 1), 3.0)]
    grid.save_partial(path, {**grid_id, "partial": True, "runs": runs})
    assert [f.name for f in tmp_path.iterdir()] == ["grid.json"]  # no temporary file left beside it
    assert grid.load_partial(path, grid_id) == runs
    with pytest.raises(ConfigError, match="holds another grid \\(its rounds differ\\)"):
        grid.load_partial(path, {**grid_id, "rounds": 3})
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a grid record"):
        grid.load_partial(path, grid_id)


def test_bad_list_is_one_line_and_nonzero_exit():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--concurrency", "1,x"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--concurrency '1,x' is not a comma-separated list" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "0"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--rounds 0 must be at least 1" in proc.stderr
