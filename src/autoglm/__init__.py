"""Open-AutoGLM: deploy, serve and keep improving GLM-family models on your own hardware.

The public API is small on purpose; most users drive the package through the ``autoglm`` CLI.
Importing this package does no work (no model loading, no network, no argument parsing).
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Client", "GrpcClient"]


def __getattr__(name: str):  # autoglm.Client / GrpcClient without importing httpx or grpc at `import autoglm`
    if name == "Client":
        from autoglm.client import Client

        return Client
    if name == "GrpcClient":  # the SDK's gRPC client (autoglm.rpc; the grpc extra)
        from autoglm.rpc.client import GrpcClient

        return GrpcClient
    raise AttributeError(f"module 'autoglm' has no attribute {name!r}")
