"""A Google Cloud Storage API emulator on 127.0.0.1 (the `gcp-storage-emulator` package),
shared by every test of a session that asks for the `gcs_bucket` fixture.

It is a real HTTP server speaking the JSON API: gcsfs reaches it through
STORAGE_EMULATOR_HOST and tensorstore (Orbax) through TENSORSTORE_GCS_HTTP_URL, which
`selflengthen_jax.paths` derives from it. Subprocesses inherit both. One gap is filled:
real GCS sends an object's generation (`x-goog-generation`) with every download and
tensorstore's OCDBT needs it to read its manifest back; the emulator omits it, so
`complete_downloads` adds it.
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


def complete_downloads() -> None:
    """Make the emulator's object downloads carry x-goog-generation, as GCS's do."""
    import gcp_storage_emulator.server as emulator
    from gcp_storage_emulator.handlers import objects

    plain = objects.download
    if getattr(plain, "completed", False):
        return

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # the emulator's own NotFound: already answered 404
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    download.completed = True
    objects.download = download  # objects.get calls it for alt=media
    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is plain:
                handlers[method] = download


@pytest.fixture(scope="session")
def gcs_emulator():
    """The emulator's URL, with STORAGE_EMULATOR_HOST set for this process and its children."""
    from gcp_storage_emulator.server import create_server

    complete_downloads()
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
