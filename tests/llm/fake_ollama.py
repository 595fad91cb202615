"""A local fake Ollama server that speaks Ollama's real HTTP protocol, for tests.

    with FakeOllama(models=["llama3.1:70b"], reply="Buy the dip.", token_delay=0.01) as fake:
        client = ollama.AsyncClient(host=fake.url)

Endpoints (shapes copied from Ollama's API docs / server):
- `GET /api/version` -> `{"version": "0.6.8"}`
- `GET /api/tags` -> `{"models": [{"name", "model", "modified_at", "size", "digest", "details": {...}}]}`
- `POST /api/chat` -> with `"stream": true` (Ollama's default) an `application/x-ndjson` body sent with
  chunked transfer encoding: one `{"model","created_at","message":{"role":"assistant","content"},
  "done":false}` line per token, then a `done: true` line with `done_reason` and the timing counters.
  `"stream": false` -> one JSON object. Unknown model -> 404 `{"error": "model \\"x\\" not found, try
  pulling it first"}`. Empty `messages` -> the load reply (`done_reason: "load"`). `options.num_predict`
  limits the tokens (`done_reason: "length"`).
- `POST /api/show` -> `{"details", "model_info": {"general.architecture": "llama", "llama.block_count",
  ...}, "capabilities", ...}` (the real shapes and sizes of llama3.1:70b, llama3.1:8b and smollm2:135m,
  `MODEL_SHAPES`); unknown model -> 404.
- `GET /api/ps` -> `{"models": [{"name", "model", "size", "size_vram", "expires_at", "context_length",
  ...}]}`: the models a chat loaded. Memory is simulated the way Ollama's runner spends it: a chat
  loads the model with its `options.num_gpu` layers (absent: as many as fit in `gpu_total_bytes`) and
  `options.num_ctx` (absent: 4096), each offloaded layer taking its share of the weights plus its KV
  cache, plus `graph_bytes` of compute buffers when any layer is offloaded. A chat whose `num_gpu` or
  `num_ctx` differs from the loaded ones reloads the model (counted in `loads`), as Ollama does.

Runs on 127.0.0.1, port 0, in a daemon thread. Records every chat request (`requests`), and counts
tokens sent, answers completed and clients that disconnected mid-answer (`disconnected`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[dict[str, Any]], Sequence[str]]


def split_tokens(text: str) -> list[str]:
    """Word-level pieces with their leading whitespace, like a tokenizer's stream: 'a b' -> ['a', ' b']."""
    return re.findall(r"\s*\S+|\s+$", text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class FakeOllama:
    def __init__(
        self,
        *,
        models: Iterable[str] = ("llama3.1:70b",),
        reply: Reply = "The trend is up; the forecast interval is wide, so size positions small.",
        token_delay: float = 0.0,
        version: str = "0.6.8",
        cut_after: int | None = None,
        gpu_total_bytes: int = 80 << 30,
        graph_bytes: int = 1536 << 20,
    ) -> None:
        self.models = list(models)
        self.reply = reply
        self.token_delay = token_delay
        self.version = version
        #: Close the connection after this many tokens, without the done line (a crashed server).
        self.cut_after = cut_after
        self.requests: list[dict[str, Any]] = []
        self.tokens_sent = 0
        self.completed = 0
        self.disconnected = 0
        self.active = 0
        self.gpu_total_bytes = gpu_total_bytes
        self.graph_bytes = graph_bytes
        #: Loaded models: name -> {"num_gpu", "num_ctx", "size", "size_vram"}.
        self.loaded: dict[str, dict[str, int]] = {}
        #: Model loads (first loads and reloads for changed options).
        self.loads = 0
        #: `POST /api/show` requests answered.
        self.shows = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeOllama is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeOllama:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ollama", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no answer is being streamed (the handler noticed a disconnect or finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.active == 0:
                    return True
            time.sleep(0.01)
        return False

    # -- behaviour ---------------------------------------------------------------------------------
    def tokens_for(self, body: dict[str, Any]) -> list[str]:
        if callable(self.reply):
            return list(self.reply(body))
        return split_tokens(self.reply)

    def load(self, model: str, options: dict[str, Any]) -> None:
        """Load (or reload) `model` the way a chat with `options` makes Ollama do."""
        shape = shape_of(model)
        layers = shape["block_count"] + 1
        num_ctx = int(options.get("num_ctx") or 4096)
        kv = num_ctx * shape["kv_bytes_per_token_layer"]
        per_layer = shape["size"] / layers + kv
        wanted = options.get("num_gpu")
        if wanted is None or int(wanted) < 0:  # Ollama's default: as many layers as fit
            wanted = max(0, min(layers, int((self.gpu_total_bytes - self.graph_bytes) // per_layer)))
        num_gpu = min(int(wanted), layers)
        with self._lock:
            current = self.loaded.get(model)
            if current is not None and (current["num_gpu"], current["num_ctx"]) == (num_gpu, num_ctx):
                return
            self.loads += 1
            self.loaded[model] = {
                "num_gpu": num_gpu,
                "num_ctx": num_ctx,
                "size": int(layers * per_layer + self.graph_bytes),
                "size_vram": int(num_gpu * per_layer + (self.graph_bytes if num_gpu else 0)),
            }

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeOllama

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------------
    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, payload: dict[str, Any]) -> None:
        line = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(line):X}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    # -- endpoints ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        fake = self.server_fake
        if self.path == "/api/version":
            self._json(200, {"version": fake.version})
        elif self.path == "/api/tags":
            self._json(200, {"models": [_model_entry(name) for name in fake.models]})
        elif self.path == "/api/ps":
            with fake._lock:
                loaded = dict(fake.loaded)
            models = [
                {
                    **_model_entry(name),
                    "size": state["size"],
                    "size_vram": state["size_vram"],
                    "context_length": state["num_ctx"],
                    "expires_at": "2099-01-01T00:00:00Z",
                }
                for name, state in loaded.items()
            ]
            self._json(200, {"models": models})
        elif self.path == "/":
            body = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"error": "404 page not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            self._json(400, {"error": f"invalid character in request body: {exc}"})
            return
        if self.path == "/api/show":
            self.server_fake._count(shows=1)
            self._show(body)
            return
        if self.path != "/api/chat":
            self._json(404, {"error": "404 page not found"})
            return
        self._chat(body)

    def _show(self, body: dict[str, Any]) -> None:
        fake = self.server_fake
        model = _full(str(body.get("model") or body.get("name") or ""))
        if model not in {_full(m) for m in fake.models}:
            self._json(404, {"error": f"model '{model}' not found"})
            return
        shape = shape_of(model)
        self._json(
            200,
            {
                "license": "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT",
                "modelfile": f"FROM {model}",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": _model_entry(model)["details"],
                "model_info": shape["model_info"],
                "capabilities": ["completion", "tools"],
                "modified_at": "2025-01-07T10:20:30.123456789Z",
            },
        )

    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.server_fake
        with fake._lock:
            fake.requests.append(body)
        model = str(body.get("model", ""))
        known = {m if ":" in m else f"{m}:latest" for m in fake.models}
        if (model if ":" in model else f"{model}:latest") not in known:
            self._json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        base = {"model": model, "created_at": _now()}
        fake.load(_full(model), body.get("options") or {})
        if not body.get("messages"):
            self._json(
                200,
                {
                    **base,
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "load",
                    "done": True,
                },
            )
            return
        tokens = fake.tokens_for(body)
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        started = time.perf_counter_ns()
        if body.get("stream", True) is False:
            time.sleep(fake.token_delay * len(tokens))
            fake._count(tokens_sent=len(tokens), completed=1)
            self._json(
                200,
                {
                    **base,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "done_reason": reason,
                    "done": True,
                    **_timings(started, len(tokens)),
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        fake._count(active=1)
        try:
            for i, token in enumerate(tokens):
                if fake.cut_after is not None and i >= fake.cut_after:
                    self.wfile.write(b"0\r\n\r\n")  # end the body without the done line
                    self.close_connection = True
                    return
                if fake.token_delay:
                    time.sleep(fake.token_delay)
                self._chunk(
                    {
                        "model": model,
                        "created_at": _now(),
                        "message": {"role": "assistant", "content": token},
                        "done": False,
                    }
                )
                fake._count(tokens_sent=1)
            self._chunk(
                {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": reason,
                    "done": True,
                    **_timings(started, len(tokens)),
                }
            )
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            fake._count(completed=1)
        except (BrokenPipeError, ConnectionResetError):
            fake._count(disconnected=1)
            self.close_connection = True
        finally:
            fake._count(active=-1)


def _timings(started_ns: int, tokens: int) -> dict[str, int]:
    total = time.perf_counter_ns() - started_ns
    return {
        "total_duration": total,
        "load_duration": 1_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 2_000_000,
        "eval_count": tokens,
        "eval_duration": max(total - 3_000_000, 1),
    }


def _full(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _info(blocks: int, width: int, heads: int, kv_heads: int, context: int, params: int) -> dict[str, Any]:
    return {
        "general.architecture": "llama",
        "general.parameter_count": params,
        "llama.block_count": blocks,
        "llama.context_length": context,
        "llama.embedding_length": width,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.rope.freq_base": 500000,
    }


#: Real shapes (GGUF metadata as `ollama show -v` prints it) of the models the fake serves.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "llama3.1:70b": {
        "block_count": 80,
        "kv_bytes_per_token_layer": 2 * 128 * 8 * 2,
        "model_info": _info(80, 8192, 64, 8, 131072, 70_553_706_496),
        "size": 42_520_412_160,
        "parameter_size": "70.6B",
    },
    "llama3.1:8b": {
        "block_count": 32,
        "kv_bytes_per_token_layer": 2 * 128 * 8 * 2,
        "model_info": _info(32, 4096, 32, 8, 131072, 8_030_261_248),
        "size": 4_920_753_328,
        "parameter_size": "8.0B",
    },
    "smollm2:135m": {
        "block_count": 30,
        "kv_bytes_per_token_layer": 2 * 64 * 3 * 2,
        "model_info": _info(30, 576, 9, 3, 8192, 134_515_008),
        "size": 270_898_528,
        "parameter_size": "134.52M",
    },
}


def shape_of(model: str) -> dict[str, Any]:
    """The model's entry in MODEL_SHAPES: by full name, else the first of its family, else llama3.1:70b."""
    full = _full(model)
    if full in MODEL_SHAPES:
        return MODEL_SHAPES[full]
    family = full.split(":", maxsplit=1)[0]
    same = [v for k, v in MODEL_SHAPES.items() if k.startswith(family + ":")]
    return same[0] if same else MODEL_SHAPES["llama3.1:70b"]


def _model_entry(name: str) -> dict[str, Any]:
    full = _full(name)
    return {
        "name": full,
        "model": full,
        "modified_at": "2025-01-07T10:20:30.123456789Z",
        "size": shape_of(full)["size"],
        "digest": "a6eb4748fd2990ad2952b2335a95a7f952d1a06119a0aa6a2df6cd052a93a3fa",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": shape_of(full)["parameter_size"],
            "quantization_level": "Q4_K_M",
        },
    }
