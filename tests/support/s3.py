"""An S3 server on 127.0.0.1 for tests: moto in server mode, real HTTP in a thread of the test.

`running_s3()` starts moto's `ThreadedMotoServer`, yields an `S3Server` (its endpoint, a
key pair moto accepts, the region) and stops it on exit. Anything that speaks S3 over HTTP
(boto3, DuckDB's httpfs with `URL_STYLE 'path'` and `USE_SSL false`) can point at it.

moto keeps its buckets in process-wide state, not per server: a second server in the same
process would see the first one's buckets. So each start resets that state, and one test
process runs one server at a time.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto checks no signatures: any pair works, as long as a client sends one.
KEY_ID = "mirror-test-key"
SECRET = "mirror-test-secret"


@dataclass(frozen=True)
class S3Server:
    """A running S3 stand-in: where it listens and the credentials to sign requests with."""

    endpoint: str  # host:port, as DuckDB's S3 ENDPOINT takes it
    url: str  # http://host:port, as boto3's endpoint_url takes it
    key_id: str
    secret: str
    region: str

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style: bucket names are not host names)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


def _reset(url: str) -> None:
    """Empties moto's process-wide state (moto's own reset endpoint)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """A started, empty S3 stand-in on 127.0.0.1 (see the module docstring); stopped on exit."""
    # Port 0: the server binds a port the kernel picks, so no other process can take it
    # between choosing and binding (with a taken port, moto's start() would wait forever).
    moto = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        url = f"http://{host}:{port}"
        _reset(url)
        yield S3Server(
            endpoint=f"{host}:{port}",
            url=url,
            key_id=KEY_ID,
            secret=SECRET,
            region=REGION,
        )
    finally:
        # Stopping takes up to half a second: werkzeug's serve_forever polls for it.
        moto.stop()
