"""Ingestion throughput with the local embedder, and where the time goes.

    python bench/bench_ingest.py            # ~400 KB of real files (~2-3 min on 2 cores)
    python bench/bench_ingest.py --quick    # ~120 KB

The server's own pipeline per file (what ``VectorStores._ingest_one`` runs):
``extract_text`` (parse) -> ``chunk_text`` with the auto strategy (tokenize + chunk)
-> ``LocalMiniLMEmbedder.embed`` (embed) -> ``VectorIndex._write_file`` (LanceDB
write + FTS upkeep). Files: real text on this machine -- Markdown/RST/text docs from
site-packages and /usr/share/doc, and stdlib .py sources -- in that order of
preference, 2-60 KB each.

Part 1 runs files one at a time and splits the time by stage. Part 2 ingests a
second set with two files in flight, as the server does (its ingestion semaphore is
2), for the throughput a 2-core server actually reaches. Text MB/s counts the bytes
of the files as uploaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_search import machine
from server.retrieval import AUTO_CHUNKING, LocalMiniLMEmbedder, VectorIndex, chunk_text, extract_text


def candidate_files() -> Iterator[Path]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, patterns in (
        (purelib, ("*.md", "*.rst", "*.txt")),
        (Path("/usr/share/doc"), ("*.md", "*.txt", "README*")),
        (stdlib, ("*.py",)),
    ):
        if not root.is_dir():
            continue
        for pattern in patterns:
            for path in sorted(root.rglob(pattern)):
                if "test" not in str(path).lower() and path.is_file() and not path.name.endswith(".gz"):
                    yield path


def pick_files(budget: int, skip: int = 0) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    total = 0
    seen = 0
    for path in candidate_files():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not 2_000 < len(data) < 60_000 or b"\x00" in data[:1024]:
            continue
        seen += 1
        if seen <= skip:
            continue
        files.append((path.name, data))
        total += len(data)
        if total >= budget:
            break
    return files


def sequential(files: list[tuple[str, bytes]], embedder: LocalMiniLMEmbedder, workdir: Path) -> dict[str, float]:
    index = VectorIndex(str(workdir / "seq"), embedder)
    spent = {"parse": 0.0, "tokenize+chunk": 0.0, "embed": 0.0, "lancedb write+fts": 0.0}
    n_chunks = tokens = 0
    size = sum(len(d) for _, d in files)
    for i, (name, data) in enumerate(files):
        t0 = time.perf_counter()
        text = extract_text(name, data)
        t1 = time.perf_counter()
        chunks = chunk_text(text, *AUTO_CHUNKING)
        t2 = time.perf_counter()
        vectors = embedder.embed([c.text for c in chunks])
        t3 = time.perf_counter()
        index._write_file("vs_ingest", f"file_{i}", name, chunks, {}, vectors)
        t4 = time.perf_counter()
        for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[key] += dt
        n_chunks += len(chunks)
        tokens += sum(c.token_count for c in chunks)
    wall = sum(spent.values())
    print(
        f"\n=== 1. one file at a time: {len(files)} files, {size / 1e6:.2f} MB, {n_chunks} chunks "
        f"(auto {AUTO_CHUNKING[0]}/{AUTO_CHUNKING[1]}), {tokens:,} chunk tokens ==="
    )
    print(
        f"{wall:.1f} s: {n_chunks / wall:.1f} chunks/s, {size / 1e6 / wall:.4f} MB/s, "
        f"{tokens / wall:,.0f} embedded tokens/s"
    )
    for key, value in spent.items():
        print(f"  {key:<18} {value:7.2f} s  {value / wall:6.1%}")
    return {"chunks_s": n_chunks / wall, "mb_s": size / 1e6 / wall, **{k: v / wall for k, v in spent.items()}}


async def concurrent(files: list[tuple[str, bytes]], embedder: LocalMiniLMEmbedder, workdir: Path) -> dict[str, float]:
    index = VectorIndex(str(workdir / "conc"), embedder)
    limit = asyncio.Semaphore(2)
    n_chunks = 0

    async def one(i: int, name: str, data: bytes) -> None:
        nonlocal n_chunks
        async with limit:
            text = await asyncio.to_thread(extract_text, name, data)
            chunks = await asyncio.to_thread(chunk_text, text, *AUTO_CHUNKING)
            n_chunks += await index.add_file("vs_ingest", f"file_{i}", name, chunks)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, n, d) for i, (n, d) in enumerate(files)))
    wall = time.perf_counter() - start
    size = sum(len(d) for _, d in files)
    print(f"\n=== 2. two files in flight (as the server): {len(files)} files, {size / 1e6:.2f} MB ===")
    print(f"{wall:.1f} s: {n_chunks / wall:.1f} chunks/s, {size / 1e6 / wall:.4f} MB/s")
    return {"chunks_s": n_chunks / wall, "mb_s": size / 1e6 / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kb", type=int, default=None, help="KB of files per part")
    args = parser.parse_args()
    budget = (args.kb or (60 if args.quick else 200)) * 1000
    print(machine(), flush=True)
    embedder = LocalMiniLMEmbedder()
    embedder.warmup()
    first = pick_files(budget)
    second = pick_files(budget, skip=len(first))
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        seq = sequential(first, embedder, Path(tmp))
        conc = asyncio.run(concurrent(second, embedder, Path(tmp)))
    print("\n==== SUMMARY bench_ingest ====")
    print(machine())
    print(f"one at a time   {seq['chunks_s']:6.1f} chunks/s  {seq['mb_s']:.4f} MB/s")
    print(f"two in flight   {conc['chunks_s']:6.1f} chunks/s  {conc['mb_s']:.4f} MB/s")
    print("time split      " + ", ".join(f"{k} {v:.1%}" for k, v in seq.items() if k not in ("chunks_s", "mb_s")))


if __name__ == "__main__":
    main()
