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
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from costack.errors import CostackError
from costack.errors import printable as clean

#: GDAL configuration for reads, applied unless the environment sets them: bounded retries
#: and time per HTTP request (``http_retries``, ``http_timeout`` in the config), no directory
#: listing on open, and no VRT raw band (a VRT can put any file's bytes into its pixels).
GDAL_HTTP_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_VRT_ENABLE_RAWRASTERBAND": "NO",
}
#: The options this process set itself (a later configuration may change them; the user's
#: own environment is never changed).
_SET_HERE: dict[str, str] = {}

PC_BLOB_SUFFIX = ".blob.core.windows.net"


def configure_gdal(timeout: float | None = None, retries: int | None = None) -> None:
    """Put :data:`GDAL_HTTP_OPTIONS` into the environment GDAL reads (and jobs inherit), with
    the config's ``http_timeout`` and ``http_retries`` when given; what the user's environment
    sets is kept."""
    options = dict(GDAL_HTTP_OPTIONS)
    if timeout is not None:
        options["GDAL_HTTP_TIMEOUT"] = options["GDAL_HTTP_CONNECTTIMEOUT"] = f"{timeout:g}"
    if retries is not None:
        options["GDAL_HTTP_MAX_RETRY"] = str(int(retries))
    for key, value in options.items():
        if key not in os.environ or os.environ[key] == _SET_HERE.get(key):
            os.environ[key] = value
            _SET_HERE[key] = value


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


def requester_pays(asset_fields: dict, item_properties: dict | None = None) -> bool:
    """Whether an asset's storage is requester-pays: the storage extension v1
    (``storage:requester_pays`` on the asset) or v2, to which pystac >= 1.12 migrates v1 on
    reading (the asset's ``storage:refs`` name schemes of the item's ``storage:schemes``, one
    with ``requester_pays: true``; Earth Search's Landsat Collection 2 items, for one)."""
    if asset_fields.get("storage:requester_pays"):
        return True
    schemes = dict((item_properties or {}).get("storage:schemes") or {})
    schemes.update(asset_fields.get("storage:schemes") or {})
    refs = asset_fields.get("storage:refs") or []
    return any(isinstance(schemes.get(r), dict) and schemes[r].get("requester_pays")
               for r in refs)  # fmt: skip


