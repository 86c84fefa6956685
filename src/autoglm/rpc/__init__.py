"""gRPC for internal callers, beside the HTTP API (``autoglm serve --grpc-port 50051``).

- :class:`~autoglm.rpc.server.GrpcServer`: the ``autoglm.v1.Generation`` service (streaming generate
  with the HTTP API's sampling parameters; ``protos/generate.proto``) and the KServe Open Inference
  Protocol V2 service (``protos/grpc_predict_v2.proto``), each call served in process by the same ASGI
  app as HTTP, so keys, limits, metrics and the drain are shared.
- :class:`~autoglm.rpc.client.GrpcClient`: the SDK's client.

The ``.proto`` files ship in the package; ``protos/*_pb2*.py`` are generated from them with
``python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src
src/autoglm/rpc/protos/*.proto`` (a test checks they are current). Needs the ``grpc`` extra.
"""
from __future__ import annotations

from typing import Any

__all__ = ["GrpcServer", "GrpcClient", "GrpcError"]


def __getattr__(name: str) -> Any:
    if name == "GrpcServer":
        from autoglm.rpc.server import GrpcServer

        return GrpcServer
    if name in ("GrpcClient", "GrpcError"):
        from autoglm.rpc import client

        return getattr(client, name)
    raise AttributeError(name)
