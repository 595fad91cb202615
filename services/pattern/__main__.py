"""`python -m services.pattern`: run the pattern service (port 3003 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.pattern.app import PatternApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(PatternApp, "pattern")
