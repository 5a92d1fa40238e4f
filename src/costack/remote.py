"""Remote sources: GDAL paths for asset hrefs, HTTP retries, S3 and Planetary Computer access.

* http(s) URLs are read through GDAL's ``/vsicurl/`` with retries on transient errors
  (:data:`GDAL_HTTP_OPTIONS`: 429 and 5xx answers and time-outs are retried up to 5 times,
  GDAL doubling the delay between tries), set as defaults a user's environment overrides.
* ``s3://bucket/key`` hrefs through ``/vsis3/``, which takes its credentials and options from
  the environment as GDAL documents them: ``AWS_NO_SIGN_REQUEST=YES`` for public buckets,
  ``AWS_REQUEST_PAYER=requester`` for requester-pays ones (Landsat Collection 2 on AWS, whose
  assets say ``storage:requester_pays: true``; without it such a read is refused before any
  job, with a line saying what to set), ``AWS_S3_ENDPOINT`` for another endpoint.
* Planetary Computer blob hrefs need a shared access signature: with the optional
  ``planetary-computer`` package (``pip install 'costack[pc]'``) they are signed each time
  they are opened (a signature lasts about an hour, longer than one job but not always a run);
  without it, a one-line error says to install it.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from costack.errors import CostackError

#: GDAL configuration for remote reads, applied unless the environment sets them.
GDAL_HTTP_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}

PC_BLOB_SUFFIX = ".blob.core.windows.net"


def configure_gdal() -> None:
    """Put :data:`GDAL_HTTP_OPTIONS` into the environment GDAL reads, without overriding."""
    for key, value in GDAL_HTTP_OPTIONS.items():
        os.environ.setdefault(key, value)


def is_url(href: str) -> bool:
    """True for http(s) URLs."""
    return urlparse(href).scheme in {"http", "https"}


def needs_pc_signing(href: str) -> bool:
    """True for a Planetary Computer blob URL that carries no signature yet."""
    url = urlparse(href)
    return url.scheme == "https" and url.netloc.endswith(PC_BLOB_SUFFIX) and "sig=" not in url.query


def sign_pc(href: str, parameter: str = "assets") -> str:
    """Sign a Planetary Computer href with the optional ``planetary-computer`` package."""
    try:
        import planetary_computer
    except ImportError as err:
        raise CostackError(
            parameter,
            f"{href[:100]} is a Planetary Computer asset, which must be signed to be read, "
            "and the planetary-computer package is not installed",
            "pip install 'costack[pc]' (or planetary-computer), or give signed hrefs",
        ) from err
    return str(planetary_computer.sign(href))


def gdal_path(href: str, sign: bool = True) -> str:
    """A path GDAL can open for an absolute href (local path, ``file://``, http(s), s3)."""
    configure_gdal()
    parsed = urlparse(href)
    if parsed.scheme in {"http", "https"}:
        if sign and needs_pc_signing(href):
            href = sign_pc(href)
        return f"/vsicurl/{href}"
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    return href


def check_requester_pays(key: str, href: str, asset_fields: dict) -> None:
    """Refuse a requester-pays S3 asset when ``AWS_REQUEST_PAYER`` is not set."""
    if not href.startswith("s3://") or not asset_fields.get("storage:requester_pays"):
        return
    if os.environ.get("AWS_REQUEST_PAYER", "").lower() != "requester":
        raise CostackError(
            "assets",
            f"{key}: {href[:100]} is in a requester-pays bucket (storage:requester_pays)",
            "set AWS_REQUEST_PAYER=requester and your AWS credentials (the reads are billed "
            "to you), or use another copy of the data",
        )
