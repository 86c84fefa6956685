"""``autoglm recommend``: show the task and model decision for a text, calibrate, record quality.

    autoglm recommend "TEXT" [--config DEPLOY.yaml] [--json]    # the decision, without generating
    autoglm recommend calibrate LABELLED.jsonl [...] [--config DEPLOY.yaml] [--no-save]
    autoglm recommend rate MODEL TASK SCORE [--weight N] [--config DEPLOY.yaml]  # a rating, 0..1 (state store)

Without ``--config`` only the task is identified (default taxonomy, hashing encoder). Thin: parse,
call :mod:`autoglm.recommend`, print.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="which task a request is and which model 'auto' would pick; calibrate the identifier",
        description='autoglm recommend "TEXT" | recommend calibrate LABELLED.jsonl... | '
                    "recommend rate MODEL TASK SCORE",
    )
    p.add_argument("words", nargs="+", metavar="TEXT | calibrate FILE... | rate MODEL TASK SCORE")
    p.add_argument("--config", metavar="DEPLOY.yaml", help="a deploy file with a recommend: section and profiles")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--no-save", action="store_true", help="calibrate: report only, do not write a new version")
    p.add_argument("--weight", type=float, default=1.0, help="rate: how many observations the score counts as")
    p.set_defaults(func=run)


def _config(path: str | None) -> Any:
    if path is None:
        return None
    from autoglm.deploy.loader import load_deploy_file

    config = load_deploy_file(path)
    if config.recommend is None or not config.recommend.enabled:
        raise ConfigError(f"{path} has no enabled 'recommend:' section; add one (see examples/auto-route.yaml)")
    return config


def _identifier(config: Any, path: str | None) -> Any:
    """The deployment's identifier (its encoders and templates), or the default one."""
    from autoglm.recommend.identify import TaskIdentifier
    from autoglm.recommend.recommender import build_recommender
    from autoglm.recommend.encoders import make_encoder
    from autoglm.recommend.taxonomy import load_taxonomy

    if config is not None:
        return build_recommender(config, base_dir=Path(path).parent).identifier
    return TaskIdentifier(load_taxonomy(), [make_encoder("hashing")])


def run(args: argparse.Namespace) -> int:
    words = args.words
    if words[0] == "calibrate" and len(words) > 1:
        return _calibrate(args, words[1:])
    if words[0] == "rate" and len(words) == 4:
        return _rate(args, *words[1:])
    return _recommend(args, " ".join(words))


def _recommend(args: argparse.Namespace, text: str) -> int:
    config = _config(args.config)
    request = {"messages": [{"role": "user", "content": text}]}
    if config is not None:
        from autoglm.recommend.recommender import build_recommender
        from autoglm.recommend.route import RouteError

        rec = build_recommender(config, base_dir=Path(args.config).parent)
        rec.quality.refresh()  # the recorded quality (state store), as the server sees it
        try:
            decision = rec.decide(request)
        except RouteError as exc:
            raise ConfigError(exc.message) from None
        if args.json:
            print(json.dumps(decision.to_dict(), ensure_ascii=False, indent=1))
            return 0
        ident = decision.identification
        print(f"task: {decision.task} (confidence {decision.confidence:.2f}, language {ident.language})")
        print(f"model: {decision.model} ({decision.reason}); runner-up: {decision.runner_up or '-'}")
        print("scores: " + ", ".join(f"{m} {s:.3f}" for m, s in decision.scores.items()))
        for model, why in decision.excluded.items():
            print(f"excluded: {model} ({why})")
        return 0
    ident = _identifier(None, None).identify(request)
    if args.json:
        print(json.dumps(ident.to_dict(), ensure_ascii=False, indent=1))
        return 0
    top = sorted(ident.scores.items(), key=lambda kv: -kv[1])[:3]
    print(f"task: {ident.task} (confidence {ident.confidence:.2f}, language {ident.language})")
    print("top: " + ", ".join(f"{t} {s:.3f}" for t, s in top))
    print("(pass --config DEPLOY.yaml to see which model 'auto' would choose)")
    return 0


def _calibrate(args: argparse.Namespace, files: list[str]) -> int:
    from autoglm.recommend.calibrate import CalibrationStore, evaluate, fit, format_report, read_labelled

    config = _config(args.config)
    identifier = _identifier(config, args.config)
    rows = [row for f in files for row in read_labelled(f, identifier.tasks)]
    before = evaluate(identifier, rows)
    params, report = fit(identifier, rows)
    print(f"before: {before.accuracy:.1%} with the current parameters (threshold {identifier.params.threshold:.3f})")
    print(f"fitted: threshold {params.threshold:.3f}, w_keywords {params.w_keywords}, w_fluency "
          f"{params.w_fluency}, prior {params.prior}")
    print(format_report(report))
    if args.no_save:
        return 0
    rec = config.recommend if config is not None else None
    store = CalibrationStore(Path(rec.calibration_dir) if rec is not None and rec.calibration_dir else None)
    version = store.save(params, report, source=", ".join(files), fingerprint=identifier.fingerprint)
    print(f"saved calibration v{version} in {store.directory}; running servers load it within a second")
    return 0


def _rate(args: argparse.Namespace, model: str, task: str, score: str) -> int:
    from autoglm.recommend.quality import QualityBook

    try:
        value = float(score)
    except ValueError:
        raise ConfigError(f"SCORE must be a number between 0 and 1; got {score!r}") from None
    if not 0.0 <= value <= 1.0 or args.weight <= 0:
        raise ConfigError(f"SCORE must be between 0 and 1 and --weight positive; got {value}, {args.weight}")
    config = _config(args.config)
    if config is not None:  # the deployment's state store; the model and task must be its own
        from autoglm.recommend.recommender import build_recommender

        rec = build_recommender(config, base_dir=Path(args.config).parent)
        if model not in rec.profiles or task not in rec.identifier.tasks:
            raise ConfigError(f"MODEL must be one of {', '.join(rec.profiles)} and TASK one of "
                              f"{', '.join(rec.identifier.tasks)}; got {model!r}, {task!r}")
        book = rec.quality
    else:
        book = QualityBook()  # <AUTOGLM_HOME>/state.db
    entry = book.record(model, task, value, args.weight)
    book.close()
    print(f"{model} / {task}: recorded quality mean {entry['mean']:.3f} over {entry['n']:g} observation(s)",
          file=sys.stdout)
    return 0
