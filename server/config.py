"""Settings: command-line flags over environment variables over embedded defaults."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from events.store import SYNCHRONOUS_MODES

__all__ = ["ConfigError", "Settings"]


class ConfigError(ValueError):
    """A setting that cannot work; shown at start, before anything binds."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./threadlog-data")
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: frozenset[str] = frozenset()
    admin_keys: frozenset[str] = frozenset()
    sqlite_synchronous: str = "NORMAL"
    providers_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    run_expiry_s: int = 600
    run_timeout_s: float = 600.0
    header_timeout_s: float = 15.0
    grace_s: float = 30.0
    compact_older_than_s: float | None = None  # compact in the background (see events/compaction.py)
    compact_interval_s: float = 3600.0
    log_content: bool = False  # message text in run log lines (serve --log-content)
    max_file_bytes: int = 512 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    code_wall_time_s: float = 60.0
    code_memory_mb: int = 1024
    code_idle_s: float = 900.0
    code_max_sessions: int = 16
    code_session_memory_mb: int = 2048
    code_disk_quota_mb: int = 1024
    disk_reserve_mb: int = 512
    allow_unsandboxed_code: bool = False
    lancedb_uri: str | None = None
    database_url: str | None = None  # postgresql://...: the event log and views in PostgreSQL
    files_uri: str | None = None  # s3://bucket/prefix or a directory: where file bytes live
    run_lease_s: float = 7.0  # a process not heard from for this long is taken for dead (shared logs)
    workers: int = 1  # server processes on one port (serve --workers; PostgreSQL only)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "threadlog.sqlite"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def sandbox_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def vector_uri(self) -> str:
        return self.lancedb_uri or str(self.data_dir / "lancedb")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        keys = frozenset(k.strip() for k in env.get("THREADLOG_API_KEYS", "").split(",") if k.strip())
        values: dict[str, object] = {
            "data_dir": data_dir_from_env(env),
            "host": env.get("THREADLOG_HOST", "127.0.0.1"),
            "port": int(env.get("THREADLOG_PORT", "8000")),
            "api_keys": keys,
            "admin_keys": frozenset(k.strip() for k in env.get("THREADLOG_ADMIN_KEYS", "").split(",") if k.strip()),
            "sqlite_synchronous": env.get("THREADLOG_SQLITE_SYNCHRONOUS", "NORMAL").upper(),
            "providers_file": Path(env["THREADLOG_PROVIDERS_FILE"]) if env.get("THREADLOG_PROVIDERS_FILE") else None,
            "env": env,
            "run_expiry_s": int(env.get("THREADLOG_RUN_EXPIRY_SECONDS", "600")),
            "run_timeout_s": float(env.get("THREADLOG_RUN_TIMEOUT_SECONDS", "600")),
            "header_timeout_s": float(env.get("THREADLOG_HEADER_TIMEOUT_SECONDS", "15")),
            "grace_s": float(env.get("THREADLOG_GRACE_SECONDS", "30")),
            "compact_older_than_s": (
                parse_duration(env["THREADLOG_COMPACT_OLDER_THAN"]) if env.get("THREADLOG_COMPACT_OLDER_THAN") else None
            ),
            "log_content": env.get("THREADLOG_LOG_CONTENT", "") in ("1", "true", "yes"),
            "compact_interval_s": float(env.get("THREADLOG_COMPACT_INTERVAL_SECONDS", "3600")),
            "max_file_bytes": int(env.get("THREADLOG_MAX_FILE_BYTES", str(512 * 1024 * 1024))),
            "max_request_bytes": int(env.get("THREADLOG_MAX_REQUEST_BYTES", str(32 * 1024 * 1024))),
            "code_wall_time_s": float(env.get("THREADLOG_CODE_TIMEOUT_SECONDS", "60")),
            "code_memory_mb": int(env.get("THREADLOG_CODE_MEMORY_MB", "1024")),
            "code_idle_s": float(env.get("THREADLOG_CODE_IDLE_SECONDS", "900")),
            "code_max_sessions": int(env.get("THREADLOG_CODE_MAX_SESSIONS", "16")),
            "code_disk_quota_mb": int(env.get("THREADLOG_CODE_DISK_QUOTA_MB", "1024")),
            "disk_reserve_mb": int(env.get("THREADLOG_DISK_RESERVE_MB", "512")),
            "code_session_memory_mb": int(
                env.get("THREADLOG_CODE_SESSION_MEMORY_MB", str(2 * int(env.get("THREADLOG_CODE_MEMORY_MB", "1024"))))
            ),
            "allow_unsandboxed_code": env.get("THREADLOG_ALLOW_UNSANDBOXED_CODE", "") in ("1", "true", "yes"),
            "lancedb_uri": env.get("THREADLOG_LANCEDB_URI") or None,
            "database_url": env.get("THREADLOG_DATABASE_URL") or None,
            "files_uri": env.get("THREADLOG_FILES_URI") or None,
            "run_lease_s": float(env.get("THREADLOG_RUN_LEASE_SECONDS", "7")),
            "workers": int(env.get("THREADLOG_WORKERS", "1")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.sqlite_synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"THREADLOG_SQLITE_SYNCHRONOUS must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"not {self.sqlite_synchronous!r}"
            )
        if self.run_timeout_s <= 0:
            raise ConfigError("THREADLOG_RUN_TIMEOUT_SECONDS must be positive")
        if self.compact_interval_s <= 0:
            raise ConfigError("THREADLOG_COMPACT_INTERVAL_SECONDS must be positive")
        if self.grace_s < 0:
            raise ConfigError("THREADLOG_GRACE_SECONDS (--grace-seconds) must not be negative")
        if self.code_wall_time_s <= 0:
            raise ConfigError("THREADLOG_CODE_TIMEOUT_SECONDS must be positive")
        if self.code_idle_s <= 0 or self.code_max_sessions < 1:
            raise ConfigError("THREADLOG_CODE_IDLE_SECONDS must be positive and THREADLOG_CODE_MAX_SESSIONS at least 1")
        if self.code_session_memory_mb < 64:
            raise ConfigError("THREADLOG_CODE_SESSION_MEMORY_MB must be at least 64")
        if self.code_memory_mb < 64:
            raise ConfigError("THREADLOG_CODE_MEMORY_MB must be at least 64 (Python needs it to start)")
        if self.run_lease_s < 1:
            raise ConfigError("THREADLOG_RUN_LEASE_SECONDS must be at least 1")
        if self.workers < 1:
            raise ConfigError("--workers (THREADLOG_WORKERS) must be at least 1")
        if self.workers > 1 and not self.database_url:
            raise ConfigError(
                "--workers above 1 needs a shared event log: set THREADLOG_DATABASE_URL=postgresql://... "
                "(the SQLite log has one writer, one process)"
            )
        if not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"Refusing to listen on {self.host} without API keys: anyone who can reach it could use "
                "your model providers. Set THREADLOG_API_KEYS=key1,key2 or bind to 127.0.0.1."
            )


def data_dir_from_env(env: Mapping[str, str]) -> Path:
    """THREADLOG_DATA_DIR, else ./threadlog-data: `serve` and every command on a data dir agree."""
    return Path(env.get("THREADLOG_DATA_DIR", "./threadlog-data"))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s` (a bare number is seconds), in seconds; ValueError otherwise."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use 30d, 12h, 90m or 45s)") from None
    if value < 0:
        raise ValueError("a duration cannot be negative")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
