"""`threadlog serve | replay | fake-upstream`."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from server.config import ConfigError, Settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threadlog", description="A self-hosted OpenAI Assistants API v2 server.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--data-dir", type=Path, default=None, help="where the event log and files live")
    serve.add_argument("--providers", type=Path, default=None, help="providers TOML file")
    serve.add_argument("--synchronous", choices=["NORMAL", "FULL"], default=None, help="SQLite durability mode")
    serve.add_argument("--log-level", default="info")

    replay = commands.add_parser("replay", help="rebuild every view from the event log")
    replay.add_argument("--data-dir", type=Path, required=True)
    replay.add_argument("--verify", action="store_true", help="compare the rebuilt views with the live ones")

    fake = commands.add_parser("fake-upstream", help="a deterministic Chat Completions server for demos and tests")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9000)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "replay":
        return _replay(args)
    from server import fake_upstream

    return fake_upstream.main(["--host", args.host, "--port", str(args.port)]) or 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            providers_file=args.providers,
            sqlite_synchronous=args.synchronous,
        )
    except (ConfigError, ValueError) as exc:
        print(f"threadlog: {exc}", file=sys.stderr)
        return 2
    import uvicorn  # after the settings check, so a refused start is prompt

    from server.app import create_app
    from server.connections import header_timeout_protocol

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    server = uvicorn.Server(config)
    server.run()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from projections import build_projector
    from projections.rebuild import rebuild, verify

    db_path = args.data_dir / "threadlog.sqlite"
    if not db_path.exists():
        print(f"threadlog: no event log at {db_path}", file=sys.stderr)
        return 2
    if args.verify:
        report = asyncio.run(verify(db_path, build_projector()))
        rate = f"{report.events_per_second:,.0f} events/s"
        print(f"replayed {report.events} events up to sequence {report.position} into {report.views} views ({rate})")
        if report.difference:
            print(f"MISMATCH: {report.difference}")
            return 1
        print("OK: rebuilt views equal the live views")
        return 0
    with open(args.data_dir / "threadlog.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("threadlog: a server is running on this data dir; stop it, or use --verify", file=sys.stderr)
            return 2
        report = asyncio.run(rebuild(db_path, build_projector()))
    print(
        f"rebuilt {report.views} views from {report.events} events up to sequence {report.position} "
        f"in {report.seconds:.2f}s ({report.events_per_second:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
