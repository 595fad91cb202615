"""`python -m services.forecast`: run the forecast service (port 3002 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.forecast.app import ForecastApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(ForecastApp, "forecast")
