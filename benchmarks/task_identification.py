"""Task identification: accuracy on the shipped labelled sets, and the routing overhead of model "auto".

    python benchmarks/task_identification.py [--minilm] [--heldout] [--out benchmarks/results/task_identification.md]

1. Accuracy and confusion matrices (English, Chinese) with the built-in parameters, for the hashing
   encoder (the default) and, with --minilm, hashing + MiniLM (needs the recommend extra), on the dev
   set ``tests/recommend/data`` - the set the keywords, templates and weights were tuned on, so these
   figures are in-sample.
2. Cross-language check of calibration: fit on one language's dev set, evaluate on the other's.
3. With --heldout: the same accuracy and confusion matrices on ``benchmarks/data/task_identification``,
   written independently of the keyword lists and never used for tuning (see its README): the honest
   figure. (--heldout-only skips 1-2 and the latency section.)
3. Overhead of ``Recommender.decide`` (identification + constraints + score) with 1,000 templates:
   p50/p95 over 500 requests, short and long (6,000-character) prompts, numpy limited to 2 threads; and over
   the realistic mix: every held-out prompt routed one by one (3 passes), with the share where MiniLM ran.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "recommend" / "data"
HELDOUT = ROOT / "benchmarks" / "data" / "task_identification"


def _identifier(encoders: list[str], cache: Path) -> tuple[object, float]:
    from autoglm.recommend.encoders import make_encoder
    from autoglm.recommend.identify import TaskIdentifier
    from autoglm.recommend.taxonomy import load_taxonomy

    t0 = time.perf_counter()
    ident = TaskIdentifier(load_taxonomy(), [make_encoder(e) for e in encoders], cache=cache)
    return ident, time.perf_counter() - t0


def _dev_rows(ident: object) -> list:
    from autoglm.recommend.calibrate import read_labelled

    return [r for f in sorted(DATA.glob("labelled_*.jsonl")) for r in read_labelled(f, ident.tasks)]


def _subset(raw: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in raw.items()}


def cv_section(encoders: list[str], cache: Path, folds: int = 5, seeds: int = 2) -> tuple[list[str], dict]:
    """k-fold cross-validation of `autoglm recommend calibrate`'s linear fit on the whole dev set."""
    from autoglm.recommend.calibrate import evaluate, fit, signals_of

    ident, _ = _identifier(encoders, cache)
    rows = _dev_rows(ident)
    raw = signals_of(ident, rows)
    langs = np.array([r.language for r in rows])
    correct = {lang: [] for lang in ("en", "zh")}
    for seed in range(seeds):
        fold = np.empty(len(rows), dtype=int)
        fold[np.random.default_rng(seed).permutation(len(rows))] = np.arange(len(rows)) % folds
        for k in range(folds):
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            params, _ = fit(ident, [rows[i] for i in train], raw=_subset(raw, train))
            report = evaluate(ident, [rows[i] for i in test], params, raw=_subset(raw, test))
            for lang in correct:
                ok, n = report.by_language.get(lang, (0, 0))
                correct[lang].append((ok, n))
    acc = {lang: sum(o for o, _ in v) / max(1, sum(n for _, n in v)) for lang, v in correct.items()}
    out = [f"### {folds}-fold cross-validation on the dev set ({seeds} seeds), encoders: {' + '.join(encoders)}", "",
           "| set | accuracy | n |", "|---|---|---|"]
    out += [f"| dev {lang} (out of fold) | {acc[lang]:.1%} | {int(np.sum(langs == lang))} |" for lang in ("en", "zh")]
    return out + [""], acc


def refit_defaults(cache: Path) -> list[str]:
    """Fit the built-in linear models on the whole dev set and write src/autoglm/recommend/data/linear.json."""
    from autoglm.recommend.calibrate import fit, format_report
    from autoglm.recommend.identify import IdentifyParams

    models, out = {}, ["## Built-in linear models, fitted on the whole dev set (in-sample)", ""]
    for encoders in (["hashing"], ["hashing", "minilm"]):
        from autoglm.recommend.encoders import make_encoder
        from autoglm.recommend.identify import TaskIdentifier
        from autoglm.recommend.taxonomy import load_taxonomy

        ident = TaskIdentifier(load_taxonomy(), [make_encoder(e) for e in encoders], IdentifyParams(), cache=cache)
        rows = _dev_rows(ident)
        params, report = fit(ident, rows)
        entry = {"linear": params.linear, "threshold": params.threshold}
        if params.linear_fast:
            entry |= {"linear_fast": params.linear_fast, "cascade": params.cascade}
        models[ident.encoder_key] = entry
        out += [f"### {ident.encoder_key} ({len(rows)} rows)", "", "```", format_report(report), "```", ""]
    target = ROOT / "src" / "autoglm" / "recommend" / "data" / "linear.json"
    body = {"about": "built-in task identification models (autoglm.recommend.linear), fitted on "
                     "tests/recommend/data/labelled_*.jsonl by: python benchmarks/task_identification.py --refit",
            "models": models}
    target.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return out + [f"written: {target.relative_to(ROOT)}", ""]


