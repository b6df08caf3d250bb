"""Token counting with a real tokenizer that works offline.

Why this tokenizer: tiktoken fetches its BPE vocabulary over the network on
first use, which this server must never depend on. The local embedder's own
WordPiece vocabulary (``tokenizer.json`` of all-MiniLM-L6-v2, run by the Rust
``tokenizers`` package) is on disk already, is fast (~several MB/s), and makes
chunk sizes line up exactly with the embedder's 256-piece window. For English
prose its counts are within ~10-20 % of OpenAI's BPE counts, which is what the
run engine needs for estimating prompt sizes.

If the model package is absent, a deterministic regex tokenizer (words and
single punctuation marks) stands in, so counting and chunking still work and
stay self-consistent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .minilm import ModelNotInstalled, find_model_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["TokenSpans", "count_tokens", "encode_spans", "get_tokenizer", "tokenizer_name"]

_FALLBACK_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class TokenSpans:
    """Per-token character offsets into the source text, plus the index of
    the pre-tokenizer word each token belongs to (cuts between tokens of one
    word would change how the cut text re-tokenizes)."""

    offsets: list[tuple[int, int]]
    word_ids: list[int]

    def __len__(self) -> int:
        return len(self.offsets)


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer | None:
    """The WordPiece tokenizer with truncation and padding off, or ``None``
    when the model package is not installed. Loaded once; never mutated
    afterwards, so concurrent ``encode`` calls from threads are safe."""
    try:
        model_dir = find_model_dir()
    except ModelNotInstalled:
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenizer_name() -> str:
    return "minilm-wordpiece" if get_tokenizer() is not None else "regex-fallback"


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (no special tokens)."""
    if not text:
        return 0
    tok = get_tokenizer()
    if tok is None:
        return sum(1 for _ in _FALLBACK_RE.finditer(text))
    return len(tok.encode(text, add_special_tokens=False).ids)


def encode_spans(text: str) -> TokenSpans:
    """Token offsets and word ids for chunking."""
    tok = get_tokenizer()
    if tok is None:
        offsets = [m.span() for m in _FALLBACK_RE.finditer(text)]
        return TokenSpans(offsets=offsets, word_ids=list(range(len(offsets))))
    enc = tok.encode(text, add_special_tokens=False)
    word_ids = [(-1 - i) if w is None else w for i, w in enumerate(enc.word_ids)]
    return TokenSpans(offsets=list(enc.offsets), word_ids=word_ids)
