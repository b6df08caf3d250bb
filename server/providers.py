"""Route model names to upstream OpenAI-compatible Chat Completions providers.

Threadlog runs assistants against whatever serves Chat Completions: OpenAI,
Ollama, vLLM, LM Studio... One catch-all provider comes from the environment
(``THREADLOG_UPSTREAM_BASE_URL``); more can be listed in a TOML file
(``THREADLOG_PROVIDERS_FILE``) with the model names or globs each one serves.
Streaming a completion from one is `server.completions`.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.completions import aclose_clients

__all__ = ["Provider", "ProviderRegistry"]

DEFAULT_PROVIDER_NAME = "default"
ENV_BASE_URL = "THREADLOG_UPSTREAM_BASE_URL"
ENV_API_KEY = "THREADLOG_UPSTREAM_API_KEY"
ENV_TIMEOUT = "THREADLOG_UPSTREAM_TIMEOUT"
ENV_MAX_RETRIES = "THREADLOG_UPSTREAM_MAX_RETRIES"
ENV_PROVIDERS_FILE = "THREADLOG_PROVIDERS_FILE"


@dataclass(frozen=True)
class Provider:
    """One upstream endpoint and the model names it serves."""

    name: str
    base_url: str
    api_key: str | None
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_retries: int = 2
    context_window: int = 128_000
    models: tuple[str, ...] = ()

    def serves_exactly(self, model: str) -> bool:
        return model in self.models

    def serves_by_glob(self, model: str) -> bool:
        return any(_is_glob(p) and fnmatch.fnmatchcase(model, p) for p in self.models)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The exact names among `models` (the others are globs)."""
        return tuple(p for p in self.models if not _is_glob(p))

    def url(self, path: str) -> str:
        """`path` (`/chat/completions`, `/models`, ...) under the provider's base URL."""
        return self.base_url.rstrip("/") + path


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


# ------------------------------------------------------------------- registry


