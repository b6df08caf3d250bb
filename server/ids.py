"""Object ids in OpenAI's shapes (`asst_...`, `thread_...`, `file-...`)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A random id: 24 base62 characters (~143 bits), like OpenAI's."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))
