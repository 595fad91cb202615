"""Regenerate every generated file from the contracts in protos/ (`make generate`).

Writes, from one protoc run over protos/kitrading/** (and the vendored buf/validate rules):
  - clients/kitrading/<domain>/v1/*_pb2.py, *_pb2_grpc.py  Python messages and gRPC stubs
  - clients/kitrading/<domain>/v1/*.pyi                     typed stubs (mypy-protobuf)
  - clients/buf/validate/validate_pb2.py                    protovalidate rules, so field rules
                                                            are in the runtime descriptor pool
  - gateway/generated/descriptors.binpb                     FileDescriptorSet for Envoy's transcoder
  - gateway/generated/openapi/<service>.json                OpenAPI per service, from the same set
  - clients/kitrading/client/_generated.py                  typed sync/async SDK clients

google/api and google/rpc come from the googleapis-common-protos package at run time (vendored into
protos/ only so buf and protoc can compile). CI runs this and fails if anything differs from git.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
CLIENTS = ROOT / "clients"
GATEWAY_GENERATED = ROOT / "gateway" / "generated"
DESCRIPTORS = GATEWAY_GENERATED / "descriptors.binpb"


def _wkt_include() -> Path:
    grpc_tools = importlib.import_module("grpc_tools")
    return Path(grpc_tools.__file__).parent / "_proto"


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        found = shutil.which(name)
        if found is None:
            raise SystemExit(f"{name} not found: install the dev dependencies (mypy-protobuf)")
        return f"{name}={found}"
    return f"{name}={exe}"


def contract_files() -> list[Path]:
    return sorted((PROTOS / "kitrading").rglob("*.proto"))


def _clean() -> None:
    for pattern in ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi"):
        for path in (CLIENTS / "kitrading").rglob(pattern):
            path.unlink()
    shutil.rmtree(CLIENTS / "buf", ignore_errors=True)


def _init_files() -> None:
    """Generated folders become regular packages so setuptools, mypy and pytest all find them."""
    generated_dirs = {p.parent for p in CLIENTS.rglob("*_pb2.py")}
    for directory in sorted(generated_dirs):
        current = directory
        while current != CLIENTS:
            init = current / "__init__.py"
            if not init.exists():
                init.write_text("")
            current = current.parent


def run_protoc() -> None:
    files = [str(p.relative_to(PROTOS)) for p in contract_files()]
    files.append("buf/validate/validate.proto")
    GATEWAY_GENERATED.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{_wkt_include()}",
        f"--plugin={_plugin('protoc-gen-mypy')}",
        f"--plugin={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={CLIENTS}",
        f"--grpc_python_out={CLIENTS}",
        f"--mypy_out={CLIENTS}",
        f"--mypy_grpc_out={CLIENTS}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={DESCRIPTORS}",
        *files,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    # Only our own packages and the validate rules are generated; google/* come from packages.
    shutil.rmtree(CLIENTS / "google", ignore_errors=True)
    # grpc stubs only for files that declare a service (service.proto); the rest would be empty.
    for stray in CLIENTS.rglob("*_pb2_grpc.py*"):
        if not stray.name.startswith("service_pb2_grpc."):
            stray.unlink()


def run_post_generators() -> None:
    """Generators that read the descriptor set: OpenAPI docs and the typed SDK clients."""
    sys.path[:0] = [str(CLIENTS), str(ROOT)]
    for module_name in ("gateway.openapi", "kitrading.client.codegen"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                print(f"skip {module_name}: not present")
                continue
            raise
        module.generate(DESCRIPTORS, ROOT)
        print(f"ran {module_name}.generate")


def main() -> None:
    vendor = PROTOS / "vendor.py"
    if vendor.exists():
        subprocess.run([sys.executable, "-P", str(vendor)], check=True)
    _clean()
    run_protoc()
    _init_files()
    run_post_generators()
    print(f"generated {len(contract_files())} contract files into {CLIENTS} and {DESCRIPTORS}")


if __name__ == "__main__":
    main()
