"""`python -m services.watchdog`: run the Watchdog (port 3010 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.runtime.server import run_service  # noqa: E402
from services.watchdog.app import WatchdogApp  # noqa: E402

if __name__ == "__main__":
    run_service(WatchdogApp, "watchdog")
