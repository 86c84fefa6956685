"""``autoglm compress prune|distill``: make a smaller model and show size, speed and quality before/after.

* ``autoglm compress prune MODEL --method structured --mlp-ratio 0.5 --heads-ratio 0.25 --out DIR``
* ``autoglm compress prune MODEL --method magnitude --amount 0.5``
* ``autoglm compress distill TEACHER --student-layers 2 --text FILE --steps N --out DIR``

The output is an ordinary transformers checkpoint (with the tokenizer) that ``autoglm serve --model DIR``
and ``from_pretrained`` load. Default output: ``<store>/compressed/<name>-pruned|distilled``. Thin: the
work is :mod:`autoglm.compression`; torch and transformers are imported inside the run functions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autoglm.cli.quantize import (
    check_out_dir,
    default_out,
    is_random_weights,
    load_model,
    parse_float,
    parse_fraction,
    parse_int,
    read_text_file,
    resolve_path,
)
from autoglm.errors import ConfigError

__all__ = ["register", "run_prune", "run_distill"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: in the store)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    p.add_argument("--speed-tokens", default="32", metavar="N",
                   help="decode steps timed at batch 1 and 8 (default: 32; 0 skips the speed check)")
    p.add_argument("--eval-tokens", default="256", metavar="N", help="tokens for the quality check (default: 256)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compress", help="prune or distill a model; report size, speed and quality",
                              description="Make a smaller model by pruning or distillation and print a "
                                          "before/after table of size, decode speed and quality.")
    sub = p.add_subparsers(dest="compress_command", metavar="{prune,distill}")
    p.set_defaults(func=lambda args: _missing(p))

    pr = sub.add_parser("prune", help="magnitude (zeroes weights) or structured (removes channels/heads) pruning",
                        description="structured: removes MLP channels (--mlp-ratio) and attention heads "
                                    "(--heads-ratio, whole GQA groups or heads within groups) by weight "
                                    "magnitude: smaller and faster. magnitude: zeroes --amount of the decoder "
                                    "weights: same size and speed, compresses better.")
    pr.add_argument("model", help="alias, org/name repo id, or local directory")
    pr.add_argument("--method", default="structured", metavar="{structured,magnitude}",
                    help="pruning method (default: structured)")
    pr.add_argument("--mlp-ratio", default=None, metavar="R", help="fraction of MLP channels to remove (structured)")
    pr.add_argument("--heads-ratio", default=None, metavar="R",
                    help="fraction of attention heads to remove (structured)")
    pr.add_argument("--amount", default=None, metavar="R", help="fraction of weights to zero (magnitude)")
    _common(pr)
    pr.set_defaults(func=run_prune)

    di = sub.add_parser("distill", help="train a smaller student on the teacher's logits (KL divergence)",
                        description="A student with fewer layers (and optionally a smaller hidden size), or a "
                                    "given --student model, learns the teacher's next-token distributions on "
                                    "--text. Checkpoints every --checkpoint-every steps; a re-run with the same "
                                    "--out resumes from the newest one.")
    di.add_argument("teacher", help="alias, org/name repo id, or local directory")
    di.add_argument("--student", default=None, metavar="MODEL", help="a student model (default: built from the teacher)")
    di.add_argument("--student-layers", default=None, metavar="N", help="layers of the built student (default: half)")
    di.add_argument("--student-hidden", default=None, metavar="H",
                    help="hidden size of the built student (default: the teacher's, initialised from its layers)")
    di.add_argument("--text", default=None, metavar="FILE", help="training text (default: a sample shipped with autoglm)")
    di.add_argument("--steps", default="100", metavar="N", help="optimizer steps in total (default: 100)")
    di.add_argument("--lr", default="3e-4", metavar="LR", help="peak learning rate (default: 3e-4)")
    di.add_argument("--batch-size", default="4", metavar="N", help="sequences per step (default: 4)")
    di.add_argument("--seq-len", default="64", metavar="N", help="tokens per sequence (default: 64)")
    di.add_argument("--temperature", default="2.0", metavar="T", help="softmax temperature (default: 2)")
    di.add_argument("--checkpoint-every", default="50", metavar="N", help="steps between checkpoints (0: none)")
    di.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out and start over")
    di.add_argument("--seed", default="0", metavar="N", help="seed for batches and the student (default: 0)")
    _common(di)
    di.set_defaults(func=run_distill)


def _missing(p: argparse.ArgumentParser) -> int:
    raise ConfigError("autoglm compress needs a subcommand: prune or distill (see `autoglm compress --help`)")


def _finish(args: argparse.Namespace, method: str, details: list[str], before_model: Any, after_model: Any,
            path: Path, out: Path, tokenizer: Any, eval_text: str | None, extra: dict[str, Any]) -> int:
    from autoglm.compression.report import CompressionReport, model_stats
    from autoglm.quantization.quality import evaluate_quality

    speed_tokens = parse_int(args.speed_tokens, "--speed-tokens", minimum=0)
    batches = (1, 8) if speed_tokens else ()
    quality = evaluate_quality(before_model, after_model, tokenizer, eval_text,
                               parse_int(args.eval_tokens, "--eval-tokens", minimum=2),
                               random_weights=is_random_weights(path))
    report = CompressionReport(
        method=method, details=details, quality=quality,
        before=model_stats(before_model, "before", path, batches, max(speed_tokens, 1)),
        after=model_stats(after_model, "after", out, batches, max(speed_tokens, 1)))
    if args.json:
        print(json.dumps(report.to_dict() | extra | {"out": str(out)}, indent=2))
    else:
        print("\n".join(report.lines() + [f"saved to {out}"]))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from autoglm.compression.prune import METHODS

    if args.method not in METHODS:
        raise ConfigError(f"unknown --method {args.method!r}: use one of {', '.join(METHODS)}")
    if args.method == "magnitude":
        if args.amount is None:
            raise ConfigError("--method magnitude needs --amount (the fraction of weights to zero, e.g. 0.5)")
        if args.mlp_ratio is not None or args.heads_ratio is not None:
            raise ConfigError("--mlp-ratio/--heads-ratio are for --method structured; magnitude takes --amount")
        kwargs: dict[str, Any] = {"amount": parse_fraction(args.amount, "--amount")}
    else:
        if args.amount is not None:
            raise ConfigError("--amount is for --method magnitude; structured takes --mlp-ratio and --heads-ratio")
        kwargs = {"mlp_ratio": parse_fraction(args.mlp_ratio or 0, "--mlp-ratio"),
                  "heads_ratio": parse_fraction(args.heads_ratio or 0, "--heads-ratio")}
        if not kwargs["mlp_ratio"] and not kwargs["heads_ratio"]:
            raise ConfigError("--method structured needs --mlp-ratio and/or --heads-ratio above 0, e.g. --mlp-ratio 0.5")
    parse_int(args.speed_tokens, "--speed-tokens", minimum=0)
    parse_int(args.eval_tokens, "--eval-tokens", minimum=2)

    from transformers import AutoTokenizer

    from autoglm.compression.prune import prune_model
    from autoglm.quantization.export import copy_tokenizer_files

    path, store_dir = resolve_path(args.model)
    out = Path(args.out).expanduser() if args.out else default_out(store_dir, "compressed", args.model, "pruned")
    check_out_dir(out, path, args.force)
    before = load_model(path)
    after, prune_report = prune_model(before, args.method, copy_model=True, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    after.save_pretrained(out)
    copy_tokenizer_files(path, out)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return _finish(args, f"pruned {args.model}", prune_report.lines(), before, after, path, out, tokenizer, None,
                   {"prune": {"method": prune_report.method, "params_before": prune_report.params_before,
                              "params_after": prune_report.params_after, "details": prune_report.details,
                              "notes": prune_report.notes}})


def run_distill(args: argparse.Namespace) -> int:
    steps = parse_int(args.steps, "--steps")
    lr = parse_float(args.lr, "--lr")
    batch_size = parse_int(args.batch_size, "--batch-size")
    seq_len = parse_int(args.seq_len, "--seq-len", minimum=2)
    temperature = parse_float(args.temperature, "--temperature")
    every = parse_int(args.checkpoint_every, "--checkpoint-every", minimum=0)
    seed = parse_int(args.seed, "--seed", minimum=0)
    layers = parse_int(args.student_layers, "--student-layers") if args.student_layers is not None else None
    hidden = parse_int(args.student_hidden, "--student-hidden", minimum=8) if args.student_hidden is not None else None
    if args.student is not None and (layers or hidden):
        raise ConfigError("--student is a ready model; --student-layers/--student-hidden build one instead: use one")
    text = read_text_file(args.text, "--text")
    parse_int(args.speed_tokens, "--speed-tokens", minimum=0)
    parse_int(args.eval_tokens, "--eval-tokens", minimum=2)

    from transformers import AutoTokenizer

    from autoglm.compression.distill import distill, make_student
    from autoglm.quantization.export import copy_tokenizer_files
    from autoglm.quantization.quality import eval_sample_text

    path, store_dir = resolve_path(args.teacher)
    out = Path(args.out).expanduser() if args.out else default_out(store_dir, "compressed", args.teacher, "distilled")
    check_out_dir(out, path, args.force, marker="checkpoints")
    teacher = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.student is not None:
        student_path, _ = resolve_path(args.student)
        student, init = load_model(student_path), f"given model {args.student}"
    else:
        student, init = make_student(teacher, layers or max(1, teacher.config.num_hidden_layers // 2), hidden, seed=seed)
    report = distill(teacher, student, text if text is not None else eval_sample_text(), steps=steps, lr=lr,
                     batch_size=batch_size, seq_len=seq_len, out_dir=out, tokenizer=tokenizer,
                     temperature=temperature, checkpoint_every=every, resume=not args.no_resume, seed=seed,
                     init=init)
    copy_tokenizer_files(path, out)
    details = report.lines()
    if text is None:
        details.append("note: trained and evaluated on the shipped sample text; pass --text for your own data")
    return _finish(args, f"distilled {args.teacher}", details, teacher, student, path, out, tokenizer, None,
                   {"distill": report.to_dict()})
