"""A Google Cloud Storage API emulator on 127.0.0.1 (the `gcp-storage-emulator` package),
shared by every test of a session that asks for the `gcs_bucket` fixture.

It is a real HTTP server speaking the JSON API: gcsfs reaches it through
STORAGE_EMULATOR_HOST and tensorstore (Orbax) through TENSORSTORE_GCS_HTTP_URL, which
`selflengthen_jax.paths` derives from it. Subprocesses inherit both.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

BUCKET = "selflengthen-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """The emulator's URL, with STORAGE_EMULATOR_HOST set for this process and its children."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gcs_dir(gcs_emulator) -> str:
    """A fresh `gs://` folder in the emulator's bucket, one per test."""
    return f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}"
