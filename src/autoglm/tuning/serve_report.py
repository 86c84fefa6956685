"""What ``autoglm tune serve`` leaves behind: the deploy file, the trials table, trials.json.

:func:`deploy_yaml` writes one model with the chosen settings in the deploy-file schema
(:mod:`autoglm.deploy.schema`), so ``autoglm deploy FILE`` serves what was measured.
:func:`markdown_report` is the table of every trial beside the defaults, and the verdict: by how
much the choice beats the defaults, measured in the same run, or that nothing did.
It knows nothing about servers, Optuna or how the numbers were measured.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoglm.tuning.serve import ServeTuningResult, TrialRecord

__all__ = ["deploy_yaml", "markdown_report", "verdict", "write_outputs", "deploy_model_name"]


def deploy_model_name(model: str) -> str:
    """A local directory is served under its folder name; an alias or repo id under itself."""
    p = Path(model).expanduser()
    return p.name if p.is_dir() else model


def deploy_yaml(model: str, params: dict[str, Any], *, device: str = "auto", header: list[str] | None = None) -> str:
    """A deploy file serving ``model`` with ``params`` (the ServeSpace settings), every one written out."""
    import yaml

    name = deploy_model_name(model)
    entry: dict[str, Any] = {"name": name}
    if name != model:
        entry["source"] = str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model
    entry.update({k: params[k] for k in ("engine", "quantize", "max_num_seqs", "prefill_chunk",
                                          "prefix_cache_tokens", "max_model_len")})
    if device != "auto":
        entry["device"] = device
    body = yaml.safe_dump({"models": [entry]}, sort_keys=False)
    lines = [f"# {h}" for h in (header or [])]
    return "\n".join(lines + [body.rstrip(), ""])


def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _settings(t: TrialRecord) -> str:
    return " ".join(t.flags) if t.flags else "(defaults)"


def markdown_report(result: ServeTuningResult) -> str:
    obj = result.objective
    head = ["#", "role", "settings", "tok/s", "req/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "failed",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|---|" + "---:|" * 7 + "---|"]
    for t in result.trials:
        m = t.metrics or {}
        status = t.status + (f": {t.reason}" if t.reason else "")
        cells = [str(t.number), t.role, f"`{_settings(t)}`", _num(m.get("tok_s"), "{:.1f}"),
                 _num(m.get("req_s"), "{:.2f}"), _num(m.get("ttft_p50"), "{:.0f}"), _num(m.get("ttft_p99"), "{:.0f}"),
                 _num(m.get("tpot_p50"), "{:.1f}"), _num(m.get("tpot_p99"), "{:.1f}"),
                 _num(m.get("failed"), "{:.0f}"), status.replace("|", "/").replace("\n", " ")[:200]]
        lines.append("| " + " | ".join(cells) + " |")
    out = [f"## autoglm tune serve {result.model}", "",
           f"- device: {result.device}",
           f"- workload: {result.workload_text}",
           f"- objective: {obj.describe()}",
           f"- study: {result.study_name} (sampler {result.sampler}, storage {result.storage or 'in-memory'})",
           "- space: " + "; ".join(f"{k} {list(v)}" for k, v in result.space.items()),
           "", *lines, "",
           "Times in ms. `(defaults)` is `autoglm serve --model M` with no flags; every server ran with "
           "`--no-gateway --access-log off` (no response cache), every request with ignore_eos.", "",
           verdict(result)]
    return "\n".join(out)


def verdict(result: ServeTuningResult) -> str:
    """One paragraph: what was chosen and by how much it beats the defaults (means of repeated runs)."""
    obj, s = result.objective, result.summary
    if not s:
        return "No setting was measured successfully, so nothing was chosen (see the failed trials)."
    d, c = s["defaults_mean"], s["choice_mean"]
    fmt = "{:.1f}" if obj.metric == "tok_s" else "{:.2f}"
    runs = lambda key: ", ".join(fmt.format(v) for v in s[key])  # noqa: E731
    if result.chosen_is_default:
        if s.get("candidate_flags") is None:
            return (f"**Choice: the defaults.** No other setting was measured feasibly; defaults "
                    f"{fmt.format(d)} {obj.label} (runs: {runs('defaults_runs')}).")
        return (f"**Choice: the defaults.** The best other setting (`{' '.join(s['candidate_flags']) or '(defaults)'}`) "
                f"measured {fmt.format(s['candidate_mean'])} {obj.label} (runs: {runs('candidate_runs')}) against the "
                f"defaults' {fmt.format(d)} (runs: {runs('defaults_runs')}): {s['gain_pct']:+.1f}%, not better, "
                "so the deploy file keeps the defaults.")
    return (f"**Choice: `{' '.join(result.choice_flags)}`: {fmt.format(c)} {obj.label} (runs: {runs('choice_runs')}) vs "
            f"the defaults' {fmt.format(d)} (runs: {runs('defaults_runs')}), {s['gain_pct']:+.1f}%** "
            f"({'higher' if obj.direction == 'maximize' else 'lower'} is better), measured in the same run.")


def write_outputs(result: ServeTuningResult, deploy_path: Path) -> None:
    """The deploy file at ``deploy_path`` (when something was chosen), report.md and trials.json beside it."""
    deploy_path.parent.mkdir(parents=True, exist_ok=True)
    if result.choice is not None:
        header = [f"written by `autoglm tune serve {result.model}` ({result.objective.describe()})",
                  f"workload: {result.workload_text}", verdict(result).replace("**", "")[:400]]
        deploy_path.write_text(deploy_yaml(result.model, result.choice, device=result.device_flag, header=header),
                               encoding="utf-8")
        result.deploy_path = str(deploy_path)
    report = deploy_path.parent / "report.md"
    report.write_text(markdown_report(result) + "\n", encoding="utf-8")
    result.report_path = str(report)
    trials = deploy_path.parent / "trials.json"
    trials.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    result.trials_path = str(trials)
