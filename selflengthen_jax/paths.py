"""One path layer for everything the project reads or writes: local disk or `gs://`.

`path()` keeps a local path a plain `pathlib.Path` (so a local run behaves exactly as
before) and turns `gs://bucket/key` into an `etils.epath.Path` backed by gcsfs, the
same path type Orbax uses, instead of the `gs:/bucket/key` directory that
`pathlib.Path` would make of it. Both types share the pathlib API the callers use
(`/`, `name`, `parent`, `exists`, `is_file`, `iterdir`, `read_bytes`, `write_bytes`, ...);
what object storage lacks (append, rename, fsync) is handled by the callers that need
it, after asking `is_remote`.

The plain gcsfs client is registered for `gs://`: the newer default one first probes
each bucket's layout over gRPC and, against an emulator or without the Storage
Control API, waits about a minute per call before falling back. With
`STORAGE_EMULATOR_HOST` set (tests, local emulators), tensorstore (Orbax's array
store) is pointed at the same emulator.
"""

from __future__ import annotations

import os
import pathlib
from typing import Union

from etils import epath

AnyPath = Union[pathlib.Path, epath.Path]
SCHEME = "gs://"


def is_remote(p: str | os.PathLike) -> bool:
    """Whether `p` names an object in a bucket (`gs://...`), not a local file."""
    return os.fspath(p).startswith(SCHEME)


def path(p: str | os.PathLike) -> AnyPath:
    """`p` as a path object: `pathlib.Path` on local disk, `epath.Path` for `gs://`."""
    if isinstance(p, epath.Path) and not isinstance(p, pathlib.Path):
        return p
    if is_remote(p):
        _configure_gcs()
        return epath.Path(os.fspath(p))
    return pathlib.Path(p)


def bucket(p: str | os.PathLike) -> str:
    """The bucket name of a `gs://bucket/key` path."""
    return os.fspath(p)[len(SCHEME):].split("/", 1)[0]


_configured = False


def _configure_gcs() -> None:
    """Register the probe-free gcsfs client for gs:// and point tensorstore at an emulator."""
    global _configured
    if _configured:
        return
    try:
        import fsspec
        import gcsfs.core
    except ImportError as error:
        raise OSError(f"gs:// paths need gcsfs ({error}); pip install gcsfs") from None
    class PlainGCS(gcsfs.core.GCSFileSystem):
        """gcsfs without the bucket-layout probe and without a listings cache: other
        hosts write into the same folders, so a cached listing would hide their objects."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("use_listings_cache", False)
            super().__init__(*args, **kwargs)

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, PlainGCS, clobber=True)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = emulator if "://" in emulator else f"http://{emulator}"
        # tensorstore wants a token even for an emulator that ignores it
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    _configured = True


def gcs_filesystem():
    """The gcsfs file system behind `gs://` paths (for ranged reads and listings)."""
    _configure_gcs()
    import fsspec
    return fsspec.filesystem("gs")


def _endpoint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return emulator if "://" in emulator else f"http://{emulator}"
    return "https://storage.googleapis.com"


def _auth_headers(what: str, p: str) -> dict[str, str]:
    """A bearer token from the application-default credentials (none for an emulator)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return {}
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests
    try:
        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
        creds.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.DefaultCredentialsError:
        raise OSError(f"{what} {p}: no Google Cloud credentials found (run `gcloud auth "
                      "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run on a "
                      "GCP VM with a service account)") from None
    except google.auth.exceptions.GoogleAuthError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise OSError(f"{what} {p}: Google Cloud credentials did not work ({first})") from None
    return {"Authorization": f"Bearer {creds.token}"}


def check_bucket(p: str | os.PathLike, what: str, timeout: float = 20.0) -> None:
    """Before any compute: the bucket of a `gs://` path exists and we can reach it, or
    one OSError line saying which is wrong (no credentials, no emulator, no bucket).
    One plain HTTP request, so a dead endpoint fails in seconds, not after gcsfs's
    minute of retries."""
    import urllib.error
    import urllib.request

    p = os.fspath(p)
    if not is_remote(p):
        return
    name = bucket(p)
    if not name:
        raise OSError(f"{what} {p}: no bucket name after gs://")
    url = f"{_endpoint()}/storage/v1/b/{name}"
    request = urllib.request.Request(url, headers=_auth_headers(what, p))
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise OSError(f"{what} {p}: bucket gs://{name} does not exist") from None
        if error.code in (401, 403):
            raise OSError(f"{what} {p}: no access to bucket gs://{name} with these credentials "
                          f"(HTTP {error.code})") from None
        raise OSError(f"{what} {p}: Google Cloud Storage answered HTTP {error.code} for "
                      f"gs://{name}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        hint = (f"is the emulator running at {os.environ['STORAGE_EMULATOR_HOST']}?"
                if os.environ.get("STORAGE_EMULATOR_HOST") else "check the network")
        raise OSError(f"{what} {p}: cannot reach Google Cloud Storage at {_endpoint()} "
                      f"({reason}); {hint}") from None


def upload_tree(local: pathlib.Path, remote: AnyPath, last: tuple[str, ...] = ()) -> None:
    """Copy every file under the local directory `local` to the same names under
    `remote`, one whole object each, the files named in `last` after all others (a
    reader that finds those finds everything they refer to)."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in last)  # stable: the rest keep their order
    for f in files:
        target = remote / f.relative_to(local).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