def heldout_section(encoders: list[str], cache: Path) -> list[str]:
    from autoglm.recommend.calibrate import evaluate, format_report, read_labelled

    ident, _ = _identifier(encoders, cache)
    rows = [r for lang in ("en", "zh") for r in read_labelled(HELDOUT / f"heldout_{lang}.jsonl", ident.tasks)]
    report = evaluate(ident, rows)
    out = [f"### held-out set, encoders: {' + '.join(encoders)}", "",
           "| set | accuracy | n |", "|---|---|---|"]
    for lang in ("en", "zh"):
        ok, n = report.by_language[lang]
        out.append(f"| held-out {lang} | {ok / n:.1%} | {n} |")
    out += ["", "```", format_report(report), "```", ""]
    return out


def accuracy_section(encoders: list[str], cache: Path) -> list[str]:
    from autoglm.recommend.calibrate import evaluate, fit, format_report, read_labelled

    ident, build_s = _identifier(encoders, cache)
    rows = {lang: [r for f in sorted(DATA.glob(f"labelled_*{lang}.jsonl"))
                   for r in read_labelled(f, ident.tasks)] for lang in ("en", "zh")}
    report = evaluate(ident, rows["en"] + rows["zh"])
    out = [f"### encoders: {' + '.join(encoders)}", "",
           f"index build (first start, no cache): {build_s:.1f} s", "",
           "| set | accuracy | n |", "|---|---|---|"]
    for lang in ("en", "zh"):
        ok, n = report.by_language[lang]
        out.append(f"| dev {lang} | {ok / n:.1%} | {n} |")
    base = ident.params
    # the weighted sum's grid transfers across languages; the linear model has weights per language (one
    # fitted on English rows alone scores Chinese with English weights: calibrate with both languages)
    for train, test in (("en", "zh"), ("zh", "en")):
        params, _ = fit(ident, rows[train], method="grid")
        held = evaluate(ident, rows[test], params)
        out.append(f"| dev {test}, weighted sum fitted on {train} only | {held.accuracy:.1%} | {held.total} |")
    ident.params = base
    out += ["", "```", format_report(report), "```", ""]
    return out


