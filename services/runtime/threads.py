"""One math thread per service process by default (the mesh targets small, shared machines).

Call `limit_math_threads()` before numpy/torch/faiss/LightGBM are imported: the BLAS/OpenMP pools
read these variables once, at import. `KITRADING_MATH_THREADS` raises the budget for one service.
"""

from __future__ import annotations

import os

from services.runtime.config import IntVar

MATH_THREADS = IntVar("KITRADING_MATH_THREADS", 1, 1024)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TORCH_NUM_THREADS",
)


def limit_math_threads(threads: int | None = None) -> int:
    """Set every math library's thread count (default `KITRADING_MATH_THREADS` or 1); returns it."""
    count = threads or MATH_THREADS.read(1)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    try:  # torch may already be imported by the caller
        import sys

        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(count)
    except Exception:  # pragma: no cover - best effort
        pass
    return count
