"""`python -m services.llm`: run the LLM analyst (port 3009 by default)."""

from services.runtime.threads import limit_math_threads

limit_math_threads()

from services.llm.app import LlmApp  # noqa: E402
from services.runtime.server import run_service  # noqa: E402

if __name__ == "__main__":
    run_service(LlmApp, "llm")