def latency_section(cache: Path, encoders: list[str] = ("hashing",)) -> list[str]:
    from autoglm.recommend.identify import TaskIdentifier
    from autoglm.recommend.profiles import ModelProfile
    from autoglm.recommend.recommender import Recommender
    from autoglm.recommend.taxonomy import load_taxonomy

    tax = load_taxonomy()
    texts, labels = tax.templates()
    extra = cache / "many.yaml"
    lines = ["tasks:"]
    for name in tax.names:
        own = [t for t, lab in zip(texts, labels) if lab == name]
        lines += [f"  - name: {name}", "    templates:", "      en:"]
        lines += ["        - " + json.dumps(f"{own[i % len(own)]} (variant {i})") for i in range(88)]
    extra.write_text("\n".join(lines) + "\n")
    from autoglm.recommend.encoders import make_encoder

    ident = TaskIdentifier(load_taxonomy([extra]), [make_encoder(e) for e in encoders], cache=cache)
    n_templates = ident.indexes[0].matrix.shape[0]
    profiles = {"coder": ModelProfile("coder", {"code": 0.9}), "general": ModelProfile("general", {"chat": 0.8})}
    rec = Recommender(ident, profiles, default="general")
    doc = " ".join(f"Section {i}: the supplier shall deliver within {i} days." for i in range(120))
    cases = {
        "short English": "Write a Python function that merges two sorted lists",
        "short Chinese": "请把这句话翻译成英文：明天的会议改到下午三点",
        f"long ({len(doc) + 30} chars)": doc + " What is the delivery time in section 7?",
        "short English, vague": "so what do you make of the whole thing with the numbers",
    }
    out = [f"encoders: {' + '.join(encoders)}; templates in the index: {n_templates}; threads (OMP_NUM_THREADS): {os.environ['OMP_NUM_THREADS']}", "",
           "| request | p50 (ms) | p95 (ms) | max (ms) | encoders run |", "|---|---|---|---|---|"]
    for name, text in cases.items():
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": 64}
        for _ in range(20):
            rec.decide(body)
        times = []
        for _ in range(500 if len(encoders) == 1 else 100):
            t0 = time.perf_counter()
            rec.decide(body)
            times.append((time.perf_counter() - t0) * 1000)
        ran = [e for e in encoders if f"knn:{e}" in rec.decide(body).identification.signals]
        out.append(f"| {name} | {np.percentile(times, 50):.2f} | {np.percentile(times, 95):.2f} | "
                   f"{max(times):.2f} | {' + '.join(ran)} |")
    # the realistic mix: every held-out prompt routed one by one, three passes (the cascade decides per request)
    rows = [json.loads(line) for lang in ("en", "zh")
            for line in (HELDOUT / f"heldout_{lang}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    bodies = [{"messages": [{"role": "user", "content": r["text"]}], "max_tokens": 64} for r in rows]
    for body in bodies[:20]:
        rec.decide(body)
    times, slow = [], []
    for _ in range(3):
        for body in bodies:
            t0 = time.perf_counter()
            decision = rec.decide(body)
            times.append((time.perf_counter() - t0) * 1000)
            slow.append(any(f"knn:{e}" in decision.identification.signals for e in encoders if e != "hashing"))
    t, m = np.array(times), np.array(slow)
    out.append(f"| held-out mix ({len(bodies)} prompts x 3) | {np.percentile(t, 50):.2f} | {np.percentile(t, 95):.2f} | "
               f"{t.max():.2f} | {'minilm on %.1f %%' % (100 * m.mean()) if len(encoders) > 1 else 'hashing'} |")
    if m.any() and len(encoders) > 1:
        out.append(f"| held-out, requests where MiniLM ran | {np.percentile(t[m], 50):.2f} | "
                   f"{np.percentile(t[m], 95):.2f} | {t[m].max():.2f} | hashing + minilm |")
    return out + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="also measure hashing + MiniLM (recommend extra)")
    ap.add_argument("--heldout", action="store_true", help="also report accuracy on the held-out set")
    ap.add_argument("--heldout-only", action="store_true", help="only the held-out accuracy (no dev set, no latency)")
    ap.add_argument("--cv", action="store_true", help="also cross-validate the calibration on the dev set")
    ap.add_argument("--refit", action="store_true", help="refit the built-in linear models on the dev set "
                    "(writes src/autoglm/recommend/data/linear.json), then measure")
    ap.add_argument("--out", default=None, help="where the markdown goes (default: benchmarks/results/"
                    "task_identification.md, or task_identification_heldout.md with --heldout-only)")
    args = ap.parse_args()
    flags = "".join(f" --{f}" for f, on in (("minilm", args.minilm), ("heldout", args.heldout),
                                            ("heldout-only", args.heldout_only), ("cv", args.cv),
                                            ("refit", args.refit)) if on)
    encoder_sets = [["hashing"]] + ([["hashing", "minilm"]] if args.minilm else [])
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        lines = ["# Task identification", "", "```bash", "python benchmarks/task_identification.py" + flags, "```", "",
                 f"Machine: {os.cpu_count()} CPU cores (shared), Python {sys.version.split()[0]}.", ""]
        if args.refit:
            from autoglm.recommend import identify

            lines += refit_defaults(cache)
            identify._builtin_linear.cache_clear()
        if args.cv:
            lines += ["## Cross-validation of the calibration on the dev set (tests/recommend/data, all files)", ""]
            for encoders in encoder_sets:
                lines += cv_section(encoders, cache)[0]
        if not args.heldout_only:
            lines += ["## Accuracy on the dev set tests/recommend/data (built-in parameters; in-sample)", ""]
            for encoders in encoder_sets:
                lines += accuracy_section(encoders, cache)
        if args.heldout or args.heldout_only:
            lines += ["## Accuracy on the held-out set benchmarks/data/task_identification (never tuned on)", ""]
            for encoders in encoder_sets:
                lines += heldout_section(encoders, cache)
        if not args.heldout_only:
            lines += ["## Routing overhead of model \"auto\" (Recommender.decide)", ""]
            for encoders in encoder_sets:
                lines += latency_section(cache, encoders)
    text = "\n".join(lines) + "\n"
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               ("task_identification_heldout.md" if args.heldout_only else "task_identification.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
