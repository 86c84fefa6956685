"""The ``causal-lm`` trainer: full or LoRA fine-tuning of a GLM-architecture model on chats.

- :meth:`CausalLMTrainer.preprocess` reads ``data.train`` (and ``valid``/``test``) with
  :func:`autoglm.training.data.read_records`, validates every record, then templates and masks them
  (:mod:`autoglm.training.text_data`) into ``ctx.work_dir``.
- :meth:`CausalLMTrainer.train` builds the model (``config.model`` resolved as ``autoglm serve``
  resolves it), wraps it with peft LoRA for ``method: lora``, and runs :func:`autoglm.training.loop.train_loop`
  (fused AdamW, ``GradVarianceLR``, guards, checkpoints in ``ctx.work_dir/checkpoints``, exact resume).
  ``base_dtype`` holds a LoRA model's frozen base in bfloat16 (adapters and optimizer float32, attention
  upcast to float32 on CPU, where bfloat16 SDPA's backward is slow); the output is merged into ``dtype``
  from the base loaded again, never into the rounded bfloat16 copy. ``compile: true`` compiles the
  model's blocks for the training steps (:mod:`autoglm.training.compiled`).
  With ``ctx.world_size > 1`` it joins the process group (see :mod:`autoglm.training.distributed`)
  and trains a ``DistributedDataParallel`` model; only rank 0 writes.
- The output ``ctx.work_dir/model`` is what ``autoglm serve --model DIR`` takes: a full Hugging Face
  model directory (full fine-tune, or LoRA with ``merge: true``: weights, config, generation config,
  tokenizer with its chat template), or for ``merge: false`` a peft adapter directory
  (``adapter_config.json`` whose ``base_model_name_or_path`` is the base model's absolute directory,
  ``adapter_model.safetensors``, the tokenizer files and ``generation_config.json``). Both carry
  ``autoglm_training.json`` (method, base, steps, final metrics).
- :meth:`CausalLMTrainer.evaluate` scores either kind of output on the prepared test split (valid
  when there is none).

``objective: dpo`` (chosen/rejected pairs) and ``kto`` (unpaired examples with a true/false label) read
the rows :mod:`autoglm.training.preference` describes (``autoglm feedback export --format dpo|kto``
writes them) and train against the frozen starting weights as the reference, through the same loop.
This module knows nothing about the pipeline's run directories or MLflow; torch, transformers and peft
are imported only inside the methods.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from autoglm._runtime import native_bf16  # tests patch it here
from autoglm.errors import ConfigError
from autoglm.training.trainers._base import StageContext, Trainer, register_trainer

__all__ = ["CausalLMTrainer", "load_model_dir", "ADAPTER_CONFIG"]

TRAIN_EXTRA = 'pip install -c constraints.txt -e ".[train]"'
ADAPTER_CONFIG = "adapter_config.json"
SUMMARY_FILE = "autoglm_training.json"
_TOKENIZER_EXTRA = ("generation_config.json",)


def _require_peft() -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError(f"method: lora needs peft, part of the train extra: {TRAIN_EXTRA}") from e
    return peft


def _resolve(name: str, progress: bool) -> Path:
    from autoglm.config import EngineSettings
    from autoglm.hub.resolve import resolve_model

    return Path(resolve_model(name, EngineSettings(model=name), progress=progress).path)


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float64": torch.float64}[name]


def load_model_dir(model_dir: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of a trained output: a full model directory, or an adapter applied to its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        peft = _require_peft()
        base = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=_dtype(dtype))
        model = peft.PeftModel.from_pretrained(model, str(model_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(dtype))
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _cast_frozen(model: Any, dtype: Any) -> None:
    """Hold every parameter that does not train in ``dtype`` (buffers such as rotary frequencies keep theirs)."""
    import torch

    cast: dict[int, tuple[Any, Any]] = {}  # id -> (old, new): one new parameter per old one, tied weights stay tied
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and not p.requires_grad and p.dtype != dtype:
                if id(p) not in cast:
                    cast[id(p)] = (p, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))
                module._parameters[name] = cast[id(p)][1]


_F32_ATTENTION = "autoglm_sdpa_float32"


def _float32_attention(model: Any) -> None:
    """Run a bfloat16 model's attention in float32 (torch's SDPA on q, k, v upcast, its output cast back).

    On CPU the bfloat16 backward of SDPA is several times slower than the float32 one, and attention
    over these short sequences is a small share of the matmuls: upcasting costs far less than it saves."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        # query [B, H, T, D], key/value [B, KV, T, D]; the mask is boolean (or None) for SDPA
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
        return out.to(query.dtype), weights

    AttentionInterface.register(_F32_ATTENTION, attention)
    AttentionMaskInterface.register(_F32_ATTENTION, sdpa_mask)
    model.set_attn_implementation(_F32_ATTENTION)


