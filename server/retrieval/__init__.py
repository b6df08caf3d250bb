"""Retrieval for file_search: parse -> chunk -> embed -> LanceDB hybrid search.

Import the pieces from here; each lives in its own small module.
"""

from .chunking import AUTO_CHUNKING, Chunk, auto_chunking_for, chunk_text, validate_static_chunking
from .embedding import Embedder, EmbeddingError, LocalMiniLMEmbedder, OpenAICompatibleEmbedder, embedder_from_env
from .filters import FilterError
from .index import AnnSettings, EmbedderMismatch, SearchHit, VectorIndex
from .parse import InvalidFile, UnsupportedFile, extract_text
from .tokens import count_tokens

__all__ = [
    "AUTO_CHUNKING",
    "AnnSettings",
    "Chunk",
    "Embedder",
    "EmbedderMismatch",
    "EmbeddingError",
    "FilterError",
    "InvalidFile",
    "LocalMiniLMEmbedder",
    "OpenAICompatibleEmbedder",
    "SearchHit",
    "UnsupportedFile",
    "VectorIndex",
    "auto_chunking_for",
    "chunk_text",
    "count_tokens",
    "embedder_from_env",
    "extract_text",
    "validate_static_chunking",
]
