"""Embedders: the local numpy MiniLM (default) and any OpenAI-compatible API.

Both return float32, L2-normalised rows, so the index can use cosine
distance (== 1 - dot product) whichever produced them. ``embed`` blocks; the
index calls it from a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
import numpy.typing as npt

from .minilm import BLAS_THREADS_ENV, MiniLMModel, find_model_dir, set_blas_threads

__all__ = [
    "Embedder",
    "EmbeddingError",
    "LocalMiniLMEmbedder",
    "OpenAICompatibleEmbedder",
    "embedder_from_env",
    "l2_normalise",
]

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """What the index needs from an embedding model. ``dim`` and ``name`` are
    read-only (plain attributes satisfy them too); ``name`` is stored with
    each table so vectors of different models are never mixed."""

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class EmbeddingError(RuntimeError):
    """The embedding backend failed (bad response, upstream error)."""


def l2_normalise(vectors: npt.NDArray[Any]) -> Vectors:
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: Vectors = (out / norms).astype(np.float32, copy=False)
    return normalised


class LocalMiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) in numpy; every token of a long text counts.

    The model reads 256 word pieces at a time. A longer text is cut into
    consecutive, near-equal windows of at most 254 pieces (+[CLS]/[SEP]); the token states of
    all windows are mean-pooled together (each token weighs the same, which
    for a single window is exactly sentence-transformers' mean pooling) and
    the result is L2-normalised. Windows from all texts of a call are sorted
    by length and batched under a token budget, so padding stays small.
    """

    name = "local:all-MiniLM-L6-v2"
    max_input_tokens = 256

    def __init__(self, model_dir: Path | None = None, batch_tokens: int = 4096, window: int = 256) -> None:
        self._model_dir = model_dir or find_model_dir()
        self._batch_tokens = batch_tokens
        self._window = window
        self._model: MiniLMModel | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.dim = 384

    def _load(self) -> tuple[MiniLMModel, Any]:
        with self._lock:
            if self._model is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                model = MiniLMModel(self._model_dir)
                threads = os.environ.get(BLAS_THREADS_ENV, "").strip()
                set_blas_threads(int(threads) if threads.isdigit() and int(threads) > 0 else 1)
                self._window = min(self._window, model.max_seq_length)
                self.dim = model.dim
                self._tokenizer = tok
                self._model = model
            return self._model, self._tokenizer

    def warmup(self) -> None:
        """Load weights now (≈0.3 s) instead of on the first request."""
        self.embed(["warm up"])

    def _windows(self, ids: list[int], cls_id: int, sep_id: int) -> list[list[int]]:
        """Split into the fewest windows that fit, of near-equal size: a
        600-piece text becomes 3×200, not 254+254+92, so no window is a
        context-poor scrap."""
        body = self._window - 2
        if len(ids) <= body:
            return [[cls_id, *ids, sep_id]]
        count = -(-len(ids) // body)
        bounds = [round(i * len(ids) / count) for i in range(count + 1)]
        return [[cls_id, *ids[bounds[i] : bounds[i + 1]], sep_id] for i in range(count)]

    def embed(self, texts: Sequence[str]) -> Vectors:
        model, tok = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cls_id = tok.token_to_id("[CLS]")
        sep_id = tok.token_to_id("[SEP]")
        encodings = tok.encode_batch(list(texts), add_special_tokens=False)
        windows: list[tuple[int, list[int]]] = []
        for text_index, enc in enumerate(encodings):
            windows.extend((text_index, w) for w in self._windows(enc.ids, cls_id, sep_id))
        windows.sort(key=lambda item: len(item[1]))
        sums = np.zeros((len(texts), self.dim), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.float32)
        i = 0
        while i < len(windows):
            length = len(windows[i][1])
            # Longest window in the batch sets the padded length; windows are
            # sorted, so grow while the padded batch fits the token budget.
            j = i + 1
            while j < len(windows) and (j + 1 - i) * len(windows[j][1]) <= self._batch_tokens:
                j += 1
            batch = windows[i:j]
            length = len(batch[-1][1])
            ids = np.zeros((len(batch), length), dtype=np.int64)
            mask = np.zeros((len(batch), length), dtype=np.float32)
            for row, (_, window_ids) in enumerate(batch):
                ids[row, : len(window_ids)] = window_ids
                mask[row, : len(window_ids)] = 1.0
            pooled = model.pooled_sums(ids, mask)
            for row, (text_index, window_ids) in enumerate(batch):
                sums[text_index] += pooled[row]
                counts[text_index] += len(window_ids)
            i = j
        return l2_normalise(sums / counts[:, None])


_KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAICompatibleEmbedder:
    """``POST {base_url}/embeddings`` in batches, with a few retries on 429/5xx.

    ``dim`` is known for OpenAI's models or from ``dimensions``; otherwise it
    is learnt from one probe request the first time it is read.
    """

    max_input_tokens = 8191

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
        batch_size: int = 256,
        batch_chars: int = 400_000,
        timeout: float = 60.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai-compatible:{model}" + (f":{dimensions}" if dimensions else "")
        self._dimensions = dimensions
        self._batch_size = batch_size
        self._batch_chars = batch_chars
        self._max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        self._dim: int | None = dimensions or _KNOWN_DIMS.get(model)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def close(self) -> None:
        self._client.close()

    def _request(self, batch: list[str]) -> Vectors:
        payload: dict[str, Any] = {
            "model": self.model,
            # OpenAI rejects empty strings.
            "input": [t if t.strip() else " " for t in batch],
            "encoding_format": "float",
        }
        if self._dimensions:
            payload["dimensions"] = self._dimensions
        delay = 0.5
        for attempt in range(self._max_retries + 1):
            try:
                resp = self._client.post(f"{self.base_url}/embeddings", json=payload)
            except httpx.TransportError as exc:
                if attempt == self._max_retries:
                    raise EmbeddingError(f"embeddings request failed: {exc}") from exc
            else:
                if resp.status_code == 429 or resp.status_code >= 500:
                    if attempt == self._max_retries:
                        raise EmbeddingError(f"embeddings upstream returned {resp.status_code}: {resp.text[:300]}")
                    retry_after = resp.headers.get("retry-after")
                    if retry_after and retry_after.replace(".", "", 1).isdigit():
                        delay = min(float(retry_after), 10.0)
                elif resp.status_code >= 400:
                    raise EmbeddingError(f"embeddings upstream returned {resp.status_code}: {resp.text[:300]}")
                else:
                    return self._parse(resp, len(batch))
            time.sleep(delay)
            delay *= 2
        raise EmbeddingError("unreachable")  # pragma: no cover

    @staticmethod
    def _parse(resp: httpx.Response, expected: int) -> Vectors:
        try:
            data = resp.json()["data"]
            rows = sorted(data, key=lambda d: int(d.get("index", 0)))
            vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"malformed embeddings response: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] != expected:
            raise EmbeddingError(f"expected {expected} embeddings, got shape {vectors.shape}")
        return l2_normalise(vectors)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts: list[Vectors] = []
        batch: list[str] = []
        chars = 0
        for text in texts:
            if batch and (len(batch) >= self._batch_size or chars + len(text) > self._batch_chars):
                parts.append(self._request(batch))
                batch, chars = [], 0
            batch.append(text)
            chars += len(text)
        if batch:
            parts.append(self._request(batch))
        out = np.concatenate(parts, axis=0)
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise EmbeddingError(f"upstream returned {out.shape[1]}-d vectors, expected {self._dim}")
        return out


_local_lock = threading.Lock()
_local: dict[str, LocalMiniLMEmbedder] = {}


def _shared_local() -> LocalMiniLMEmbedder:
    """One process-wide local model: the weights are 90 MB."""
    with _local_lock:
        if "default" not in _local:
            _local["default"] = LocalMiniLMEmbedder()
        return _local["default"]


def embedder_from_env(env: Mapping[str, str]) -> Embedder:
    """``THREADLOG_EMBEDDINGS_BASE_URL`` (+ ``_API_KEY``, ``_MODEL``, optional
    ``_DIMENSIONS``) selects an OpenAI-compatible upstream; otherwise the
    local model."""
    base_url = (env.get("THREADLOG_EMBEDDINGS_BASE_URL") or "").strip()
    if not base_url:
        return _shared_local()
    dims = (env.get("THREADLOG_EMBEDDINGS_DIMENSIONS") or "").strip()
    return OpenAICompatibleEmbedder(
        base_url,
        api_key=env.get("THREADLOG_EMBEDDINGS_API_KEY") or None,
        model=(env.get("THREADLOG_EMBEDDINGS_MODEL") or "").strip() or "text-embedding-3-small",
        dimensions=int(dims) if dims else None,
    )
