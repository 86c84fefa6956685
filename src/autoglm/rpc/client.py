"""The SDK's gRPC client: :class:`GrpcClient` for ``autoglm serve --grpc-port``.

``GrpcClient("127.0.0.1:50051", api_key=...)`` opens one channel; :meth:`generate` and :meth:`chat`
yield :class:`Delta` s as the server streams them (text per choice, then the finish reason, then usage
when asked), :meth:`complete` joins them, :meth:`infer` is the KServe V2 ``ModelInfer`` call, and
:meth:`models` / :meth:`server_ready` / :meth:`model_ready` the rest. A refused call raises
:class:`GrpcError` with the gRPC status name and the server's message (the OpenAI error message of
the HTTP API). Synchronous, like ``openai.OpenAI``; close it or use it as a context manager.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from autoglm.errors import AutoGLMError, ConfigError

__all__ = ["GrpcClient", "GrpcError", "Delta"]


class GrpcError(AutoGLMError):
    """A call the server refused: ``code`` (e.g. ``"UNAUTHENTICATED"``) and its message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Delta:
    id: str
    model: str
    index: int
    text: str
    finish_reason: str | None
    usage: dict[str, int] | None = None


def _grpc() -> Any:
    try:
        import grpc
    except ImportError:
        raise ConfigError('the gRPC client needs grpcio: pip install -c constraints.txt -e ".[grpc]"') from None
    return grpc


class GrpcClient:
    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: str | None = None, timeout: float | None = 600.0):
        grpc = _grpc()
        from autoglm.rpc.protos import generate_pb2, generate_pb2_grpc, grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

        self._pb, self._v2 = generate_pb2, grpc_predict_v2_pb2
        self._channel = grpc.insecure_channel(target)
        self._gen = generate_pb2_grpc.GenerationStub(self._channel)
        self._infer = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.timeout = timeout

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Any, request: Any) -> Any:
        grpc = _grpc()
        try:
            return fn(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise GrpcError(exc.code().name, exc.details() or "") from None

    def _stream(self, request: Any) -> Iterator[Delta]:
        grpc = _grpc()
        call = self._gen.Generate(request, metadata=self._metadata, timeout=self.timeout)
        try:
            for m in call:
                usage = ({"prompt_tokens": m.usage.prompt_tokens, "completion_tokens": m.usage.completion_tokens,
                          "total_tokens": m.usage.total_tokens} if m.HasField("usage") else None)
                yield Delta(m.id, m.model, m.index, m.text, m.finish_reason or None, usage)
        except grpc.RpcError as exc:
            raise GrpcError(exc.code().name, exc.details() or "") from None
        finally:
            call.cancel()  # a reader that stops early ends the server's generation too

    def _params(self, params: dict[str, Any]) -> Any:
        from autoglm.rpc.server import SAMPLING_FIELDS

        unknown = set(params) - set(SAMPLING_FIELDS)
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s) {sorted(unknown)}; known: {', '.join(SAMPLING_FIELDS)}")
        fields = {k: v for k, v in params.items() if v is not None}
        if isinstance(fields.get("stop"), str):
            fields["stop"] = [fields["stop"]]
        return self._pb.SamplingParams(**fields)

    def generate(self, prompt: str, *, model: str = "", include_usage: bool = False, **params: Any) -> Iterator[Delta]:
        """Stream a completion of ``prompt`` (sampling parameters as in ``/v1/completions``)."""
        return self._stream(self._pb.GenerateRequest(model=model, prompt=prompt, params=self._params(params),
                                                     include_usage=include_usage))

    def chat(self, messages: Sequence[dict[str, str]], *, model: str = "", include_usage: bool = False,
             **params: Any) -> Iterator[Delta]:
        """Stream a chat completion of ``messages`` (``[{"role": ..., "content": ...}]``)."""
        chat = self._pb.Messages(messages=[self._pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages])
        return self._stream(self._pb.GenerateRequest(model=model, chat=chat, params=self._params(params),
                                                     include_usage=include_usage))

    def complete(self, prompt: str, **kwargs: Any) -> str:
        return "".join(d.text for d in self.generate(prompt, **kwargs))

    def models(self) -> list[dict[str, Any]]:
        reply = self._call(self._gen.ListModels, self._pb.ListModelsRequest())
        return [{"id": m.id, "root": m.root, "max_model_len": m.max_model_len, "description": m.description}
                for m in reply.models]

    def server_ready(self) -> bool:
        return self._call(self._infer.ServerReady, self._v2.ServerReadyRequest()).ready

    def model_ready(self, name: str) -> bool:
        return self._call(self._infer.ModelReady, self._v2.ModelReadyRequest(name=name)).ready

    def infer(self, prompts: str | Sequence[str], *, model: str = "", **params: Any) -> list[str]:
        """KServe V2 ``ModelInfer``: one text per prompt (parameters: max_tokens, temperature, seed, ...)."""
        v2 = self._v2
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        tensor = v2.ModelInferRequest.InferInputTensor(
            name="text_input", datatype="BYTES", shape=[len(texts)],
            contents=v2.InferTensorContents(bytes_contents=[t.encode() for t in texts]))
        parameters = {}
        for k, v in params.items():
            if isinstance(v, bool):
                parameters[k] = v2.InferParameter(bool_param=v)
            elif isinstance(v, int):
                parameters[k] = v2.InferParameter(int64_param=v)
            elif isinstance(v, float):
                parameters[k] = v2.InferParameter(double_param=v)
            else:
                parameters[k] = v2.InferParameter(string_param=str(v))
        reply = self._call(self._infer.ModelInfer, v2.ModelInferRequest(model_name=model, inputs=[tensor],
                                                                         parameters=parameters))
        out = next((o for o in reply.outputs if o.name == "text_output"), None)
        return [b.decode() for b in out.contents.bytes_contents] if out is not None else []
