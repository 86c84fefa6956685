"""``autoglm deploy FILE --to kubernetes [--out DIR] [--check]``: the deploy file as a kustomize tree.

Thin: read the file, call :func:`autoglm.deploy.kubernetes.render_kustomize` (architectures found the
way ``autoglm plan`` finds them), write the tree, print what went where; ``--check`` renders every
overlay with ``kubectl kustomize`` and validates each object offline (the ``k8s`` extra).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]


def _positive(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kubernetes (--to kubernetes)")
    g.add_argument("--to", choices=("kubernetes",), default=None,
                   help="write manifests instead of serving: a kustomize tree (base + cpu, cuda, kserve-cpu, "
                        "kserve-cuda overlays)")
    g.add_argument("--out", default=None, metavar="DIR", help="where to write the tree (default: k8s/)")
    g.add_argument("--namespace", default="autoglm", help="namespace of every object (default: autoglm)")
    g.add_argument("--cpu-memory-gb", type=_positive, default=32.0, metavar="X",
                   help="RAM a CPU model pod may use, for the planner (default: 32)")
    g.add_argument("--gpu-memory-gb", type=_positive, default=80.0, metavar="X",
                   help="memory of one GPU, for the planner (default: 80)")
    g.add_argument("--max-replicas", type=int, default=None, metavar="N",
                   help="autoscaling ceiling per model (default: max(4, 4 x replicas))")
    g.add_argument("--prometheus-url", default="http://prometheus-operated.monitoring.svc:9090",
                   help="Prometheus the autoscaler queries")
    g.add_argument("--image-cpu", default="autoglm:cpu", help="image from deploy/docker/Dockerfile.cpu")
    g.add_argument("--image-cuda", default="autoglm:cuda", help="image from deploy/docker/Dockerfile.cuda")
    g.add_argument("--models-pvc", default=None, metavar="CLAIM",
                   help="a PersistentVolumeClaim holding pulled models, mounted as /data (default: emptyDir)")
    g.add_argument("--check", action="store_true",
                   help="render every overlay with kubectl kustomize and validate it offline (the k8s extra)")


def run(args: argparse.Namespace) -> int:
    from autoglm.cli.plan import load_arch
    from autoglm.deploy.kubernetes import OVERLAYS, KubeOptions, Target, render_kustomize, write_tree
    from autoglm.deploy.loader import load_deploy_file
    from autoglm.errors import ConfigError

    if args.max_replicas is not None and args.max_replicas < 1:
        raise ConfigError(f"--max-replicas must be at least 1; got {args.max_replicas}")
    config = load_deploy_file(args.file)
    opts = KubeOptions(namespace=args.namespace, image_cpu=args.image_cpu, image_cuda=args.image_cuda,
                       max_replicas=args.max_replicas, prometheus_url=args.prometheus_url,
                       cpu=Target("cpu", memory_gb=args.cpu_memory_gb),
                       cuda=Target("cuda", gpu_memory_gb=args.gpu_memory_gb),
                       models_pvc=args.models_pvc)
    files = render_kustomize(config, opts, arch_of=load_arch)
    out = Path(args.out or "k8s")
    write_tree(files, out)
    print(f"autoglm: wrote {len(files)} files to {out}/ (kustomize: base + overlays "
          f"{', '.join(OVERLAYS)})")
    print(f"  next: read {out / 'README.md'} (the Secret to create), then kubectl apply -k {out / 'overlays' / 'cpu'}")
    if args.check:
        return _check(out)
    return 0


def _check(out: Path) -> int:
    from autoglm.deploy.kubernetes import OVERLAYS
    from autoglm.deploy.kubernetes.validate import K8S_VERSION, kustomize_build, validate_objects

    bad = 0
    for overlay in OVERLAYS:
        objs: list[Any] = kustomize_build(out / "overlays" / overlay)
        problems = validate_objects(objs)
        bad += len(problems)
        status = "valid" if not problems else f"{len(problems)} problem(s)"
        print(f"  overlays/{overlay}: {len(objs)} objects, {status} (Kubernetes {K8S_VERSION} schemas + CRDs)")
        for line in problems[:20]:
            print(f"    {line}")
    return 1 if bad else 0
