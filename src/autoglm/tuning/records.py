"""Studies as plain dicts: what ``autoglm tune status`` and ``/admin/studies`` show.

A study is an Optuna study (its vocabulary is kept: trials, states, values, params). By default they
live in journal files ``$AUTOGLM_HOME/studies/<name>.journal`` (what ``autoglm tune FILE`` writes);
``storage`` (a journal path or an Optuna storage URL) reads another place. :func:`list_studies` gives one
summary per study; :func:`get_study` adds every trial, the best one, parameter importances (Optuna's
fANOVA; empty with fewer than two complete trials or nothing varied) and the report folder. Storage URLs
are shown with their password masked. Knows nothing about HTTP or argparse.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autoglm.config import default_store_dir
from autoglm.errors import NotFoundError

__all__ = ["list_studies", "get_study"]


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else default_store_dir()


def _storages(home: Path, storage: str | None) -> list[str]:
    if storage:
        return [storage]
    folder = home / "studies"
    return [str(p) for p in sorted(folder.glob("*.journal"))] if folder.is_dir() else []


def _summaries(storage: str) -> list[Any]:
    from autoglm.tuning.study import _optuna, _storage

    optuna = _optuna()
    return optuna.get_all_study_summaries(_storage(storage), include_best_trial=True)


def _when(dt: Any) -> float | None:
    return dt.timestamp() if dt is not None else None


def _study_head(summary: Any, storage: str) -> dict[str, Any]:
    from autoglm.tuning.study import _redact

    attrs = summary.user_attrs or {}
    best = summary.best_trial
    directions = getattr(summary, "directions", None) or [summary.direction]
    return {"object": "study", "name": summary.study_name, "storage": _redact(storage),
            "direction": directions[0].name.lower(), "metric": attrs.get("autoglm.metric"),
            "pipeline": attrs.get("autoglm.pipeline"), "n_trials": summary.n_trials,
            "started_at": attrs.get("autoglm.started_at") or _when(summary.datetime_start),
            "best_value": best.value if best is not None else None,
            "best_params": dict(best.params) if best is not None else {},
            "best_trial": best.number if best is not None else None}


def list_studies(home: Path | None = None, storage: str | None = None) -> list[dict[str, Any]]:
    """One summary per study: name, direction, metric, pipeline, trial count, best value and params."""
    home = _home(home)
    out = []
    for url in _storages(home, storage):
        try:
            summaries = _summaries(url)
        except Exception:  # noqa: BLE001 - an unreadable journal is skipped in a listing; get_study says why
            continue
        out.extend(_study_head(s, url) for s in summaries)
    return sorted(out, key=lambda s: s["name"])


def _trial(t: Any) -> dict[str, Any]:
    from autoglm.tuning.study import A_ERROR, A_RETRY, A_STALE

    start, end = t.datetime_start, t.datetime_complete
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "started_at": _when(start), "completed_at": _when(end),
            "seconds": (end - start).total_seconds() if start and end else None,
            "run_key": t.user_attrs.get("autoglm.run_key"), "mlflow_run_id": t.user_attrs.get("autoglm.mlflow_run_id")
            or None, "retry_of": t.user_attrs.get(A_RETRY), "stale": bool(t.user_attrs.get(A_STALE)),
            "error": t.user_attrs.get(A_ERROR)}


def get_study(name: str, home: Path | None = None, storage: str | None = None) -> dict[str, Any]:
    """A study with its trials (oldest first), counts by state, the best trial and parameter importances."""
    home = _home(home)
    from autoglm.tuning.study import _optuna, _storage

    optuna = _optuna()
    for url in _storages(home, storage):
        try:
            heads = [s for s in _summaries(url) if s.study_name == name]
        except Exception:  # noqa: BLE001 - another file may hold it
            continue
        if not heads:
            continue
        study = optuna.load_study(study_name=name, storage=_storage(url))
        out = _study_head(heads[0], url)
        trials = [_trial(t) for t in study.get_trials(deepcopy=False)]
        counts: dict[str, int] = {}
        for t in trials:
            if not t["stale"]:
                counts[t["state"].lower()] = counts.get(t["state"].lower(), 0) + 1
        complete = [t for t in trials if t["state"] == "COMPLETE"]
        from autoglm.tuning.report import _importance

        importances = _importance(study) if len(complete) >= 2 else {}
        best = next((t for t in trials if t["number"] == out["best_trial"]), None)
        report = home / "studies" / name / "report.md"
        out.update(counts=counts, trials=trials, best=best,
                   importances={k: float(v) for k, v in importances.items()},
                   report=str(report) if report.is_file() else None)
        return out
    known = ", ".join(s["name"] for s in list_studies(home, storage)) or "none yet"
    raise NotFoundError(f"no study named {name[:80]!r} (studies: {known}); start one with `autoglm tune FILE`",
                        param="name")
