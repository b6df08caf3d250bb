"""`threadlog serve | replay | fake-upstream`."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server import __version__
from server.config import ConfigError, Settings, data_dir_from_env, parse_duration
from server.logs import LOG_FORMATS, configure_logging

__all__ = ["main"]

_SERVE_ENVIRONMENT = """\
environment (an option given wins; README.md, Configuration, says what each does):
  THREADLOG_DATA_DIR, THREADLOG_HOST, THREADLOG_PORT, THREADLOG_SQLITE_SYNCHRONOUS, THREADLOG_GRACE_SECONDS
  THREADLOG_API_KEYS, THREADLOG_ADMIN_KEYS
  THREADLOG_UPSTREAM_BASE_URL, THREADLOG_UPSTREAM_API_KEY, THREADLOG_UPSTREAM_TIMEOUT,
  THREADLOG_UPSTREAM_MAX_RETRIES, THREADLOG_PROVIDERS_FILE
  THREADLOG_RUN_EXPIRY_SECONDS, THREADLOG_RUN_TIMEOUT_SECONDS, THREADLOG_HEADER_TIMEOUT_SECONDS,
  THREADLOG_MAX_REQUEST_BYTES, THREADLOG_MAX_FILE_BYTES
  THREADLOG_CODE_TIMEOUT_SECONDS, THREADLOG_CODE_MEMORY_MB, THREADLOG_CODE_SESSION_MEMORY_MB,
  THREADLOG_CODE_DISK_QUOTA_MB, THREADLOG_CODE_MAX_SESSIONS, THREADLOG_CODE_IDLE_SECONDS,
  THREADLOG_DISK_RESERVE_MB, THREADLOG_ALLOW_UNSANDBOXED_CODE
  THREADLOG_LANCEDB_URI, THREADLOG_EMBEDDINGS_BASE_URL, THREADLOG_EMBEDDINGS_API_KEY,
  THREADLOG_EMBEDDINGS_MODEL, THREADLOG_EMBEDDINGS_DIMENSIONS, THREADLOG_EMBED_BLAS_THREADS, THREADLOG_MINILM_DIR
