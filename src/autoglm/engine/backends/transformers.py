"""The transformers backend: any Hugging Face causal LM (GLM-4 first), on CPU, CUDA or Apple MPS,
with continuous batching (:mod:`autoglm.engine.core`).

Loading is: resolve the name to a local directory (:mod:`autoglm.hub.resolve`, which pulls what is
missing), plan the precision from free memory (:mod:`autoglm.quantization`), load the weights,
apply the precision. Everything after loading is the shared loop engine.
"""
from __future__ import annotations

import logging
from typing import Any

from autoglm.config import EngineSettings
from autoglm.engine.base import register_engine
from autoglm.engine.loop import LoadedModel, LoopEngine

__all__ = ["TransformersEngine", "load_transformers_model", "eos_token_ids"]

log = logging.getLogger("autoglm.engine")

_DTYPES = {"fp32": "float32", "none": None, "bf16": "bfloat16", "fp16": "float16"}


@register_engine("transformers")
class TransformersEngine(LoopEngine):
    def __init__(self, settings: EngineSettings):
        super().__init__(
            settings.name,
            max_num_seqs=settings.max_num_seqs,
            max_queue=settings.max_queue,
            request_timeout=settings.request_timeout,
            prefill_chunk=settings.prefill_chunk,
            prefix_cache_tokens=settings.prefix_cache_tokens,
        )
        self.settings = settings

    def _load(self) -> LoadedModel:
        return load_transformers_model(self.settings)


def eos_token_ids(path: Any, config: Any, tokenizer: Any) -> list[int]:
    from transformers import GenerationConfig

    ids: list[int] = []
    try:
        gen = GenerationConfig.from_pretrained(path)
        ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    except (OSError, ValueError):
        pass
    if not any(i is not None for i in ids):
        eos = getattr(config, "eos_token_id", None)
        ids = eos if isinstance(eos, list) else [eos]
    if not any(i is not None for i in ids) and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return [int(i) for i in ids if i is not None]


def load_transformers_model(settings: EngineSettings) -> LoadedModel:
    """Resolve, plan, load and quantize ``settings.model``; log each decision with its reason."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from autoglm.engine.fused import fuse_qkv, fusion_skip_reason
    from autoglm.hub.resolve import resolve_model
    from autoglm.quantization import ModelArch, apply_precision, detect_device, load_kwargs, plan_precision
    from autoglm.quantization.export import is_quantized_dir, load_quantized, read_manifest

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    resolved = resolve_model(settings.model, settings)
    path = resolved.path
    config = AutoConfig.from_pretrained(path)
    device = detect_device(settings.device)
    text_cfg = config.get_text_config()
    prequantized = is_quantized_dir(path)
    requested = settings.quantize
    if prequantized:
        # a copy written by `autoglm quantize`: its precision is fixed; plan only the limits
        requested = read_manifest(path).get("precision") or requested
    plan = plan_precision(
        ModelArch.from_config(text_cfg),
        device,
        requested=requested,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        extra_kv_tokens=settings.prefix_cache_tokens,  # the prefix cache's copies live beside the batch
    )
    for reason in plan.reasons:
        log.info("plan: %s", reason)
    if prequantized:
        model = load_quantized(path, device=device.kind)
    else:
        kwargs = load_kwargs(plan.precision, device)
        kwargs.setdefault("dtype", _load_dtype(plan.precision, device.kind))
        auto = AutoModelForCausalLM
        if getattr(config, "vision_config", None) is not None:  # GLM-4.1V / 4.5V: images in chat
            from transformers import AutoModelForImageTextToText as auto
        model = auto.from_pretrained(path, **kwargs)
        model.eval()
        fused = fuse_qkv(model)  # before quantizing: the quantizer then sees one larger linear
        if fused:
            log.info("fused the Q/K/V projections of %d attention layers", fused)
        else:  # another architecture (e.g. GLM-4.5's Glm4MoeAttention): served as transformers has it
            log.info("Q/K/V fusion skipped: %s", fusion_skip_reason(model))
        model = apply_precision(model, plan.precision, device)  # also places it on the device
    tokenizer = AutoTokenizer.from_pretrained(path)
    from autoglm.engine.vision import load_vision

    vision = load_vision(path, config)  # None for a text-only model
    if vision is not None:
        log.info("vision: images in chat messages (%s image processor)", type(vision.image_processor).__name__)
    description = ""
    if resolved.spec is not None:
        description = getattr(resolved.spec, "description", "") or ""
    info = {
        "path": str(path),
        "precision": plan.precision,
        "device": device.kind,
        "reasons": list(plan.reasons),
    }
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        max_model_len=plan.max_model_len,
        eos_token_ids=eos_token_ids(path, config, tokenizer),
        device=device.torch_device,
        description=description,
        info=info,
        vision=vision,
    )


def _load_dtype(precision: str, device_kind: str) -> Any:
    import torch

    if precision == "none":
        return "auto" if device_kind != "cpu" else torch.float32
    name = _DTYPES.get(precision)
    if name is not None:
        return getattr(torch, name)
    # quantized: load in fp32 on CPU (dynamic int8 quantizes fp32 Linear layers), 16-bit on GPU
    return torch.float32 if device_kind == "cpu" else torch.bfloat16
