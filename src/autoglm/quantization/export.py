"""Write a quantized copy of a model to a directory, and load it back.

Two layouts, both with a manifest ``autoglm_quantized.json`` next to ``config.json`` and the tokenizer:

* ``hf`` -- fp32/bf16/fp16 casts (and bitsandbytes int8/int4 on CUDA): an ordinary transformers
  checkpoint in that dtype; ``AutoModelForCausalLM.from_pretrained`` loads it as well as
  :func:`load_quantized` does.
* ``dynamic-int8`` -- CPU int8 (torch dynamic quantization). A quantized tensor cannot be written to
  safetensors, so each quantized linear is stored as its parts -- ``<name>.qweight`` (int8
  ``[out, in]``), ``<name>.scales`` (float64, per output channel or one), ``<name>.zero_points``
  (int64) and ``<name>.bias`` -- and every other tensor (embeddings, norms, attention biases) under
  its own state-dict name, all in ``model-int8.safetensors``. The manifest lists the linears and
  their quantization scheme. There is deliberately no ``model.safetensors``: ``from_pretrained``
  on this directory fails loudly instead of loading random weights. :func:`load_quantized` rebuilds
  the model from ``config.json`` and puts back the very same int8 values and scales, so its
  logits equal those of the in-memory int8 model.

This module knows nothing about how the precision was chosen, about the store layout or about
quality; torch and transformers are imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError, ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["MANIFEST", "save_quantized", "load_quantized", "is_quantized_dir", "read_manifest",
           "copy_tokenizer_files"]

MANIFEST = "autoglm_quantized.json"
INT8_WEIGHTS = "model-int8.safetensors"
FORMAT_VERSION = 1
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{str(path)!r} has no {MANIFEST}: it was not written by `autoglm quantize`; "
                                 "load it with from_pretrained or quantize it first") from None
    except ValueError as exc:
        raise ConfigError(f"{Path(path) / MANIFEST} is not valid JSON ({exc}); re-run `autoglm quantize`") from None


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer and generation-config files that exist in ``src`` (a model directory) to ``dst``."""
    for name in _TOKENIZER_FILES:
        f = Path(src) / name
        if f.is_file():
            shutil.copy2(f, Path(dst) / name)


def _dynamic_linears(model: nn.Module) -> dict[str, Any]:
    return {n: m for n, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")}


def save_quantized(model: nn.Module, precision: str, out_dir: str | Path, source_dir: str | Path | None = None,
                   reference: str | None = None) -> Path:
    """Write ``model`` (already converted by ``apply_precision``) to ``out_dir``; tokenizer files come from
    ``source_dir``. Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    linears = _dynamic_linears(model)
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "precision": precision,
                                "reference": reference}
    if linears:
        manifest.update(format="dynamic-int8", weights=INT8_WEIGHTS, linears=_save_int8(model, linears, out))
        model.config.save_pretrained(out)
    else:
        if any(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in model.modules()):
            manifest["format"] = "hf-bitsandbytes"
        else:
            manifest["format"] = "hf"
        model.save_pretrained(out)
    if source_dir is not None:
        copy_tokenizer_files(source_dir, out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")  # last: marks it whole
    return out


def _save_int8(model: nn.Module, linears: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, lin in linears.items():
        qw = lin.weight()  # quantized tensor [out, in]
        scheme = str(qw.qscheme()).rpartition(".")[2]  # per_channel_affine | per_tensor_affine
        if scheme.startswith("per_channel"):
            scales, zps, axis = qw.q_per_channel_scales(), qw.q_per_channel_zero_points(), int(qw.q_per_channel_axis())
        elif scheme.startswith("per_tensor"):
            scales, zps, axis = torch.tensor([qw.q_scale()]), torch.tensor([qw.q_zero_point()]), None
        else:
            raise UnsupportedError(f"cannot save quantization scheme {scheme} of {name}; use --to bf16 instead")
        tensors[f"{name}.qweight"] = qw.int_repr().contiguous()
        tensors[f"{name}.scales"] = scales.to(torch.float64).contiguous()
        tensors[f"{name}.zero_points"] = zps.to(torch.int64).contiguous()
        bias = lin.bias()
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().float().contiguous()
        meta[name] = {"qscheme": scheme, "axis": axis, "in_features": lin.in_features,
                      "out_features": lin.out_features, "bias": bias is not None}
    prefixes = tuple(n + "." for n in linears)
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.startswith(prefixes) and not value.is_quantized:
            tensors[key] = value.detach().contiguous()
    save_file(tensors, str(out / INT8_WEIGHTS), metadata={"format": "pt", "autoglm": "dynamic-int8"})
    return meta


def load_quantized(path: str | Path, device: str | None = None) -> nn.Module:
    """Load a directory written by :func:`save_quantized` (eval mode)."""
    path = Path(path)
    manifest = read_manifest(path)
    fmt = manifest.get("format")
    from transformers import AutoModelForCausalLM

    if fmt == "hf":
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
        return (model.to(device) if device else model).eval()
    if fmt == "hf-bitsandbytes":
        return AutoModelForCausalLM.from_pretrained(path, device_map={"": device or "cuda"}).eval()
    if fmt != "dynamic-int8":
        raise ConfigError(f"{path / MANIFEST}: unknown format {fmt!r}; re-run `autoglm quantize` with this version")
    if device not in (None, "cpu"):
        raise UnsupportedError(f"a dynamic-int8 copy runs on the CPU only, not {device!r}; quantize for that device "
                               "with `autoglm quantize MODEL --to int8 --device cuda`")
    return _load_int8(path, manifest)


def _load_int8(path: Path, manifest: dict[str, Any]) -> nn.Module:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoglm.quantization.quantizers import _quiet_ao

    with _quiet_ao():
        import torch.ao.nn.quantized.dynamic as nnqd
    config = AutoConfig.from_pretrained(path)
    tensors = load_file(str(path / manifest.get("weights", INT8_WEIGHTS)))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    linears: dict[str, dict[str, Any]] = manifest["linears"]
    qparts = {k: tensors.pop(k) for k in [k for k in tensors if k.rpartition(".")[0] in linears]}
    # the plain tensors go in first: a quantized linear's own state-dict hook wants keys we do not write
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise ConfigError(f"{path / INT8_WEIGHTS} holds tensors this config has no place for: {unexpected[:3]}; "
                          "re-run `autoglm quantize`")
    left = [k for k in missing if k.rpartition(".")[0] not in linears]
    if left:
        raise ConfigError(f"{path / INT8_WEIGHTS} lacks {left[:3]}; re-run `autoglm quantize`")
    with _quiet_ao(), torch.no_grad():
        for name, info in linears.items():
            q, scales, zps = qparts[f"{name}.qweight"], qparts[f"{name}.scales"], qparts[f"{name}.zero_points"]
            if info["qscheme"].startswith("per_channel"):
                qw = torch._make_per_channel_quantized_tensor(q, scales, zps, info["axis"])
            else:
                qw = torch._make_per_tensor_quantized_tensor(q, float(scales[0]), int(zps[0]))
            lin = nnqd.Linear(info["in_features"], info["out_features"], bias_=info["bias"], dtype=torch.qint8)
            lin.set_weight_bias(qw, qparts.get(f"{name}.bias"))
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, lin)
    return model.eval()
