"""Token-window chunking with OpenAI's ``static`` strategy semantics.

Each chunk holds at most ``max_chunk_size_tokens`` tokens (as counted by
``count_tokens``) and the next chunk starts ``chunk_overlap_tokens`` tokens
before the previous one ended. Cuts fall between words (never inside a word,
unless one word alone is longer than a window), and within the last quarter
of a window a paragraph break beats a sentence end, which beats a line break,
which beats any word boundary: chunks that end on a thought retrieve better
and read better when quoted back to the model.

``AUTO_CHUNKING`` is what the server uses for ``chunking_strategy: auto``.
OpenAI's auto is 800/400, but the local embedder reads 256 word pieces per
window (254 after [CLS]/[SEP]); an 800-token chunk would be averaged over
four windows and its vector blurred. 254/64 keeps each chunk inside one
window and embeds every token ~1.3 times instead of 2 times. Embedders with a
wider window get OpenAI's 800/400 (see ``auto_chunking_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .tokens import TokenSpans, count_tokens, encode_spans

__all__ = [
    "AUTO_CHUNKING",
    "AUTO_CHUNK_OVERLAP_TOKENS",
    "AUTO_MAX_CHUNK_SIZE_TOKENS",
    "MAX_CHUNK_TOKENS",
    "MIN_CHUNK_TOKENS",
    "OPENAI_AUTO_CHUNKING",
    "Chunk",
    "auto_chunking_for",
    "chunk_text",
    "validate_static_chunking",
]

MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
AUTO_MAX_CHUNK_SIZE_TOKENS = 254
AUTO_CHUNK_OVERLAP_TOKENS = 64
AUTO_CHUNKING: tuple[int, int] = (AUTO_MAX_CHUNK_SIZE_TOKENS, AUTO_CHUNK_OVERLAP_TOKENS)
OPENAI_AUTO_CHUNKING: tuple[int, int] = (800, 400)


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int
    index: int


def validate_static_chunking(max_chunk_size_tokens: int, chunk_overlap_tokens: int) -> None:
    """Raise ``ValueError`` with OpenAI's rules: 100..4096, overlap <= max/2."""
    if not MIN_CHUNK_TOKENS <= max_chunk_size_tokens <= MAX_CHUNK_TOKENS:
        raise ValueError(
            f"max_chunk_size_tokens must be between {MIN_CHUNK_TOKENS} and {MAX_CHUNK_TOKENS}, "
            f"got {max_chunk_size_tokens}"
        )
    if chunk_overlap_tokens < 0 or chunk_overlap_tokens > max_chunk_size_tokens // 2:
        raise ValueError(
            "chunk_overlap_tokens must be non-negative and not exceed half of max_chunk_size_tokens, "
            f"got {chunk_overlap_tokens} for max {max_chunk_size_tokens}"
        )


def auto_chunking_for(max_input_tokens: int | None) -> tuple[int, int]:
    """``auto`` chunking fitted to an embedder's window (in its own tokens,
    special tokens included). Unknown or wide windows get OpenAI's 800/400."""
    if max_input_tokens is None or max_input_tokens - 2 >= OPENAI_AUTO_CHUNKING[0]:
        return OPENAI_AUTO_CHUNKING
    size = max(MIN_CHUNK_TOKENS, max_input_tokens - 2)
    return (size, (size + 2) // 4)


# Boundary preference, higher is better.
_PARAGRAPH, _SENTENCE, _LINE, _WORD = 4, 3, 2, 1
_SENTENCE_END = frozenset(".!?;:。！？")


def _boundary_rank(text: str, spans: TokenSpans, cut: int) -> int:
    """How good it is to end a chunk before token ``cut``; 0 = inside a word."""
    if spans.word_ids[cut - 1] == spans.word_ids[cut]:
        return 0
    gap = text[spans.offsets[cut - 1][1] : spans.offsets[cut][0]]
    if "\n\n" in gap or "\n\r\n" in gap:
        return _PARAGRAPH
    start, end = spans.offsets[cut - 1]
    last = text[start:end]
    if last and last[-1] in _SENTENCE_END and (gap or not text[spans.offsets[cut][0]].isalnum()):
        return _SENTENCE
    if "\n" in gap:
        return _LINE
    return _WORD


def _choose_end(text: str, spans: TokenSpans, start: int, max_tokens: int) -> int:
    n = len(spans)
    hard_end = start + max_tokens
    if hard_end >= n:
        return n
    lookback = max(1, max_tokens // 4)
    best_rank, best_cut = 0, hard_end
    for cut in range(hard_end, max(start, hard_end - lookback), -1):
        rank = _boundary_rank(text, spans, cut)
        if rank > best_rank:
            best_rank, best_cut = rank, cut
            if rank == _PARAGRAPH:
                break
    if best_rank == 0:
        # No word boundary near the end: take the last one anywhere in the
        # window, else cut inside an over-long word.
        for cut in range(hard_end - lookback, start, -1):
            if _boundary_rank(text, spans, cut) > 0:
                return cut
        return hard_end
    return best_cut


def _is_word_start(spans: TokenSpans, pos: int) -> bool:
    return pos == 0 or pos >= len(spans) or spans.word_ids[pos] != spans.word_ids[pos - 1]


def _snap_to_word_start(spans: TokenSpans, pos: int, limit: int) -> int:
    while pos < limit and spans.word_ids[pos] == spans.word_ids[pos - 1]:
        pos += 1
    return pos


def chunk_text(text: str, max_chunk_size_tokens: int = 800, chunk_overlap_tokens: int = 400) -> list[Chunk]:
    """Split ``text`` into overlapping token windows (see module docstring)."""
    validate_static_chunking(max_chunk_size_tokens, chunk_overlap_tokens)
    spans = encode_spans(text)
    n = len(spans)
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = _choose_end(text, spans, start, max_chunk_size_tokens)
        piece = text[spans.offsets[start][0] : spans.offsets[end - 1][1]]
        if _is_word_start(spans, start) and _is_word_start(spans, end):
            # Cut between words on both sides: the piece re-tokenizes to
            # exactly these tokens (normalisation is per character, word
            # pieces per word), so no second tokenizer pass is needed.
            tokens = end - start
        else:
            tokens = count_tokens(piece)
            # A cut inside an over-long word can re-tokenize into more
            # pieces; shrink until count_tokens itself says it fits.
            while tokens > max_chunk_size_tokens and end - start > 1:
                end -= max(1, tokens - max_chunk_size_tokens)
                piece = text[spans.offsets[start][0] : spans.offsets[end - 1][1]]
                tokens = count_tokens(piece)
        chunks.append(Chunk(text=piece, token_count=tokens, index=len(chunks)))
        if end >= n:
            break
        start = _snap_to_word_start(spans, max(end - chunk_overlap_tokens, start + 1), end)
    return chunks