@register_trainer
class CausalLMTrainer(Trainer):
    name = "causal-lm"

    # --- preprocess --------------------------------------------------------------------------------

    def preprocess(self, ctx: StageContext) -> dict[str, Any]:
        from transformers import AutoTokenizer

        from autoglm.training.data import read_records
        from autoglm.training.schema import PreprocessConfig
        from autoglm.training.preference import prepare_preference, preference_examples
        from autoglm.training.text_data import examples_from_records, prepare_splits

        pre = self.preprocess_config or PreprocessConfig()
        objective = self.config.objective
        splits: dict[str, Any] = {}
        for name in ("train", "valid", "test"):  # validate everything before tokenising anything
            path = self.data.resolve(getattr(self.data, name))
            if path is not None:
                records = read_records(path, self.data.format)
                splits[name] = (examples_from_records(records) if objective == "sft"
                                else preference_examples(records, objective))
        model_dir = _resolve(self.config.model, ctx.progress)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not tokenizer.chat_template:
            raise ConfigError(f"the model {self.config.model!r} has no chat template, which causal-lm needs to "
                              "format chats; use a chat model (GLM-4 chat, autoglm-demo)")
        if objective != "sft":
            meta = prepare_preference(splits, objective, tokenizer, model_dir, Path(ctx.work_dir), pre.max_length,
                                      valid_fraction=self.data.valid_fraction, seed=ctx.seed)
        else:
                meta = prepare_splits(splits, tokenizer, model_dir, Path(ctx.work_dir), pre.max_length,
                                  valid_fraction=self.data.valid_fraction, seed=ctx.seed,
                                  drop_duplicates=pre.drop_duplicates, progress=ctx.progress and ctx.is_main)
        out: dict[str, Any] = {}
        for split, stats in meta["splits"].items():
            out[f"{split}_examples"] = stats["examples"]
            out[f"{split}_tokens"] = stats["tokens"]
        out["truncated"] = sum(s["truncated"] for s in meta["splits"].values())
        return out

    def drift_data(self, prepared: Path) -> Any:
        """What the drift guard compares between runs: the users' text (prompt lengths and token mix) and
        the answers' text, one row per training example (read again from the data file: the prepared
        splits hold token ids only)."""
        from autoglm.training.data import read_records
        from autoglm.training.text_data import examples_from_records

        path = self.data.resolve(self.data.train)
        if self.config.objective != "sft":
            from autoglm.training.preference import drift_texts, preference_examples

            return drift_texts(preference_examples(read_records(path, self.data.format), self.config.objective))
        examples = examples_from_records(read_records(path, self.data.format))
        prompt = [" ".join(m["content"] for m in e.messages if m["role"] != "assistant") for e in examples]
        answer = [" ".join(m["content"] for m in e.messages if m["role"] == "assistant") for e in examples]
        return {"prompt": prompt, "answer": answer}

    # --- train -------------------------------------------------------------------------------------

    def _preference(self, meta: dict[str, Any], prepared: Path, device: Any) -> Any:
        """The DPO/KTO objective of a prepared directory, or None for SFT."""
        kind = meta.get("objective", "sft")
        if kind != self.config.objective:
            raise ConfigError(f"the prepared data is for objective {kind!r} but train.objective is "
                              f"{self.config.objective!r}; run preprocess again")
        if kind == "sft":
            return None
        from autoglm.training.preference import PreferenceObjective, load_preference_split

        return PreferenceObjective(kind, load_preference_split(prepared, "train"),
                                   load_preference_split(prepared, "valid"), int(meta["pad_token_id"]),
                                   self.config.batch_size, device=device)

    def base_dtype(self, device: Any = "cpu") -> str:
        """The dtype the model is held in while training: ``dtype``, or for LoRA the frozen base's
        ``base_dtype`` (``auto`` resolved for ``device``)."""
        wanted = self.config.base_dtype if self.config.method == "lora" else None
        if wanted == "auto":
            import torch

            wanted = "bfloat16" if native_bf16(torch.device(device)) else None
        return wanted or self.config.dtype

    def build_model(self, base_dir: Path, dtype: str | None = None, seed: int = 0, device: Any = "cpu",
                    compile: bool | None = None) -> Any:
        """The base model, LoRA-wrapped for ``method: lora`` (LoRA weights from the seed, so every rank agrees).

        ``dtype`` (default: the training dtypes) loads every weight in that dtype, as is, for merging. By
        default the weights load in ``train.dtype`` (float32 when the base is held in float32) and a LoRA
        model's frozen base is then cast to :meth:`base_dtype` after peft made the float32 adapters: they
        start from the same values whatever the base's precision, and the optimizer never sees a
        low-precision weight. A model held in bfloat16 on CPU computes attention in float32. ``compile``
        (default: ``train.compile`` for a training build, off when ``dtype`` is given) compiles its
        blocks for training steps (:mod:`autoglm.training.compiled`)."""
        import torch
        from transformers import AutoModelForCausalLM

        held = _dtype(dtype or self.base_dtype(device))  # what the frozen (or, full, every) weight is held in
        loaded = _dtype(dtype or self.config.dtype)
        if held == torch.float32:  # a float32 base under a lower dtype: from the checkpoint, not from a rounded copy
            loaded = held
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=loaded)
        model.config.use_cache = False
        if self.config.method == "lora":
            peft = _require_peft()
            lc = self.config.lora
            present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            unknown = [t for t in lc.target_modules if t not in present]
            if unknown:
                raise ConfigError(f"train.lora.target_modules: {unknown} are not modules of {self.config.model!r}; "
                                  f"its linear layers include q_proj, k_proj, v_proj, o_proj, gate_up_proj, down_proj")
            torch.manual_seed(seed)
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                task_type="CAUSAL_LM"))
            if held != loaded:
                _cast_frozen(model, held)
        if dtype is None and held == torch.bfloat16 and torch.device(device).type == "cpu":
            _float32_attention(model)
        if compile is None:
            compile = self.config.compile and dtype is None
        if compile:
            from autoglm.training.compiled import compile_blocks

            compile_blocks(model, device)
        return model

    def build_optimizer(self, params: list[Any]) -> Any:
        """AdamW over ``params``; the fused kernel (one pass over each tensor, CPU and CUDA) where every
        parameter allows it: for a full fine-tune the per-tensor loop of plain AdamW is a large part of a step."""
        import torch

        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                 **({"fused": True} if fused else {}))

    def train(self, prepared: Path, ctx: StageContext) -> dict[str, Any]:
        import torch

        from autoglm.training.adaptive import GradVarianceLR
        from autoglm.training.distributed import ensure_process_group
        from autoglm.training.guards import create_guard
        from autoglm.training.loop import train_loop
        from autoglm.training.text_data import load_split, read_meta

        meta = read_meta(prepared)
        base_dir = Path(meta["model"])
        if not base_dir.is_dir():
            base_dir = _resolve(self.config.model, ctx.progress)
        ensure_process_group(ctx.world_size, self.config.distributed.backend)
        device = torch.device("cpu")
        if torch.cuda.is_available():
            device = torch.device("cuda", ctx.rank % torch.cuda.device_count())
        if self.config.compile and ctx.is_main and ctx.progress:
            print("[train] compiling the model's blocks with torch.compile: the first step waits for it "
                  "(about a minute on 2 cold CPU cores; seconds once inductor's cache has them)",
                  file=sys.stderr, flush=True)
        model = self.build_model(base_dir, seed=ctx.seed, device=device).to(device)
        objective = self._preference(meta, prepared, device)
        if objective is not None:  # the reference: these starting weights, before any step or resume
            objective.compute_reference(model)
            train_set, valid_set = objective.train, objective.valid
        else:
            train_set, valid_set = load_split(prepared, "train"), load_split(prepared, "valid")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.build_optimizer(params)
        per_step = self.config.batch_size * self.config.grad_accum * ctx.world_size
        total = self.config.max_steps or self.config.epochs * -(-len(train_set) // per_step)
        scheduler = GradVarianceLR.from_config(optimizer, self.config.adaptive_lr, self.config.scheduler, total,
                                               on_change=ctx.emit)
        guards = [create_guard(g.type, **g.settings()) for g in self.config.guards]
        ddp = None
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ctx.is_main:
            n_train = sum(p.numel() for p in params)
            ctx.log_params({"method": self.config.method, "trainable_params": n_train,
                            "total_params": sum(p.numel() for p in model.parameters()),
                            "world_size": ctx.world_size, "total_steps": total,
                            "base_dtype": self.base_dtype(device)})
        pre_shuffle = getattr(self.preprocess_config, "shuffle", True) if self.preprocess_config else True
        result = train_loop(model, train_set, valid_set, self.config, ctx, optimizer=optimizer, scheduler=scheduler,
                            guards=guards, pad_id=int(meta["pad_token_id"]), shuffle=pre_shuffle, device=device,
                            ddp=ddp, objective=objective)
        final = result.evals[-1] if result.evals else {}
        metrics: dict[str, Any] = {
            "steps": result.steps, "resumed_from": result.start_step,
            "train_loss": result.history[-1]["loss"] if result.history else float("nan"),
            "eval_loss": final.get("eval_loss", float("nan")), "perplexity": final.get("perplexity", float("nan")),
            "skipped_steps": sum(1 for h in result.history if h["skipped"]),
            "tokens_per_s": result.tokens / result.seconds if result.seconds > 0 else 0.0,
        }
        metrics.update({k: v for k, v in final.items() if k not in metrics and k not in ("step", "eval_tokens")})
        if ctx.is_main:
            self._write_output(model, base_dir, Path(ctx.work_dir) / "model", metrics, seed=ctx.seed)
            (Path(ctx.work_dir) / "history.json").write_text(
                json.dumps({"history": result.history, "evals": result.evals}), encoding="utf-8")
        if ctx.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return metrics

    def _merged(self, model: Any, base_dir: Path, seed: int) -> Any:
        """The LoRA model merged into ``train.dtype``. A base trained in another precision is not merged
        into: its weights were rounded, and a bfloat16 weight would round most of the update away. The
        trained adapters go onto the base loaded again in ``dtype``, and that is merged."""
        import torch

        from autoglm.training.checkpoint import trainable_state
        from autoglm.training.guards.heads import apply_head_mask_config, load_head_mask

        frozen = next(p for p in model.parameters() if not p.requires_grad)
        if frozen.dtype == _dtype(self.config.dtype):
            return model.merge_and_unload()
        with torch.random.fork_rng(devices=[]):
            fresh = self.build_model(base_dir, dtype=self.config.dtype, seed=seed)
        unexpected = fresh.load_state_dict(trainable_state(model), strict=False).unexpected_keys
        if unexpected:  # pragma: no cover - the same build twice
            raise RuntimeError(f"adapter weights do not fit the reloaded base: {sorted(unexpected)[:3]}")
        apply_head_mask_config(fresh.config, load_head_mask(model))  # heads the structure guard removed
        return fresh.merge_and_unload()

    def _write_output(self, model: Any, base_dir: Path, out: Path, metrics: dict[str, Any], seed: int = 0) -> None:
        from transformers import AutoTokenizer

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lora = self.config.method == "lora"
        trained_in = str(next(model.parameters()).dtype).removeprefix("torch.")  # the (frozen) base's dtype
        if lora and not self.config.merge:
            model.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
            model.save_pretrained(tmp)
        else:
            from autoglm.training.guards.heads import bake_head_mask

            merged = self._merged(model, base_dir, seed) if lora else model
            merged.config.use_cache = True
            bake_head_mask(merged)  # heads the structure guard removed stay removed in every engine
            merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        for name in _TOKENIZER_EXTRA:  # the base's stop tokens: what the server stops generation on
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, tmp / name)
        summary = {"trainer": self.name, "method": self.config.method, "merged": not lora or self.config.merge,
                   "trained_dtype": trained_in,
                   "base_model": str(base_dir.resolve()), "config_model": self.config.model, "metrics": metrics}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)

    # --- evaluate ----------------------------------------------------------------------------------

    def evaluate(self, prepared: Path, model: Path, ctx: StageContext) -> dict[str, float]:
        import torch

        from autoglm.training.loop import evaluate_split
        from autoglm.training.text_data import load_split, read_meta

        meta = read_meta(prepared)
        split = ctx.extra.get("split") or ("test" if "test" in meta["splits"] else "valid")
        if split == "test" and "test" not in meta["splits"]:
            split = "valid"
        net, _ = load_model_dir(Path(model), self.config.dtype)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if meta.get("objective", "sft") != "sft":
            return self._evaluate_preference(meta, Path(prepared), split, net.to(device), device)
        metrics = evaluate_split(net.to(device), load_split(prepared, split), int(meta["pad_token_id"]),
                                 self.config.batch_size, device)
        return {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]}

    def _evaluate_preference(self, meta: dict[str, Any], prepared: Path, split: str, net: Any,
                             device: Any) -> dict[str, float]:
        """The trained model against its base (the reference) on a prepared DPO/KTO split."""
        from transformers import AutoModelForCausalLM

        from autoglm.training.preference import PreferenceObjective, evaluate_preference, load_preference_split

        data = load_preference_split(prepared, split)
        obj = PreferenceObjective(meta["objective"], data, data, int(meta["pad_token_id"]), max(2, self.config.batch_size),
                                  device=device)
        base_dir = Path(meta["model"]) if Path(meta["model"]).is_dir() else _resolve(self.config.model, False)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_dtype(self.config.dtype)).to(device)
        obj.compute_reference(base)
        del base
        metrics = evaluate_preference(obj, net, data, obj.ref["valid"])
        return {k: v for k, v in metrics.items() if k != "perplexity"}
