"""``autoglm pipeline compile FILE --to pytorchjob|tune-job``: a pipeline file as Kubernetes jobs.

Thin: parse, call :func:`autoglm.deploy.kubernetes.jobs.pytorch_job` or :func:`~autoglm.deploy.kubernetes.
jobs.tune_job`, write the YAML, say where the data must go. :func:`add_arguments` adds the flags to the
``compile`` sub-parser of :mod:`autoglm.cli.pipeline_compile`; :func:`run` is called for these targets.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "TARGETS"]

TARGETS = ("pytorchjob", "tune-job")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("kubernetes jobs (--to pytorchjob / tune-job)")
    g.add_argument("--nodes", type=int, default=1, help="pytorchjob: pods (torchrun nodes; default 1)")
    g.add_argument("--nproc", type=int, default=None,
                   help="pytorchjob: processes per pod (default: the file's train.distributed.nproc)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="pytorchjob: cuda gives each pod --nproc GPUs and the autoglm:cuda image (default: cpu)")
    g.add_argument("--workers", type=int, default=4, help="tune-job: parallel pods sharing the study (default 4)")
    g.add_argument("--study", default=None, help="tune-job: study name (default: the pipeline's name)")
    g.add_argument("--pvc", default=None, metavar="CLAIM",
                   help="an existing ReadWriteMany claim mounted as /data in every pod (default: a new "
                        "autoglm-shared claim is part of the output)")


def run(args: argparse.Namespace) -> int:
    from autoglm.deploy.kubernetes.jobs import DEFAULT_BASE_DIR, pytorch_job, tune_job
    from autoglm.training.kubeflow import DEFAULT_IMAGE

    base_dir = args.base_dir or DEFAULT_BASE_DIR
    image = args.image
    if args.to == "pytorchjob":
        if args.device == "cuda" and image == DEFAULT_IMAGE:
            image = "autoglm:cuda"
        compiled = pytorch_job(args.file, nodes=args.nodes, nproc=args.nproc, device=args.device, image=image,
                               base_dir=base_dir, tracking_uri=args.tracking_uri, claim=args.pvc)
        what = f"PyTorchJob {compiled.name!r}"
    else:
        compiled = tune_job(args.file, workers=args.workers, image=image, base_dir=base_dir,
                            tracking_uri=args.tracking_uri, claim=args.pvc, study=args.study)
        what = f"indexed Job {compiled.name!r} ({args.workers} pods; Secret autoglm-secrets key optuna-storage)"
    out = Path(args.output or f"{compiled.name}.{args.to}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compiled.yaml(), encoding="utf-8")
    print(f"wrote {out} ({what}; image {image})")
    if compiled.data_files:
        print(f"  the pods read: {', '.join(compiled.data_files)} (copy them onto the shared volume)")
    if not args.tracking_uri:
        print("  note: no --tracking-uri: MLflow writes sqlite on the shared volume; give a tracking server for "
              "several pods")
    return 0
