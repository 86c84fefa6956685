"""``autoglm pipeline compile FILE --to kubeflow -o out.yaml``: a pipeline file as a Kubeflow Pipelines
(v2) package. Thin: parse, call :func:`autoglm.training.kubeflow.compile_kubeflow`, print.

:func:`add_arguments` fills the ``compile`` sub-parser that ``autoglm.cli.pipeline`` creates;
:func:`run` is its ``func``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "TARGETS"]

TARGETS = ("kubeflow", "pytorchjob", "tune-job")  # the last two: autoglm.cli.compile_kubernetes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autoglm.training.kubeflow import DEFAULT_IMAGE

    parser.add_argument("file", help="pipeline YAML (examples in examples/pipelines/)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="what to compile to")
    parser.add_argument("-o", "--output", help="where to write the package (default: <pipeline name>.kubeflow.yaml)")
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"container image every stage runs in (default: {DEFAULT_IMAGE}, from "
                             "deploy/docker/Dockerfile.cpu with --build-arg EXTRAS=train,kubeflow)")
    parser.add_argument("--tracking-uri", help="MLflow tracking store every pod reaches (default: the file's "
                                               "tracking.uri; needed for a register: stage)")
    parser.add_argument("--base-dir", help="where the file's relative data paths start inside the pods "
                                           "(default: the file's folder here)")
    from autoglm.cli import compile_kubernetes

    compile_kubernetes.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.to != "kubeflow":
        from autoglm.cli import compile_kubernetes

        return compile_kubernetes.run(args)
    from autoglm.training.kubeflow import compile_kubeflow
    from autoglm.training.loader import load_pipeline_file

    output = args.output
    if output is None:
        output = f"{load_pipeline_file(args.file).name}.kubeflow.yaml"
    compiled = compile_kubeflow(args.file, Path(output), image=args.image, tracking_uri=args.tracking_uri,
                                base_dir=args.base_dir)
    tracked = f"tracking {compiled.tracking_uri}" if compiled.tracking_uri else "untracked"
    print(f"wrote {compiled.path} (Kubeflow Pipelines v2 {compiled.name!r}: {' -> '.join(compiled.stages)}; "
          f"image {compiled.image}; {tracked})")
    return 0