@dataclass
class ProviderRegistry:
    """All configured providers, in file order, plus the catch-all default."""

    providers: tuple[Provider, ...] = ()
    default: Provider | None = None
    source: Path | None = None
    _all: tuple[Provider, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        extra = (self.default,) if self.default and self.default not in self.providers else ()
        self._all = (*self.providers, *extra)

    @classmethod
    def from_settings(cls, env: Mapping[str, str], providers_file: Path | None) -> ProviderRegistry:
        """Build from the environment and an optional TOML providers file.

        Raises ``ValueError`` naming the variable, file and field at fault, so
        a misconfiguration stops the server at start rather than at first run.
        """
        defaults = _env_defaults(env)
        env_default = _env_default_provider(env, defaults)
        file_providers: list[Provider] = []
        file_default: Provider | None = None
        if providers_file is not None:
            file_providers, file_default = _load_providers_file(providers_file, env, defaults)
        if env_default is not None and file_default is not None:
            raise ValueError(
                f"{providers_file}: provider '{file_default.name}' has default = true but "
                f"{ENV_BASE_URL} also defines the default provider; keep only one."
            )
        if env_default is not None and any(p.name == DEFAULT_PROVIDER_NAME for p in file_providers):
            raise ValueError(
                f"{providers_file}: provider name '{DEFAULT_PROVIDER_NAME}' is reserved "
                f"for the provider configured by {ENV_BASE_URL}."
            )
        return cls(
            providers=tuple(file_providers),
            default=file_default or env_default,
            source=providers_file,
        )

    @property
    def all_providers(self) -> tuple[Provider, ...]:
        return self._all

    def get(self, name: str) -> Provider | None:
        return next((p for p in self._all if p.name == name), None)

    def resolve(self, model: str) -> Provider | None:
        """Exact model names win, then globs in file order, then the default."""
        for provider in self.providers:
            if provider.serves_exactly(model):
                return provider
        for provider in self.providers:
            if provider.serves_by_glob(model):
                return provider
        return self.default

    def missing_provider_message(self, model: str) -> str:
        """The 400 message for a model nothing serves, telling how to fix it."""
        message = (
            f"No upstream provider is configured for model '{model}'. Set "
            f"{ENV_BASE_URL} (and {ENV_API_KEY} if needed) to send every model to one "
            "OpenAI-compatible Chat Completions endpoint, or list providers with the "
            f"models they serve in a TOML file named by {ENV_PROVIDERS_FILE}."
        )
        routed = [f"{p.name}: {', '.join(p.models)}" for p in self.providers if p.models]
        if routed:
            message += " Configured routes: " + "; ".join(routed) + "."
        return message

    async def aclose(self) -> None:
        """Close the cached HTTP clients of this registry's providers."""
        await aclose_clients(self._all)


# ------------------------------------------------------------ settings parsing


@dataclass(frozen=True)
class _Defaults:
    timeout_s: float = 60.0
    max_retries: int = 2


def _env_defaults(env: Mapping[str, str]) -> _Defaults:
    """Timeout and retry bounds from the environment; they also seed file entries."""
    timeout_s = _Defaults.timeout_s
    max_retries = _Defaults.max_retries
    raw_timeout = env.get(ENV_TIMEOUT, "").strip()
    if raw_timeout:
        try:
            timeout_s = float(raw_timeout)
        except ValueError:
            timeout_s = -1.0
        if not timeout_s > 0:
            raise ValueError(f"{ENV_TIMEOUT}: expected a positive number of seconds, got {raw_timeout!r}")
    raw_retries = env.get(ENV_MAX_RETRIES, "").strip()
    if raw_retries:
        try:
            max_retries = int(raw_retries)
        except ValueError:
            max_retries = -1
        if max_retries < 0:
            raise ValueError(f"{ENV_MAX_RETRIES}: expected a non-negative integer, got {raw_retries!r}")
    return _Defaults(timeout_s=timeout_s, max_retries=max_retries)


def _env_default_provider(env: Mapping[str, str], defaults: _Defaults) -> Provider | None:
    base_url = env.get(ENV_BASE_URL, "").strip()
    if not base_url:
        return None
    _check_url(base_url, ENV_BASE_URL)
    return Provider(
        name=DEFAULT_PROVIDER_NAME,
        base_url=base_url,
        api_key=env.get(ENV_API_KEY) or None,
        timeout_s=defaults.timeout_s,
        max_retries=defaults.max_retries,
    )


def _check_url(url: str, where: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: expected an http:// or https:// URL, got {url!r}")


_KNOWN_KEYS = frozenset(
    {
        "name",
        "base_url",
        "api_key",
        "api_key_env",
        "models",
        "timeout_s",
        "connect_timeout_s",
        "max_retries",
        "context_window",
        "default",
    }
)


def _load_providers_file(
    path: Path, env: Mapping[str, str], defaults: _Defaults
) -> tuple[list[Provider], Provider | None]:
    """Parse and validate the TOML providers file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read providers file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc})") from exc
    entries = data.get("providers")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected one or more [[providers]] tables")
    unknown_top = sorted(set(data) - {"providers"})
    if unknown_top:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(unknown_top)}")

    providers: list[Provider] = []
    default: Provider | None = None
    for index, entry in enumerate(entries):
        where = f"{path}: providers[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a table")
        provider, is_default = _parse_entry(entry, where, env, defaults)
        if any(p.name == provider.name for p in providers):
            raise ValueError(f"{where}.name: duplicate provider name {provider.name!r}")
        if is_default:
            if default is not None:
                raise ValueError(
                    f"{where}.default: both {default.name!r} and {provider.name!r} "
                    "are marked default = true; only one provider can be the catch-all"
                )
            default = provider
        providers.append(provider)
    return providers, default


class _Entry:
    """Typed accessors for one ``[[providers]]`` table with precise error messages."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def fail(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{self.where}.{key}: expected {expected}, got {self.data.get(key)!r}")

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string")
        return value.strip()

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, "a positive number")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def patterns(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self.fail(key, "a list of non-empty model names or globs")
        return tuple(item.strip() for item in value)


def _parse_entry(
    data: dict[str, Any], where: str, env: Mapping[str, str], defaults: _Defaults
) -> tuple[Provider, bool]:
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN_KEYS))})")
    entry = _Entry(data, where)
    name = entry.string("name", required=True)
    entry.where = f"{where} ({name!r})"
    base_url = entry.string("base_url", required=True)
    assert name is not None and base_url is not None  # required=True guarantees it
    _check_url(base_url, f"{entry.where}.base_url")
    provider = Provider(
        name=name,
        base_url=base_url,
        api_key=_entry_api_key(entry, env),
        timeout_s=entry.number("timeout_s", defaults.timeout_s),
        connect_timeout_s=entry.number("connect_timeout_s", 10.0),
        max_retries=entry.integer("max_retries", defaults.max_retries, minimum=0),
        context_window=entry.integer("context_window", 128_000, minimum=1),
        models=entry.patterns("models"),
    )
    return provider, entry.boolean("default")


def _entry_api_key(entry: _Entry, env: Mapping[str, str]) -> str | None:
    """``api_key_env`` (preferred, keeps secrets out of the file) or ``api_key``."""
    literal = entry.string("api_key")
    variable = entry.string("api_key_env")
    if literal is not None and variable is not None:
        raise ValueError(f"{entry.where}: set api_key or api_key_env, not both")
    if variable is None:
        return literal
    value = env.get(variable)
    if not value:
        raise ValueError(f"{entry.where}.api_key_env: environment variable {variable} is not set")
    return value
