"""`python -m services.embedder`: run the embedder service (port 3005 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.embedder.app import EmbedderApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(EmbedderApp, "embedder")