"""
_DATA_DIR_ENVIRONMENT = "environment: THREADLOG_DATA_DIR is the data dir when --data-dir is not given."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threadlog", description="A self-hosted OpenAI Assistants API v2 server.")
    parser.add_argument("--version", action="version", version=f"threadlog {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the API server",
        epilog=_SERVE_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--data-dir", type=Path, default=None, help="where the event log and files live")
    serve.add_argument("--providers", type=Path, default=None, help="providers TOML file")
    serve.add_argument("--synchronous", choices=["NORMAL", "FULL"], default=None, help="SQLite durability mode")
    serve.add_argument(
        "--database-url", default=None, help="postgresql://...: the event log in PostgreSQL (THREADLOG_DATABASE_URL)"
    )
    serve.add_argument(
        "--grace-seconds",
        type=float,
        default=None,
        help="on SIGTERM, how long running runs get to finish before they end (default 30, THREADLOG_GRACE_SECONDS)",
    )
    serve.add_argument(
        "--log-content",
        action="store_true",
        default=None,
        help="put the reply's text in run log lines (THREADLOG_LOG_CONTENT=1); off: logs hold no message text",
    )
    serve.add_argument(
        "--otel",
        action="store_true",
        help="send traces over OTLP/HTTP (on too when OTEL_EXPORTER_OTLP_ENDPOINT is set)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes sharing the port (PostgreSQL only; default 1, or THREADLOG_WORKERS)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format", default="text", choices=LOG_FORMATS, help="text lines, or one JSON object per line"
    )

    replay = commands.add_parser("replay", help="rebuild every view from the event log", epilog=_DATA_DIR_ENVIRONMENT)
    replay.add_argument("--data-dir", type=Path, default=None, help="default: THREADLOG_DATA_DIR or ./threadlog-data")
    replay.add_argument("--verify", action="store_true", help="compare the rebuilt views with the live ones")

    events = commands.add_parser(
        "events", help="print a thread's or a run's events from the log", epilog=_DATA_DIR_ENVIRONMENT
    )
    events.add_argument("target", metavar="THREAD_OR_RUN", help="a thread id or run id (or any stream id)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events (a run: until it ends)")
    events.add_argument(
        "--type", dest="types", action="append", default=[], help="only these types; globs work: 'thread.run.*'"
    )
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--data-dir", type=Path, default=None, help="default: THREADLOG_DATA_DIR or ./threadlog-data")

    backup = commands.add_parser(
        "backup", help="copy a data dir, consistently, while the server runs", epilog=_DATA_DIR_ENVIRONMENT
    )
    backup.add_argument("--to", type=Path, required=True, help="a new (or empty) directory")
    backup.add_argument("--data-dir", type=Path, default=None, help="default: THREADLOG_DATA_DIR or ./threadlog-data")

    restore = commands.add_parser("restore", help="make a data dir from a backup", epilog=_DATA_DIR_ENVIRONMENT)
    restore.add_argument("--from", dest="source", type=Path, required=True, help="a directory made by backup")
    restore.add_argument("--data-dir", type=Path, default=None, help="a new data dir (no event log in it)")

    compact = commands.add_parser(
        "compact", help="drop the deltas of runs that ended long ago (snapshots stay)", epilog=_DATA_DIR_ENVIRONMENT
    )
    compact.add_argument(
        "--older-than", required=True, type=_duration, help="runs that ended before this long ago: 30d, 12h, 90m, 0s"
    )
    compact.add_argument("--data-dir", type=Path, default=None, help="default: THREADLOG_DATA_DIR or ./threadlog-data")

    for name, what in (("export", "write a thread as JSON lines (a bug report) to stdout"),
                       ("import", "reproduce an exported thread on a server, under new ids")):  # fmt: skip
        sub = commands.add_parser(name, help=what, epilog=_SERVER_ENVIRONMENT)
        if name == "export":
            sub.add_argument("thread_id", metavar="THREAD_ID")
            sub.add_argument(
                "--no-files", action="store_true", help="name the files it references, without their bytes"
            )
        else:
            sub.add_argument("path", metavar="FILE", type=Path, help="a file written by threadlog export ('-': stdin)")
        sub.add_argument("--base-url", default=None, help="default: OPENAI_BASE_URL or http://127.0.0.1:8000/v1")
        sub.add_argument("--api-key", default=None, help="default: OPENAI_API_KEY")

    fake = commands.add_parser("fake-upstream", help="a deterministic Chat Completions server for demos and tests")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9000)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "events":
        return _events(args)
    if args.command == "compact":
        return _compact(args)
    if args.command == "backup":
        return _backup(args)
    if args.command == "restore":
        return _restore(args)
    if args.command in ("export", "import"):
        return _carry(args)
    from server import fake_upstream

    return fake_upstream.main(["--host", args.host, "--port", str(args.port)]) or 0


_SERVER_ENVIRONMENT = "environment: OPENAI_BASE_URL, OPENAI_API_KEY (the server to talk to, as the SDK reads them)"


def _carry(args: argparse.Namespace) -> int:
    """export / import over the server's HTTP API (the server owns every write to its log)."""
    import httpx

    base = (args.base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1").rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key or os.environ.get('OPENAI_API_KEY', 'unused')}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
            if args.command == "export":
                params = {"files": "false"} if args.no_files else {}
                response = http.get(f"/threads/{args.thread_id}/export", params=params)
            else:
                body = sys.stdin.buffer.read() if str(args.path) == "-" else args.path.read_bytes()
                response = http.post("/threads/import", content=body, headers={"Content-Type": "application/x-ndjson"})
    except (httpx.HTTPError, OSError) as exc:
        print(f"threadlog {args.command}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        print(f"threadlog {args.command}: {response.status_code}: {message}", file=sys.stderr)
        return 1
    if args.command == "export":
        sys.stdout.write(response.text)
    else:
        thread = response.json()
        print(json.dumps({"thread_id": thread["id"], "ids": thread["threadlog_import"]["ids"]}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            providers_file=args.providers,
            sqlite_synchronous=args.synchronous,
            database_url=args.database_url,
            grace_s=args.grace_seconds,
            log_content=args.log_content,
            workers=args.workers,
        )
    except (ConfigError, ValueError) as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from server.workers import serve_workers

        return serve_workers(args, settings)
    return serve_one(args, settings)


def serve_one(args: argparse.Namespace, settings: Settings, sockets: list[Any] | None = None) -> int:
    """One server process (`sockets`: the listening socket a `--workers` supervisor shares)."""
    import uvicorn  # after the settings check, so a refused start is prompt

    from server.app import check_data_dir, create_app
    from server.connections import header_timeout_protocol
    from server.shutdown import GracefulServer, drain

    configure_logging(args.log_level, args.log_format)
    from server import tracing

    tracing.configure(os.environ, forced=args.otel)
    try:
        check_data_dir(settings)
        app = create_app(settings)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=None,  # ours (server/logs.py): uvicorn's lines get the same format
        access_log=False,  # server/request_context.py writes one line per request, with its id
        timeout_graceful_shutdown=5,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    server = GracefulServer(config, on_drain=lambda: drain(app.state.services, settings.grace_s))
    try:
        server.run(sockets=sockets)
    finally:
        tracing.shutdown()
    if not server.started:
        # uvicorn logged why ("Application startup failed"); say it in one line and exit
        # non-zero, so a supervisor sees the failure and restarts or alerts.
        print("threadlog: the server did not start (see the error above)", file=sys.stderr)
        return 3
    return 0


def _data_dir(given: Path | None) -> Path:
    """As `serve` picks it: the option, else THREADLOG_DATA_DIR, else ./threadlog-data."""
    return given if given is not None else data_dir_from_env(os.environ)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _events(args: argparse.Namespace) -> int:
    from server.event_log_cli import print_events

    db_path = _data_dir(args.data_dir) / "threadlog.sqlite"
    if not db_path.exists():
        print(f"threadlog: no event log at {db_path}", file=sys.stderr)
        return 2
    try:
        print_events(db_path, args.target, follow=args.follow, types=tuple(args.types), as_json=args.json)
    except LookupError as exc:
        print(f"threadlog: {exc.args[0]}", file=sys.stderr)
        return 1
    except (sqlite3.Error, BrokenPipeError) as exc:
        if isinstance(exc, BrokenPipeError):
            return 0  # `threadlog events ... | head`
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def _compact(args: argparse.Namespace) -> int:
    from events.compaction import compact

    db_path = _data_dir(args.data_dir) / "threadlog.sqlite"
    if not db_path.exists():
        print(f"threadlog: no event log at {db_path}", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"compacted {done}/{total} runs", file=sys.stderr, flush=True)

    try:
        report = compact(db_path, args.older_than, progress=progress)
    except sqlite3.Error as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    print(
        f"compacted {report.runs} runs: removed {report.events_removed} delta events; "
        f"{report.bytes_per_run_before:,.0f} bytes per run before, {report.bytes_per_run_after:,.0f} after "
        f"({report.seconds:.2f}s)"
    )
    return 0


def _backup(args: argparse.Namespace) -> int:
    from server.backup import backup

    try:
        report = backup(_data_dir(args.data_dir), args.to)
    except (OSError, sqlite3.Error) as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    print(f"backed up {report.events} events ({report.bytes / 1e6:.1f} MB) to {args.to}")
    if report.missing_files:
        print(f"note: {len(report.missing_files)} files were deleted while copying: {', '.join(report.missing_files)}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from server.backup import restore

    data_dir = _data_dir(args.data_dir)
    try:
        events = restore(args.source, data_dir)
    except (OSError, sqlite3.Error) as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    print(f"restored {events} events into {data_dir}; check it with: threadlog replay --data-dir {data_dir} --verify")
    return 0


async def _verify_postgres(dsn: str) -> Any:
    from events.postgres_views import snapshot_for_verify
    from projections import build_projector
    from projections.rebuild import verify_stream

    batches, position, live = await snapshot_for_verify(dsn)
    return await verify_stream(batches, live, build_projector(), position)


def _print_verified(report: Any) -> int:
    rate = f"{report.events_per_second:,.0f} events/s"
    print(f"replayed {report.events} events up to sequence {report.position} into {report.views} views ({rate})")
    if report.difference:
        print(f"MISMATCH: {report.difference}")
        return 1
    print("OK: rebuilt views equal the live views")
    return 0


def _replay_progress(position: int, head: int) -> None:
    share = f" ({position / head:.0%})" if head else ""
    print(f"replayed up to sequence {position:,} of {head:,}{share}", file=sys.stderr, flush=True)


def _replay(args: argparse.Namespace) -> int:
    from projections import build_projector
    from projections.rebuild import rebuild, verify

    database_url = os.environ.get("THREADLOG_DATABASE_URL")
    if database_url:
        if not args.verify:
            print("threadlog: replay rebuilds SQLite views only; with PostgreSQL use --verify", file=sys.stderr)
            return 2
        return _print_verified(asyncio.run(_verify_postgres(database_url)))
    data_dir = _data_dir(args.data_dir)
    db_path = data_dir / "threadlog.sqlite"
    if not db_path.exists():
        print(f"threadlog: no event log at {db_path}", file=sys.stderr)
        return 2
    if args.verify:
        return _print_verified(asyncio.run(verify(db_path, build_projector(), _replay_progress)))
    with open(data_dir / "threadlog.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("threadlog: a server is running on this data dir; stop it, or use --verify", file=sys.stderr)
            return 2
        report = asyncio.run(rebuild(db_path, build_projector(), _replay_progress))
    print(
        f"rebuilt {report.views} views from {report.events} events up to sequence {report.position} "
        f"in {report.seconds:.2f}s ({report.events_per_second:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
