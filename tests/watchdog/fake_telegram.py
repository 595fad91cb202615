"""A local HTTP server that speaks enough of the Telegram Bot API (`sendMessage`) for tests.

Runs on 127.0.0.1, port 0, in a background thread. It records every call, answers like Telegram
(`{"ok": true, "result": {...}}`), rejects unknown tokens with 401 and, on demand, fails the next
calls with 500 or 429 + `parameters.retry_after`::

    with FakeTelegram(tokens={"123:abc"}) as tg:
        settings = TelegramSettings(bot_token=Secret("123:abc"), chat_ids=("42",), api_base=tg.base_url)
        tg.fail_next(2, status=500)
        tg.rate_limit_next(1, retry_after=1)
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")


@dataclass
class Call:
    """One request the server received."""

    token: str
    method: str
    body: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def chat_id(self) -> str:
        return str(self.body.get("chat_id"))

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))


@dataclass
class _Failure:
    status: int
    retry_after: float | None = None


class FakeTelegram:
    def __init__(self, tokens: set[str] | None = None, chats: set[str] | None = None) -> None:
        """tokens: accepted bot tokens (None: any); chats: known chat ids (None: any)."""
        self.tokens = tokens
        self.chats = chats
        self.calls: list[Call] = []
        self._failures: deque[_Failure] = deque()
        self._lock = threading.Lock()
        self._message_id = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-telegram", daemon=True)

    # ---- control ----

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FakeTelegram:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, count: int = 1, *, status: int = 500) -> None:
        with self._lock:
            self._failures.extend(_Failure(status) for _ in range(count))

    def rate_limit_next(self, count: int = 1, *, retry_after: float = 1) -> None:
        with self._lock:
            self._failures.extend(_Failure(429, retry_after) for _ in range(count))

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()
            self._failures.clear()

    @property
    def delivered(self) -> list[Call]:
        """Calls that Telegram accepted (HTTP 200)."""
        with self._lock:
            return [c for c in self.calls if c.status == 200]

    async def wait_for(self, count: int, *, within: float = 5.0, match: str = "") -> list[Call]:
        """Wait until `count` delivered messages (containing `match`) arrived; returns them."""
        deadline = time.monotonic() + within
        while True:
            found = [c for c in self.delivered if match in c.text]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)

    # ---- the HTTP side ----

    def _answer(self, path: str, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        match = _PATH.match(path)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if match is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}, {}
        token, method = match["token"], match["method"]
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
            if failure is not None:
                status = failure.status
                answer: dict[str, Any] = {"ok": False, "error_code": status}
                headers: dict[str, str] = {}
                if status == 429:
                    answer["description"] = f"Too Many Requests: retry after {failure.retry_after:g}"
                    answer["parameters"] = {"retry_after": failure.retry_after}
                else:
                    answer["description"] = "Internal Server Error"
            elif self.tokens is not None and token not in self.tokens:
                status, headers = 401, {}
                answer = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            elif method != "sendMessage":
                status, headers = 404, {}
                answer = {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            elif not body.get("chat_id") or not body.get("text"):
                status, headers = 400, {}
                answer = {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
            elif self.chats is not None and str(body["chat_id"]) not in self.chats:
                status, headers = 400, {}
                answer = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
            else:
                self._message_id += 1
                status, headers = 200, {}
                answer = {
                    "ok": True,
                    "result": {
                        "message_id": self._message_id,
                        "chat": {"id": body["chat_id"]},
                        "date": int(time.time()),
                        "text": body["text"],
                    },
                }
            self.calls.append(Call(token=token, method=method, body=body, status=status))
        return status, answer, headers

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, answer, headers = fake._answer(self.path, raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        return Handler
