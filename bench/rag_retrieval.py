"""Vector against hybrid retrieval on a small labelled query set over the bundled documents.

    .venv/bin/python -m bench.rag_retrieval [--out FILE]

The knowledge base holds what a first start ingests (the mesh's docs: models.md, forecast.md,
regime.md, embedder.md, llm.md), chunked and embedded as the service does (real Embedder service,
bundled all-MiniLM-L6-v2, in this process). Each of the QUERIES below names the section of one
document that answers it (written by hand from the documents' headings); a passage is relevant when
its text lies inside that section. Reported per mode: hit@1, hit@5 (a relevant passage among the
first k) and MRR@10. Small (22 queries): a difference of one query is 0.045.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from services.runtime.threads import limit_math_threads

limit_math_threads(1)

from services.embedder.app import EmbedderApp  # noqa: E402
from services.embedder.sentiment import LexiconSentiment  # noqa: E402
from services.embedder.settings import EmbedderSettings  # noqa: E402
from services.embedder.text import TextEncoder  # noqa: E402
from services.rag.embeddings import EmbedderClient  # noqa: E402
from services.rag.models import HYBRID, VECTOR, Query  # noqa: E402
from services.rag.service import RagDomain  # noqa: E402
from services.rag.settings import REPO_DOCS, RagSettings  # noqa: E402
from services.runtime.database_settings import DatabaseSettings  # noqa: E402
from services.runtime.embedded import start_embedded_postgres  # noqa: E402
from services.training.sources import InMemoryCandleSource  # noqa: E402

FILES = ("models.md", "forecast.md", "regime.md", "embedder.md", "llm.md")
#: (query, file, the heading of the section that answers it)
QUERIES: tuple[tuple[str, str, str], ...] = (
    ("How does NHITS compare with the naive and seasonal baselines?", "models.md", "## Forecast (NHITS) vs"),
    ("How were the default hyperparameters chosen?", "models.md", "## Hyperparameter sensitivity"),
    ("How are the 80% and 95% prediction intervals computed?", "models.md", "## Interval method"),
    ("What are the limitations of the reported model performance?", "models.md", "## Caveats"),
    ("Does the LightGBM signal score have an edge in walk-forward tests?", "models.md", "## Regime (HMM)"),
    ("How do I follow training progress live?", "forecast.md", "## Training jobs and live progress"),
    (
        "Why does training run in a separate worker process?",
        "forecast.md",
        "## Isolation: the training worker",
    ),
    ("How are model versions published and rolled back?", "forecast.md", "## Model registry"),
    ("When does the forecaster retrain automatically?", "forecast.md", "## Retraining"),
    ("What happens with weekends and gaps in the candles?", "forecast.md", "## Irregular calendars"),
    ("What does the evaluation compute at every training?", "forecast.md", "## Evaluation at every training"),
    ("What is hindsight in the regime labels?", "regime.md", "## What is hindsight and what is not"),
    ("How does the embedder batch concurrent requests?", "embedder.md", "## Batching"),
    ("Which sentiment model scores financial text?", "embedder.md", "## Sentiment"),
    ("How are candle windows turned into vectors?", "embedder.md", "## Time-series embeddings"),
    ("What is the maximum number of texts per embedding call?", "embedder.md", "## Limits"),
    ("How is the prompt protected against injection from passages?", "llm.md", "## Grounded prompts"),
    ("How many answers can the LLM write at the same time?", "llm.md", "## Queue and concurrency"),
    ("Which LLM engines are supported, Ollama or embedded?", "llm.md", "## Engines"),
    ("How fast is the embedded SmolLM2 model in tokens per second?", "llm.md", "## Measured speed"),
    ("How is llama-cpp-python built?", "llm.md", "## Building llama-cpp-python"),
    ("GPU memory budget of the LLM layers offloaded", "llm.md", "## The service"),
)


def section_span(text: str, heading: str) -> tuple[int, int]:
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    return start, len(text) if following < 0 else following


async def run(home: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from tests.grpc_helpers import start_server

    encoder = TextEncoder("", device="cpu", batch_size=64).load()
    embedder = EmbedderApp(
        EmbedderSettings(use_gpu=False),
        source=InMemoryCandleSource(),
        encoder=encoder,
        sentiment=LexiconSentiment(),
    )
    server = await start_server(embedder, "embedder")
    url = await asyncio.to_thread(start_embedded_postgres, home / "pg", cleanup_mode="delete")
    settings = RagSettings(
        home=home, database=DatabaseSettings(url=url), knowledge_files=FILES, use_gpu=False
    )
    client = EmbedderClient(server.target)
    await client.start()
    domain = RagDomain(settings, client)
    await domain.start()
    try:
        await domain.refresh_knowledge()
        texts = {name: (REPO_DOCS / name).read_text() for name in FILES}
        spans = {(name, h): section_span(texts[name], h) for _, name, h in QUERIES}
        title_to_file = {}
        page = await domain.list_documents(page_size=100)
        for d in page.documents:
            title_to_file[d.id] = d.source.rsplit("/", 1)[-1]
        out: dict[str, Any] = {"queries": len(QUERIES), "chunks": domain.status().chunks}
        for mode in (VECTOR, HYBRID):
            hit1 = hit5 = 0
            rr_sum = 0.0
            for question, name, heading in QUERIES:
                passages = await domain.query(Query(question, top_k=10, min_score=-1.0, mode=mode))
                lo, hi = spans[(name, heading)]
                rank = 0
                for i, p in enumerate(passages, 1):
                    if title_to_file.get(p.document_id) != name:
                        continue
                    where = texts[name].find(p.text)
                    if where >= 0 and where < hi and where + len(p.text) > lo:
                        rank = i
                        break
                hit1 += rank == 1
                hit5 += 0 < rank <= 5
                rr_sum += 1.0 / rank if rank else 0.0
            n = len(QUERIES)
            out[mode] = {"hit_at_1": hit1 / n, "hit_at_5": hit5 / n, "mrr_at_10": rr_sum / n}
        return out
    finally:
        await domain.stop()
        await client.close()
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kitrading-bench-rag-eval-") as home:
        result = asyncio.run(run(Path(home)))
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
