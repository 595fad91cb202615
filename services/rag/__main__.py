"""`python -m services.rag`: run the RAG service (port 3008 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.rag.app import RagApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(RagApp, "rag")
