"""`python -m services.data`: run the Data service (port 3001 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.data.app import DataApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(DataApp, "data")
