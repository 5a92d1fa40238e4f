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

import ipaddress
import os
import socket
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


def _private_addresses(host: str) -> list[str]:
    """The addresses ``host`` resolves to that are not public (loopback, private, link-local,
    reserved...); [] when all are public or the name does not resolve (GDAL then fails with
    its own error, naming the href)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return []
    bad = []
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global:
            bad.append(str(addr))
    return sorted(set(bad))


def check_source(key: str, href: str, allowed: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse an asset href that would make this host read what an item should not reach.

    By default: local files, and http(s) URLs whose host resolves to public addresses only;
    s3 hrefs go to the endpoint the user configured. Refused unless ``allowed`` lists them
    (config ``allowed_sources``): hosts resolving to loopback, private, link-local or other
    non-public addresses (a third-party item could point at internal services), and GDAL
    virtual paths (``/vsicurl/``, ``/vsizip/``...) written into an item. An entry of
    ``allowed`` is a host (``127.0.0.1``, ``data.internal``), ``host:port``, or a GDAL prefix
    (``/vsizip/``).
    """
    allowed = tuple(allowed)
    if href.startswith("/vsi"):
        prefix = href.split("/", 2)[1]
        if f"/{prefix}/" in allowed:
            return
        raise CostackError(
            "assets",
            f"{key}: href {href[:100]} is a GDAL virtual path (/{prefix}/), which an item may "
            "not use to reach other sources",
            f"add '/{prefix}/' to allowed_sources if you trust this item",
        )
    url = urlparse(href)
    if url.scheme not in {"http", "https"}:
        return
    host = url.hostname or ""
    if host in allowed or url.netloc in allowed:
        return
    bad = _private_addresses(host)
    if bad:
        raise CostackError(
            "assets",
            f"{key}: href {href[:100]} points at a non-public address ({', '.join(bad)})",
            f"add {host!r} to allowed_sources if this item is yours",
        )
