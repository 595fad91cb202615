"""Vendor third-party .proto sources into ``protos/`` so buf and protoc work offline.

The ``google/api`` and ``google/rpc`` files are re-copied from the installed
``googleapis-common-protos`` package, so ``make generate`` refreshes them and CI can
detect drift with ``git diff --exit-code protos/``. ``buf/validate/validate.proto``
is vendored verbatim from bufbuild/protovalidate (no pip package ships the .proto
source); this script only checks that it is present.

Usage: ``.venv/bin/python protos/vendor.py``
"""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import distribution
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent

# Only what our contracts (and the files below) import; google/protobuf/* is builtin to protoc and buf.
GOOGLEAPIS_FILES: tuple[str, ...] = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/field_behavior.proto",
    "google/api/httpbody.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)

PROTOVALIDATE_FILE = "buf/validate/validate.proto"


def googleapis_root() -> Path:
    """Return the site-packages directory of the installed googleapis-common-protos distribution.

    Resolved via package metadata rather than ``import google.api``: ``google`` is a namespace
    package, so running this script puts ``protos/`` on ``sys.path`` and the import would find
    the vendored copies themselves.
    """
    return Path(str(distribution("googleapis-common-protos").locate_file(""))).resolve()


def vendor_googleapis(dest: Path) -> list[str]:
    """Copy the googleapis-common-protos files into ``dest``; return the paths that changed."""
    src_root = googleapis_root()
    changed: list[str] = []
    for rel in GOOGLEAPIS_FILES:
        src = src_root / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found: is googleapis-common-protos installed?")
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            changed.append(rel)
        shutil.copyfile(src, dst)
        print(f"copied {src} -> {dst.relative_to(dest.parent)}")
    return changed


def check_protovalidate(dest: Path) -> bool:
    """Return whether the vendored protovalidate rules proto is present."""
    path = dest / PROTOVALIDATE_FILE
    if path.is_file():
        print(f"found  {path.relative_to(dest.parent)} (vendored verbatim, not refreshed)")
        return True
    print(
        f"error: {path} is missing; vendor it verbatim from bufbuild/protovalidate "
        "(proto/protovalidate/buf/validate/validate.proto)",
        file=sys.stderr,
    )
    return False


def main() -> int:
    changed = vendor_googleapis(PROTOS_DIR)
    print(f"{len(changed)} googleapis file(s) changed" + (f": {', '.join(changed)}" if changed else ""))
    return 0 if check_protovalidate(PROTOS_DIR) else 1


if __name__ == "__main__":
    sys.exit(main())
