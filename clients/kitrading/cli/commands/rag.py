"""Knowledge-base commands: `rag add FILE...`, `rag query "..."`, `rag list`, `rag delete`, `rag status`.

`rag add` reads text and markdown files (UTF-8); PDF files when the `pypdf` package is installed
(it is not a dependency: without it a PDF is refused with that hint). Re-adding a file whose text
is already stored changes nothing (the service deduplicates by content hash).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from google.protobuf import timestamp_pb2

from kitrading.cli.common import (
    EXIT_ERROR,
    Subparsers,
    client_from,
    message_dict,
    print_json,
    print_table,
    timestamp,
)
from kitrading.rag.v1 import request_response_pb2 as rag_rr
from kitrading.rag.v1 import resources_pb2 as rag_res

#: Adding a long document means embedding every chunk (minutes on a small CPU for a book).
ADD_TIMEOUT = 600.0
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst", ""}


def register(subparsers: Subparsers) -> None:
    rag = subparsers.add_parser(
        "rag", help="knowledge base: add, query, list", description="Knowledge-base tasks."
    )
    tasks = rag.add_subparsers(dest="task", metavar="TASK", required=True)

    add = tasks.add_parser(
        "add",
        help="add text, markdown or PDF files",
        description="Add files to the knowledge base (text, markdown; PDF when pypdf is installed).",
    )
    add.add_argument("files", nargs="+", type=Path, metavar="FILE")
    add.add_argument("--symbol", type=str.upper, default=None, help="the symbol the files are about")
    add.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    add.add_argument("--source", default=None, help="where they came from (default: file:<name>)")
    add.add_argument("--title", default=None, help="title (default: the first heading, else the file name)")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(handler=run_add)

    query = tasks.add_parser("query", help="search the knowledge base", description="Find the best passages.")
    query.add_argument("query", help='e.g. "how is the forecast evaluated?"')
    query.add_argument("--top-k", type=int, default=5, help="passages (default 5, at most 50)")
    query.add_argument("--symbol", type=str.upper, default=None, help="only documents about it or about none")
    query.add_argument("--source", default="", help="only documents from this source")
    query.add_argument("--tag", action="append", default=[], help="only documents with this tag (repeatable)")
    query.add_argument("--hybrid", action="store_true", help="vector + full-text search, fused by rank")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(handler=run_query)

    listing = tasks.add_parser("list", help="list documents", description="List documents, newest first.")
    listing.add_argument("--symbol", type=str.upper, default=None, help="only documents about this symbol")
    listing.add_argument("--tag", default="", help="only documents with this tag")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    delete = tasks.add_parser(
        "delete", help="remove a document", description="Remove a document and its chunks."
    )
    delete.add_argument("document_id")
    delete.set_defaults(handler=run_delete)

    status = tasks.add_parser("status", help="index state", description="Show the index: kind, size, model.")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)


def read_document(path: Path) -> str:
    """The text of a text, markdown or PDF file; ValueError saying why not."""
    if path.suffix.lower() == ".pdf":
        try:
            import pypdf
        except ImportError:
            raise ValueError(f"{path}: reading PDF needs the pypdf package (pip install pypdf)") from None
        reader = pypdf.PdfReader(str(path))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise ValueError(f"{path}: not a text, markdown or PDF file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def progress(done: int, total: int, label: str, out: TextIO, width: int = 24) -> None:
    """`[#########-----]  3/5 name`, redrawn on one line (a new line at the end)."""
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    out.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {label[:40]:<40}{end}")
    out.flush()


def run_add(args: argparse.Namespace, err: TextIO | None = None) -> int:
    bar = err or sys.stderr
    results: list[rag_rr.AddDocumentResponse] = []
    failed = 0
    modified = timestamp_pb2.Timestamp()
    with client_from(args, timeout=ADD_TIMEOUT) as client:
        for i, path in enumerate(args.files):
            progress(i, len(args.files), path.name, bar)
            try:
                text = read_document(path)
            except (OSError, ValueError) as exc:
                bar.write(f"\n{exc}\n")
                failed += 1
                continue
            modified.FromDatetime(datetime.fromtimestamp(path.stat().st_mtime, tz=UTC))
            request = rag_rr.AddDocumentRequest(
                title=args.title or "",
                text=text,
                source=args.source or f"file:{path.name}",
                tags=args.tag,
                publish_time=modified,
            )
            if not request.title:
                request.title = _title(text, path)
            if args.symbol:
                request.symbol = args.symbol
            results.append(client.rag.add_document(request))
        progress(len(args.files), len(args.files), "done", bar)
    if args.json:
        print_json({"documents": [message_dict(r) for r in results]})
    else:
        rows = [
            (
                r.document.document_id,
                r.document.title,
                r.document.chunk_count,
                "added" if r.created else "already there",
            )
            for r in results
        ]
        print_table(("id", "title", "chunks", "result"), rows)
    return EXIT_ERROR if failed else 0


def _title(text: str, path: Path) -> str:
    heading = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("# ")), "")
    return (heading or path.stem)[:512]


def run_query(args: argparse.Namespace) -> int:
    request = rag_rr.QueryKnowledgeBaseRequest(
        query=args.query,
        top_k=args.top_k,
        source=args.source,
        tags=args.tag,
        mode=rag_res.RETRIEVAL_MODE_HYBRID if args.hybrid else rag_res.RETRIEVAL_MODE_VECTOR,
    )
    if args.symbol:
        request.symbol = args.symbol
    with client_from(args) as client:
        response = client.rag.query_knowledge_base(request)
    if args.json:
        print_json(message_dict(response))
        return 0
    if not response.passages:
        print("no passages (add documents with `kitrading rag add FILE`)")
    for i, p in enumerate(response.passages, 1):
        print(f"{i}. {p.title} [{p.document_id} #{p.chunk_index}] score {p.score:.3f}")
        text = " ".join(p.text.split())
        print(f"   {text[:300]}{'...' if len(text) > 300 else ''}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    found: list[rag_res.Document] = []
    request = rag_rr.ListDocumentsRequest(page_size=1000, tag=args.tag)
    if args.symbol:
        request.symbol = args.symbol
    with client_from(args) as client:
        while True:
            page = client.rag.list_documents(request)
            found.extend(page.documents)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    if args.json:
        print_json({"documents": [message_dict(d) for d in found]})
        return 0
    rows = [
        (
            d.document_id,
            d.title[:50],
            d.symbol or "-",
            d.source or "-",
            d.chunk_count,
            timestamp(d.create_time),
        )
        for d in found
    ]
    print_table(("id", "title", "symbol", "source", "chunks", "added"), rows)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        reply = client.rag.delete_document(rag_rr.DeleteDocumentRequest(document_id=args.document_id))
    print(f"deleted {args.document_id} ({reply.chunks_deleted} chunks)")
    return 0


def run_status(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        s = client.rag.get_rag_status()
    if args.json:
        print_json(message_dict(s))
        return 0
    print(f"documents {s.documents}, chunks {s.chunks}, dimension {s.dimension} ({s.embedding_model or '-'})")
    print(f"index     {s.index_description}")
    print(f"memory    {s.index_memory_bytes / (1 << 20):.1f} MiB; exact up to {s.exact_max_chunks} chunks")
    print(f"updated   {timestamp(s.update_time)}")
    return 0
