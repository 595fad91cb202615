"""KI Trading Mesh: Python SDK, generated contracts and the `kitrading` CLI.

Generated protobuf modules live under `kitrading.<domain>.v1` (`make generate`); the typed clients
under `kitrading.client`; the mesh's service registry in `kitrading.mesh`.
"""

__version__ = "0.1.0"
