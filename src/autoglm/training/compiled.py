"""torch.compile for training steps: each transformer block compiled once, run only where it pays.

``train.compile: true`` compiles every transformer block of the model (the module classes transformers
names in ``_no_split_modules``, e.g. ``Glm4DecoderLayer``) with ``torch.compile(dynamic=True)``: one
graph for every sequence length, so batches padded to different lengths do not compile again, and
with ``use_cache`` off (as the trainer has it) one graph for all the blocks of a model. A
compiled block runs only while it trains with gradients enabled, i.e. in a training step; evaluation,
generation and the guards' probes (eval mode or ``no_grad``) run the block's own eager forward, as
without compiling, and never wait for a compile.

Why: on a CPU a small model's step is dominated by per-operator overhead (norms, rotary embeddings,
residual adds and their autograd nodes), and inductor fuses those into a few loops. A LoRA step, whose
matmuls are the cheap part, gains the most (``benchmarks/lora_vs_full.py``).

Cost: the first training step waits for the compile (about a minute on 2 cold CPU cores, with a C++
compiler); inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) brings later runs of the same model
down to seconds. Numbers: the same computation, fused; float32 steps agree with eager ones to rounding.

Hooks: dynamo does not see forward hooks added to a compiled block's submodules after it traced them
(torch's ``skip_nnmodule_hook_guards``), so code that adds, removes or changes what such hooks do calls
:func:`retrace` (the head masker does): the next training step traces again. The masker's hooks are
per layer, so a masked model traces one graph per block (a prune costs a compile of that many graphs).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["blocks", "compile_blocks", "is_compiled", "retrace"]

_FLAG = "_autoglm_compiled"
_CXX = ("g++", "c++", "clang++")


def blocks(model: Any) -> list[Any]:
    """The model's transformer blocks: modules whose class a transformers model lists in ``_no_split_modules``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _has_cxx() -> bool:
    wanted = os.environ.get("CXX")
    return any(shutil.which(c) for c in ((wanted,) if wanted else _CXX))


def compile_blocks(model: Any, device: Any = "cpu") -> int:
    """Compile every block of ``model`` in place (see the module docstring); returns how many. The
    module tree, parameters and ``state_dict`` stay as they were."""
    import torch

    found = blocks(model)
    if not found:
        raise ConfigError(f"train.compile: {type(model).__name__} names no transformer blocks "
                          "(_no_split_modules) to compile; set compile: false")
    if torch.device(device).type == "cpu" and not _has_cxx():
        raise ConfigError("train.compile: torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH; "
                          "install one (apt-get install g++) or set compile: false")
    # The blocks share one graph; hooks with a per-layer closure (the head masker's) give each block its
    # own, and past dynamo's recompile limit a block would run eager: allow one per block.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, len(found) + 8)
    for block in found:
        if getattr(block, _FLAG, False):
            continue
        eager = block.forward
        compiled = torch.compile(eager, dynamic=True)

        def forward(*args: Any, _eager: Any = eager, _compiled: Any = compiled, _block: Any = block,
                    **kwargs: Any) -> Any:
            if _block.training and torch.is_grad_enabled():
                return _compiled(*args, **kwargs)
            return _eager(*args, **kwargs)

        block.forward = forward
        setattr(block, _FLAG, True)
    return len(found)


def is_compiled(model: Any) -> bool:
    """Whether any block of ``model`` was compiled by :func:`compile_blocks`."""
    return any(getattr(m, _FLAG, False) for m in model.modules())


def retrace(model: Any) -> bool:
    """Make the compiled blocks of ``model`` trace again on their next call (after a hook inside them
    changed); returns whether there was anything to retrace. Process-wide (``torch.compiler.reset()``):
    any other compiled code of the process traces again too."""
    if not is_compiled(model):
        return False
    import torch

    torch.compiler.reset()
    return True
