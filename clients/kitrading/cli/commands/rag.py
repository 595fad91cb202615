"""Knowledge-base commands: `rag add FILE...`, `rag query "..."`, `rag list`, `rag delete`, `rag status`.

`rag add` reads text and markdown files (UTF-8); PDF files when the `pypdf` package is installed
(it is not a dependency: without it a PDF is refused with that hint). Re-adding a file whose text
is already stored changes nothing (the service deduplicates by content hash).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import click
from google.protobuf import timestamp_pb2

from kitrading.cli.common import (
    EXIT_ERROR,
    add_command,
    add_group,
    argument,
    client_from,
    flag,
    json_flag,
    message_dict,
    option,
    print_json,
    print_table,
    state,
    timestamp,
)
from kitrading.rag.v1 import request_response_pb2 as rag_rr
from kitrading.rag.v1 import resources_pb2 as rag_res

#: Adding a long document means embedding every chunk (minutes on a small CPU for a book).
ADD_TIMEOUT = 600.0
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst", ""}


def register(cli: click.Group) -> None:
    rag = add_group(cli, "rag", help="knowledge base: add, query, list", description="Knowledge-base tasks.")
    add_command(
        rag,
        "add",
        run_add,
        help="add text, markdown or PDF files",
        description="Add files to the knowledge base (text, markdown; PDF when pypdf is installed).",
        params=[
            argument(
                "files",
                nargs=-1,
                required=True,
                type=click.Path(dir_okay=False, path_type=Path),
                metavar="FILE...",
                help="text, markdown or PDF files",
            ),
            option("--symbol", type=str.upper, default=None, help="the symbol the files are about"),
            option("--tag", multiple=True, help="a tag (repeatable)"),
            option("--source", default=None, help="where they came from (default: file:<name>)"),
            option("--title", default=None, help="title (default: the first heading, else the file name)"),
            json_flag(),
        ],
    )
    add_command(
        rag,
        "query",
        run_query,
        help="search the knowledge base",
        description="Find the best passages.",
        params=[
            argument("query", help='e.g. "how is the forecast evaluated?"'),
            option("--top-k", type=int, default=5, help="passages (default 5, at most 50)"),
            option("--symbol", type=str.upper, default=None, help="only documents about it or about none"),
            option("--source", default="", help="only documents from this source"),
            option("--tag", multiple=True, help="only documents with this tag (repeatable)"),
            flag("--hybrid", help="vector + full-text search, fused by rank"),
            json_flag(),
        ],
    )
    add_command(
        rag,
        "list",
        run_list,
        help="list documents",
        description="List documents, newest first.",
        params=[
            option("--symbol", type=str.upper, default=None, help="only documents about this symbol"),
            option("--tag", default="", help="only documents with this tag"),
            json_flag(),
        ],
    )
    add_command(
        rag,
        "delete",
        run_delete,
        help="remove a document",
        description="Remove a document and its chunks.",
        params=[argument("document_id", help="the document's id, from `kitrading rag list`"), json_flag()],
    )
    add_command(
        rag,
        "status",
        run_status,
        help="index state",
        description="Show the index: kind, size, model.",
        params=[json_flag()],
    )


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


def run_add(args: argparse.Namespace, err: TextIO | None = None) -> int:
    from kitrading.cli.progress import FileProgress

    results: list[rag_rr.AddDocumentResponse] = []
    failed = 0
    modified = timestamp_pb2.Timestamp()
    with client_from(args, timeout=ADD_TIMEOUT) as client, FileProgress(len(args.files), err) as bar:
        for i, path in enumerate(args.files):
            bar.update(i, path.name)
            try:
                text = read_document(path)
            except (OSError, ValueError) as exc:
                bar.line(str(exc), "red")
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
        bar.update(len(args.files), "done")
    if args.json:
        print_json({"documents": [message_dict(r) for r in results]})
    else:
        rows = [
            (
                r.document.document_id,
                r.document.title,
                r.document.chunk_count,
                state("added" if r.created else "already there"),
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
    if args.json:
        print_json({"documentId": args.document_id, "chunksDeleted": reply.chunks_deleted})
        return 0
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
    if s.HasField("reembedding"):
        r = s.reembedding
        print(
            f"re-embedding with {r.model or '(waiting for the embedder)'}: "
            f"{r.documents_done} of {r.documents_total} documents since {timestamp(r.start_time)}"
        )
    return 0
