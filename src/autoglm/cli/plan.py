"""``autoglm plan MODEL``: which precision, batch and context would fit, without loading weights.

Reads the model's architecture numbers -- a local directory's ``config.json`` (and the checkpoint's
size on disk), a demo model's config, a downloaded copy in the store, or the alias registry -- detects
the device (or takes ``--free-gb`` to describe one that is not here) and prints the planner's table and
its reasons. Thin: the arithmetic is :mod:`autoglm.quantization.planner`. torch is imported only to
detect a real GPU.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError, ModelNotFoundError, UnsupportedError

__all__ = ["register", "run", "load_arch"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
GiB = 1024**3

# Used only when the registry module is missing: glm-4-9b-chat-hf's published config.json numbers.
_FALLBACK = {
    "glm-4-9b-chat": dict(model_type="glm", hidden_size=4096, num_hidden_layers=40, num_attention_heads=32,
                          num_key_value_heads=2, head_dim=128, intermediate_size=13696, vocab_size=151552,
                          max_position_embeddings=131072, attention_bias=True, tie_word_embeddings=False,
                          torch_dtype="bfloat16"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="show which precision/batch/context fits a model on this device (loads no weights)",
        description="Estimate weights, KV-cache and overhead memory per precision and show what "
                    "`--quantize auto` would choose. Loads no weights; works offline.")
    p.add_argument("model", nargs="?", default="autoglm-demo",
                   help="alias (glm-4-9b-chat), repo id, or local directory with config.json (default: autoglm-demo)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}", help="device (default: auto)")
    p.add_argument("--quantize", default="auto", metavar="{auto,none,fp32,bf16,fp16,int8,int4}",
                   help="precision to check (default: auto = the best that fits)")
    p.add_argument("--max-model-len", default=None, metavar="N",
                   help="prompt + output tokens per sequence (default: min(model limit, 4096))")
    p.add_argument("--max-num-seqs", default="16", metavar="N", help="sequences decoded together (default: 16)")
    p.add_argument("--prefix-cache-tokens", default="8192", metavar="N",
                   help="KV cells the prefix cache keeps beside the batch, as `serve` (default: 8192; 0: off)")
    p.add_argument("--free-gb", default=None, metavar="X",
                   help="pretend the device has X GiB free (e.g. --device cuda --free-gb 12 for a 12 GB GPU)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _int_flag(value: str | None, flag: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a whole number, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {n}")
    return n


def _float_flag(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a number of GiB such as 12 or 23.5, got {value!r}") from None
    if not x > 0 or x != x or x == float("inf"):
        raise ConfigError(f"{flag} must be a positive number of GiB, got {value!r}")
    return x


def _disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path / 'config.json'}: {exc}") from None


def load_arch(name: str) -> tuple[Any, list[str]]:
    """The :class:`ModelArch` of ``name`` and notes on where its numbers came from. Loads no weights."""
    from autoglm.quantization.planner import ModelArch

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: point at a model directory "
                                     "(the one with config.json and the weights)")
        arch = ModelArch.from_config(_read_config(path), name=path.name)
        notes = [f"architecture from {path / 'config.json'}"]
        size = _disk_size(path)
        if size:
            notes.append(f"checkpoint on disk: {size / GiB:.2f} GiB (estimate: {arch.num_parameters / 1e6:,.0f}M "
                         f"parameters)")
        return arch, notes

    try:
        from autoglm.hub import demo

        if demo.is_demo_model(name):
            arch = ModelArch.from_config(demo.demo_config(name), name=name)
            if name in demo.VISION_DEMOS:  # the config's text numbers leave out the vision tower
                from autoglm.hub import demo_vision

                arch.num_parameters = demo_vision.num_parameters(name)
            return arch, [f"demo model {name} (random weights)"]
    except ImportError:
        pass

    spec = None
    try:
        from autoglm.hub.registry import resolve_name

        spec = resolve_name(name)
    except ImportError:
        pass
    if spec is not None:
        stored = _stored_config(spec)
        if stored is not None:
            return ModelArch.from_config(stored[0], name=spec.name), [f"architecture from {stored[1]}"]
        if getattr(spec, "is_moe", False):  # a mixture of experts: the registry's own config, experts included
            arch = ModelArch.from_config(spec.config_dict(), name=spec.name)
            # a vision MoE (GLM-4.5V): the spec's count has the vision tower, which its text config does not
            arch.num_parameters = max(arch.num_parameters, int(getattr(spec, "num_parameters", 0) or 0))
            return arch, [f"architecture from the alias registry ({spec.hf_repo or spec.name})"]
        numbers = {k: getattr(spec, k, None) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings")}
        if None not in numbers.values():
            arch = ModelArch.from_config({**numbers, "model_type": "glm", "attention_bias": True,
                                          "torch_dtype": getattr(spec, "torch_dtype", "bfloat16")}, name=spec.name)
            if getattr(spec, "num_parameters", None):
                arch.num_parameters = int(spec.num_parameters)
            return arch, [f"architecture from the alias registry ({spec.hf_repo or spec.name})"]

    cached = _hf_cached_config(name)
    if cached is not None:
        return ModelArch.from_config(cached[0], name=name), [f"architecture from {cached[1]}"]
    if name.lower() in _FALLBACK:
        return ModelArch.from_config(_FALLBACK[name.lower()], name=name.lower()), ["architecture from a built-in table"]
    raise ModelNotFoundError(
        f"cannot find the architecture of {name!r} without downloading: use a local directory with config.json, "
        "a known alias (see `autoglm models`), or `autoglm pull` it first")


def _stored_config(spec: Any) -> tuple[dict[str, Any], Path] | None:
    """config.json of a downloaded copy in the local store, if there is one."""
    try:
        from autoglm.config import default_store_dir
        from autoglm.hub.store import ModelStore

        store = ModelStore(default_store_dir())
        for repo in (spec.hf_repo, spec.modelscope_repo):
            hit = store.find(repo) if repo else None
            if hit is not None and (Path(hit.path) / "config.json").is_file():
                return _read_config(Path(hit.path)), Path(hit.path) / "config.json"
    except (ImportError, AttributeError, OSError):
        return None
    return None


def _hf_cached_config(name: str) -> tuple[dict[str, Any], Path] | None:
    """config.json of ``org/name`` in the Hugging Face cache, without touching the network."""
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id, an old huggingface_hub: just "not cached"
        return None
    if isinstance(hit, str):
        return json.loads(Path(hit).read_text(encoding="utf-8")), Path(hit)
    return None


def _device(requested: str, free_gb: float | None) -> Any:
    from autoglm.quantization.device import DeviceInfo, detect_device

    kind = requested.partition(":")[0]
    if free_gb is not None:
        free = int(free_gb * GiB)
        if kind in ("cuda", "mps"):  # describe a device that need not be here; no torch import
            return DeviceInfo(kind=kind, name=f"{kind} with {free_gb:g} GiB free (--free-gb)", total_bytes=free,
                              free_bytes=free, supports_bf16=kind == "cuda")
        dev = detect_device(requested)
        return DeviceInfo(kind=dev.kind, name=f"{dev.name}; free memory set by --free-gb", index=dev.index,
                          total_bytes=max(dev.total_bytes, free), free_bytes=free, supports_bf16=dev.supports_bf16)
    return detect_device(requested)


def run(args: argparse.Namespace) -> int:
    from autoglm.config import QUANTIZE_CHOICES
    from autoglm.quantization.planner import plan_precision

    device_req = str(args.device).strip().lower()
    kind, _, idx = device_req.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (idx and (kind != "cuda" or not idx.isdigit())):
        raise ConfigError(f"--device {args.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    quantize = str(args.quantize).strip().lower()
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize {args.quantize!r} is not a precision: use one of {', '.join(QUANTIZE_CHOICES)}")
    max_model_len = _int_flag(args.max_model_len, "--max-model-len")
    max_num_seqs = _int_flag(args.max_num_seqs, "--max-num-seqs")
    free_gb = _float_flag(args.free_gb, "--free-gb")
    prefix_tokens = _int_flag(args.prefix_cache_tokens, "--prefix-cache-tokens", minimum=0) or 0

    arch, notes = load_arch(args.model)
    try:
        device = _device(device_req, free_gb)
    except UnsupportedError as exc:
        raise UnsupportedError(f"{exc} (to plan for a device that is not here, add --free-gb X)") from None
    plan = plan_precision(arch, device, quantize, max_model_len=max_model_len, max_num_seqs=max_num_seqs or 16,
                          extra_kv_tokens=prefix_tokens)

    if args.json:
        out = plan.to_dict()
        out["architecture"] = {k: getattr(arch, k) for k in arch.__dataclass_fields__}
        out["notes"] = notes
        print(json.dumps(out, indent=2))
        return 0
    print(plan.table())
    print()
    print(f"choice: --quantize {plan.precision} --max-model-len {plan.max_model_len} "
          f"--max-num-seqs {plan.max_num_seqs}")
    for line in notes + plan.reasons:
        print(f"  - {line}")
    return 0
