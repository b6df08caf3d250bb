"""An S3-compatible server on loopback for tests: moto in server mode, in a thread of the test process.

The server processes under test reach it over HTTP with the usual AWS variables (`env()`), as they
would reach any object storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.serverproc import free_port

__all__ = ["S3Server", "s3_server"]

BUCKET = "threadlog-test"


@dataclass
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> object:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip

    def keys(self, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
        # (pyarrow leaves an empty "directory" marker, `prefix/`, where it deleted the last object)
        return sorted(item["Key"] for item in listed.get("Contents", []) if not item["Key"].endswith("/"))


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    running = S3Server(f"http://127.0.0.1:{port}")
    try:
        running.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield running
    finally:
        server.stop()
