"""`python -m services.regime`: run the regime service (port 3004 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.regime.app import RegimeApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(RegimeApp, "regime")
