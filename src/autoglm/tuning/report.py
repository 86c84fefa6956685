"""The report of a study: best parameters, the top trials, parameter importance, and plots.

Writes into one folder: ``report.md``, ``trials.csv``, and for each of optimisation history,
parallel coordinates and parameter importance a PNG (Optuna's matplotlib backend) and an HTML
page (Optuna's plotly backend, when plotly is installed). A plot that needs more finished trials
than there are is left out and the report says why. Knows nothing about how trials ran.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

log = logging.getLogger("autoglm.tuning")

_PLOTS = ("optimization_history", "parallel_coordinate", "param_importances")


def _importance(study: Any) -> dict[str, float]:
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # too few trials, or no parameter varied
        log.info("parameter importance not available: %s", exc)
        return {}


def _plots(study: Any, out: Path) -> tuple[list[str], list[str]]:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    written, skipped = [], []
    for name in _PLOTS:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            ax = getattr(optuna.visualization.matplotlib, f"plot_{name}")(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            written.append(f"{name}.png")
        except Exception as exc:  # noqa: BLE001 - a plot is optional; say why it is missing
            skipped.append(f"{name}.png ({str(exc).splitlines()[0][:120]})")
        try:
            fig = getattr(optuna.visualization, f"plot_{name}")(study)
            fig.write_html(str(out / f"{name}.html"), include_plotlyjs="cdn")
            written.append(f"{name}.html")
        except Exception as exc:  # noqa: BLE001
            skipped.append(f"{name}.html ({str(exc).splitlines()[0][:120]})")
    return written, skipped


def write_report(study: Any, config: Any, out: Path, top: int = 10) -> Path:
    """Write the report of ``study`` into ``out`` (created) and return ``out``."""
    from optuna.trial import TrialState

    out.mkdir(parents=True, exist_ok=True)
    search = config.search
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("autoglm.stale")]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(complete, key=lambda t: t.value, reverse=search.direction == "maximize")
    names = sorted({k for t in trials for k in t.params})
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", search.metric, *names, "seconds"])
        for t in trials:
            secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                        *[t.params.get(n, "") for n in names], secs])
    importance = _importance(study) if len(complete) >= 2 else {}
    written, skipped = _plots(study, out) if complete else ([], ["all plots (no complete trial)"])
    lines = [f"# Study {study.study_name}", "",
             f"Pipeline `{config.name}`, {search.strategy} search ({search.sampler if search.strategy == 'bayes' else ''})"
             .replace(" ()", ""),
             f"objective: {search.metric} ({search.direction}); trials: {len(complete)} complete, "
             f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned, "
             f"{sum(t.state == TrialState.FAIL for t in trials)} failed", ""]
    if ranked:
        best = ranked[0]
        lines += ["## Best", "", f"trial {best.number}: **{search.metric} = {best.value:.6g}**", ""]
        lines += [f"- `{k}` = {v!r}" for k, v in best.params.items()] + [""]
        lines += ["## Top trials", "", "| trial | " + search.metric + " | " + " | ".join(names) + " |",
                  "|---:|---:|" + "---|" * len(names)]
        for t in ranked[:top]:
            lines.append(f"| {t.number} | {t.value:.6g} | " + " | ".join(str(t.params.get(n, "—")) for n in names) + " |")
        lines.append("")
    if importance:
        lines += ["## Parameter importance (fANOVA)", "", "| parameter | importance |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importance.items()] + [""]
    lines += ["## Plots", ""] + [f"- [{w}]({w})" for w in written]
    if skipped:
        lines += ["", "Not drawn: " + "; ".join(skipped)]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
