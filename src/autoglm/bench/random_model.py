"""Save a small randomly initialised GLM-4 model, with a real tokenizer and chat template, to a directory.

Benchmarks and serving tests need a model that any OpenAI-compatible server can load from a local
directory (``config.json`` + safetensors + ``tokenizer.json`` with a chat template) without network.
This module trains a byte-level BPE tokenizer on a few words, builds a ``Glm4ForCausalLM`` from a
:class:`transformers.Glm4Config` of the requested size and saves both.

It knows nothing about servers or about the demo models of :mod:`autoglm.hub` (which are the preferred
source when present); the weights are random, so the text is noise: only speed can be measured with it.
torch, transformers and tokenizers are imported inside the function.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["TINY", "DEMO_100M_EQUIVALENT", "save_random_glm4"]

# Sizes (Glm4Config keyword arguments). TINY loads and decodes in well under a second on one CPU core.
TINY: dict[str, int] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=128, vocab_size=512,
)
# The shape of the ``autoglm-demo-100m`` demo model (about 100M parameters with tied embeddings off).
DEMO_100M_EQUIVALENT: dict[str, int] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, head_dim=64,
    intermediate_size=2048, vocab_size=8192,
)

_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]


def _corpus(n_words: int, seed: int) -> list[str]:
    from autoglm.bench.prompts import word_list

    import random

    rng = random.Random(seed)
    words = word_list()
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n_words // 12 + 1)]


def save_random_glm4(path: str | Path, size: dict[str, int] | None = None, seed: int = 0,
                     dtype: str = "float32", max_position_embeddings: int = 2048) -> Path:
    """Write a random Glm4ForCausalLM of ``size`` (default :data:`TINY`) and its tokenizer to ``path``.

    Returns the directory. The tokenizer's vocabulary is trained to exactly ``size['vocab_size']``
    entries when the corpus allows, never more.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Glm4Config, Glm4ForCausalLM, PreTrainedTokenizerFast

    size = dict(TINY if size is None else size)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size["vocab_size"], special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(20000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=_SPECIAL[1:],
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(out)

    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    config = Glm4Config(
        **size, max_position_embeddings=max_position_embeddings, eos_token_id=eos, pad_token_id=eos,
        bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Glm4ForCausalLM(config).to(getattr(torch, dtype))
    model.eval()
    model.save_pretrained(out)
    return out