def check_requester_pays(
    key: str, href: str, asset_fields: dict, item_properties: dict | None = None
) -> None:
    """Refuse a requester-pays S3 asset (:func:`requester_pays`) when ``AWS_REQUEST_PAYER`` is
    not set."""
    if not href.startswith("s3://") or not requester_pays(asset_fields, item_properties):
        return
    if os.environ.get("AWS_REQUEST_PAYER", "").lower() != "requester":
        raise CostackError(
            "assets",
            f"{key}: {href[:100]} is in a requester-pays bucket (the item's storage extension "
            "says requester_pays)",
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


# ---------------------------------------------------------------------------------------------
# The gate: every path GDAL opens for an item's asset passes here, after every transformation
# (relative href made absolute, file:// URL unquoted, Planetary Computer signature, each HTTP
# redirect); see docs/security.md.

#: GDAL drivers an asset may be read with, by the file's first bytes (a format that names other
#: files, as VRT, STACIT, GTI or MRF do, is never opened: it would reach sources this gate never
#: saw).
SOURCE_FORMATS: tuple[tuple[tuple[bytes, ...], str, str], ...] = (
    ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "GTiff", "GeoTIFF"),
    ((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ"), "JP2OpenJPEG", "JPEG 2000"),
    ((b"\x89PNG\r\n\x1a\n",), "PNG", "PNG"),
    ((b"\xff\xd8\xff",), "JPEG", "JPEG"),
)
#: Bytes read to recognise a format (and the most a redirect probe downloads).
SNIFF_BYTES = 1024
#: Most HTTP redirects followed (each hop checked).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class SourcePolicy:
    """What an item may make this machine read, from the config: ``allowed_sources`` (hosts,
    host:port or GDAL prefixes beyond public http(s)/s3), ``allowed_paths`` (folders beyond each
    item's own) and the time limit and retries of each HTTP request."""

    allowed_sources: tuple[str, ...] = ()
    allowed_paths: tuple[str, ...] = ()
    timeout: float = 30.0
    retries: int = 3

    @classmethod
    def of(cls, cfg: Any) -> SourcePolicy:
        """The policy of a :class:`~costack.config.RunConfig`."""
        return cls(tuple(cfg.allowed_sources), tuple(cfg.allowed_paths),
                   float(cfg.http_timeout), int(cfg.http_retries))  # fmt: skip

    @classmethod
    def coerce(cls, policy: SourcePolicy | Mapping[str, Any] | None) -> SourcePolicy:
        """``policy`` as a :class:`SourcePolicy`: as is, from a mapping of its fields (a rule's
        params, lists for tuples), or the default (nothing beyond public sources)."""
        if policy is None:
            return cls()
        if isinstance(policy, cls):
            return policy
        return cls(
            tuple(policy.get("allowed_sources", ())),
            tuple(policy.get("allowed_paths", ())),
            float(policy.get("timeout", cls.timeout)),
            int(policy.get("retries", cls.retries)),
        )


@dataclass(frozen=True)
class Source:
    """A checked source: the path GDAL opens and the driver it is opened with."""

    path: str
    driver: str


def _refuse(key: str, href: str, problem: str, fix: str) -> CostackError:
    return CostackError("assets", f"{key}: {clean(href)[:120]} {problem}", fix)


def sniff_format(head: bytes) -> str | None:
    """The driver of a raster by its first bytes (:data:`SOURCE_FORMATS`), or None."""
    for magics, driver, _ in SOURCE_FORMATS:
        if head.startswith(magics):
            return driver
    return None


def _format_refusal(key: str, href: str, head: bytes) -> CostackError:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"<VRTDataset") or start.startswith(b"<"):
        what = "is a VRT (or another XML description), which names further files"
    elif start.startswith((b"{", b"[")):
        what = "is JSON (a STAC or tile-index description), which names further files"
    elif not head:
        what = "is empty"
    else:
        what = "is not a GeoTIFF, JPEG 2000, PNG or JPEG raster"
    return _refuse(key, href, what, "point the item at the raster file itself (GeoTIFF/COG)")


def _host_allowed(key: str, href: str, url: str, policy: SourcePolicy) -> None:
    """Refuse ``url`` (``href`` itself, or a hop it redirects to) when its host is not in
    ``allowed_sources`` and resolves to a non-public address."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host in policy.allowed_sources or parsed.netloc in policy.allowed_sources:
        return
    bad = _private_addresses(host)
    if bad:
        hop = f"redirects to {clean(url)[:100]}, which " if url != href else ""
        raise _refuse(key, href, f"{hop}points at a non-public address ({', '.join(bad)})",
                      f"add {host!r} (or {parsed.netloc!r}) to allowed_sources if this source "
                      "is yours")  # fmt: skip


def _probe(key: str, href: str, policy: SourcePolicy) -> tuple[str, bytes]:
    """Follow ``href``'s redirects one hop at a time, each hop's host checked before it is
    asked (:func:`_host_allowed`); return the final URL and its first bytes (empty when it
    answers an error: GDAL then reports it, with its retries)."""
    import urllib3

    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(
        connect=policy.timeout, read=policy.timeout))  # fmt: skip
    url = href
    for _ in range(MAX_REDIRECTS + 1):
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"}:
            raise _refuse(key, href, f"redirects to {clean(url)[:100]}, which is not http(s)",
                          "give the final URL of the file in the item")  # fmt: skip
        _host_allowed(key, href, url, policy)
        try:
            resp = http.request("GET", url, headers={"Range": f"bytes=0-{SNIFF_BYTES - 1}"},
                                preload_content=False, redirect=False)  # fmt: skip
            try:
                head = b""
                if resp.status < 300:
                    head = resp.read(SNIFF_BYTES, decode_content=False)[:SNIFF_BYTES]
            finally:
                resp.release_conn()
                resp.close()
        except (urllib3.exceptions.TimeoutError, TimeoutError) as err:
            raise CostackError(
                "assets", f"{key}: {clean(url)[:120]} timed out (no answer within "
                f"{policy.timeout:g} s: {type(err).__name__})",
                "check that the server is up, or raise http_timeout",
            ) from err  # fmt: skip
        except urllib3.exceptions.HTTPError as err:
            reason = " ".join(str(err).split())[:120]
            raise CostackError("assets", f"{key}: cannot read {clean(url)[:120]} ({reason})",
                               "check the href in the item and that the URL is reachable"
                               ) from err  # fmt: skip
        if resp.status in {301, 302, 303, 307, 308}:
            location = resp.headers.get("Location")
            if not location:
                return url, b""
            url = urljoin(url, location)
            continue
        return url, head
    raise _refuse(key, href, f"redirects more than {MAX_REDIRECTS} times",
                  "give the final URL of the file in the item")  # fmt: skip


def _vsi_path(key: str, href: str, path: str, policy: SourcePolicy) -> str:
    prefix = path.split("/", 2)[1]
    if f"/{prefix}/" in policy.allowed_sources:
        return path
    raise _refuse(key, href, f"is a GDAL virtual path (/{prefix}/), which an item may not use "
                  "to reach other sources",
                  f"add '/{prefix}/' to allowed_sources if you trust this item")  # fmt: skip


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _local(key: str, href: str, path: str, item_href: str, policy: SourcePolicy) -> Source:
    if is_url(item_href):
        raise _refuse(key, href, f"is a local file named by the remote item {clean(item_href)}"
                      "; a remote item may not make this machine read its own files",
                      "use an item whose hrefs are URLs, or a local copy of the item")  # fmt: skip
    path = os.path.abspath(path)
    if path.startswith("/vsi"):
        return Source(_vsi_path(key, href, path, policy), "")
    try:
        st = os.stat(path)  # never open() before this: a FIFO would block
    except OSError as err:
        raise CostackError(
            "assets",
            f"{key}: cannot read {clean(href)[:120]} ({err.strerror})",
            "check the href in the item and that the file exists",
        ) from err
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a special file"
        )
        raise _refuse(key, href, f"is {kind}, not a regular file",
                      "point the item at the raster file itself")  # fmt: skip
    real = os.path.realpath(path)
    roots = [os.path.realpath(os.path.dirname(item_href))]
    roots += [os.path.realpath(os.path.expanduser(p)) for p in policy.allowed_paths]
    if not any(_under(real, root) for root in roots):
        where = f" (it is {real})" if real != path else ""
        raise _refuse(
            key, href, f"is outside the item's folder {roots[0]} and allowed_paths{where}",
            f"add {os.path.dirname(real)!r} to allowed_paths if the item may read it",
        )  # fmt: skip
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    driver = sniff_format(head)
    if driver is None:
        raise _format_refusal(key, href, head)
    return Source(path, driver)


def source_path(key: str, href: str, item_href: str, policy: SourcePolicy) -> Source:
    """The gate: the path GDAL may open for asset ``key``'s absolute ``href`` in the item at
    ``item_href``, and its driver; raises a one-line :class:`CostackError` otherwise.

    * http(s): the host (each address it resolves to) is public or in ``allowed_sources``;
      redirects are followed here one hop at a time, each hop checked before it is asked, and
      GDAL is given the final URL; the first bytes must be a raster format of
      :data:`SOURCE_FORMATS` (not a VRT or another format naming further files).
    * s3: through ``/vsis3/`` and the endpoint the user configured.
    * local paths and ``file://`` URLs (normalised, symlinks resolved): only from a local item,
      regular files only (checked with ``stat`` before any open: no FIFO, device or folder),
      inside the item's own folder or an ``allowed_paths`` folder; the same formats.
    * GDAL virtual paths (``/vsizip/``...) only with their prefix in ``allowed_sources``;
      any other scheme is refused.
    """
    configure_gdal(policy.timeout, policy.retries)
    if href.startswith("/vsi"):
        return Source(_vsi_path(key, href, href, policy), "")
    parsed = urlparse(href)
    scheme = parsed.scheme.lower()
    if scheme in {"http", "https"}:
        if needs_pc_signing(href):
            href = sign_pc(href)
        final, head = _probe(key, href, policy)
        driver = sniff_format(head)
        if head and driver is None:
            raise _format_refusal(key, final, head)
        return Source(f"/vsicurl/{final}", driver or "")
    if scheme == "s3":
        return Source(f"/vsis3/{parsed.netloc}{parsed.path}", "")
    if scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise _refuse(key, href, f"names a file on another host ({clean(parsed.netloc)})",
                          "give a local path or an http(s) URL")  # fmt: skip
        return _local(key, href, unquote(parsed.path), item_href, policy)
    if scheme and not (len(scheme) == 1 and os.name == "nt"):
        raise _refuse(key, href, f"has the scheme {clean(scheme)!r}, which is not read",
                      "give an http(s) or s3 URL or a local path")  # fmt: skip
    return _local(key, href, href, item_href, policy)


def open_source(source: Source):
    """``rasterio.open`` of a checked :class:`Source` with its own driver only."""
    import rasterio

    return rasterio.open(source.path, driver=source.driver or None)


def fetch_bytes(url: str, parameter: str, timeout: float, max_bytes: int, retries: int = 3
                ) -> bytes:  # fmt: skip
    """The body of ``url`` (a STAC item), bounded in time and size: each request ends after
    ``timeout`` seconds, transient errors (429, 5xx) are retried ``retries`` times, and a body
    larger than ``max_bytes`` is refused as soon as it passes that, on the wire and again as it
    is decompressed (a gzip bomb never expands in memory)."""
    import time
    import zlib

    import urllib3

    retry = urllib3.Retry(
        total=retries,
        redirect=MAX_REDIRECTS,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        raise_on_status=False,
    )
    http = urllib3.PoolManager(
        retries=retry, timeout=urllib3.Timeout(connect=timeout, read=timeout)
    )
    deadline = time.monotonic() + timeout
    too_big = CostackError(parameter, f"{clean(url)[:120]} is larger than max_item_bytes = "
                           f"{max_bytes:,} bytes", "raise max_item_bytes if the item is that "
                           "large, or check the URL")  # fmt: skip
    timed_out = CostackError(parameter, f"{clean(url)[:120]} timed out (no complete answer "
                             f"within {timeout:g} s)", "check that the server is up, or raise "
                             "http_timeout")  # fmt: skip
    try:
        resp = http.request("GET", url, preload_content=False, decode_content=False,
                            headers={"Accept-Encoding": "gzip, deflate"})  # fmt: skip
        try:
            if resp.status >= 400:
                raise CostackError(parameter, f"{clean(url)[:120]} answered HTTP {resp.status}",
                                   "check the URL of the item")  # fmt: skip
            encoding = (resp.headers.get("Content-Encoding") or "").lower().strip()
            inflate = zlib.decompressobj(47) if encoding in {"gzip", "x-gzip", "deflate"} \
                else None  # fmt: skip
            wire, out = 0, bytearray()
            while True:
                chunk = resp.read(65536, decode_content=False)
                if not chunk:
                    break
                wire += len(chunk)
                if wire > max_bytes:
                    raise too_big
                if inflate is not None:
                    out += inflate.decompress(chunk, max_bytes + 1 - len(out))
                    if len(out) > max_bytes or inflate.unconsumed_tail:
                        raise too_big
                else:
                    out += chunk
                if time.monotonic() > deadline:
                    raise timed_out
            if inflate is not None:
                out += inflate.flush()
                if len(out) > max_bytes:
                    raise too_big
            return bytes(out)
        finally:
            resp.release_conn()
            resp.close()
    except (urllib3.exceptions.TimeoutError, TimeoutError) as err:
        raise timed_out from err
    except zlib.error as err:
        raise CostackError(parameter, f"{clean(url)[:120]} is not valid {encoding} data ({err})",
                           "check the URL of the item") from err  # fmt: skip
    except urllib3.exceptions.HTTPError as err:
        reason = " ".join(str(err).split())[:160]
        raise CostackError(
            parameter,
            f"cannot read {clean(url)[:120]} ({reason})",
            "check the URL of the item and that its server is up",
        ) from err
