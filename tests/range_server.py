"""A static file server for tests: HTTP range requests (as GDAL's /vsicurl/ and /vsis3/ make
them), a way to make the first requests of a path fail, and a log of every request.

Run as ``python range_server.py ROOT PORT LOG [FAIL_FIRST]``: it serves ROOT on 127.0.0.1:PORT,
answers the first FAIL_FIRST GET requests of each file with 503 (default 0), and appends one
JSON line per request to LOG (method, path, Range, status, and the x-amz-request-payer header).
S3-style paths ``/bucket/key`` are served from ``ROOT/bucket/key``; a ListObjects request
(a query on a bucket) gets 404, so GDAL falls back to the object itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(sys.argv[1]).resolve()
PORT = int(sys.argv[2])
LOG = Path(sys.argv[3])
FAIL_FIRST = int(sys.argv[4]) if len(sys.argv) > 4 else 0
_gets: dict[str, int] = {}


class Handler(BaseHTTPRequestHandler):
    """GET and HEAD with single byte ranges."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep stderr quiet
        pass

    def _log(self, status: int) -> None:
        entry = {
            "method": self.command, "path": self.path, "range": self.headers.get("Range"),
            "status": status, "request_payer": self.headers.get("x-amz-request-payer"),
        }  # fmt: skip
        with open(LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(status)

    def _file(self) -> Path | None:
        url = urlparse(self.path)
        if url.query:
            return None
        path = (ROOT / unquote(url.path).lstrip("/")).resolve()
        if ROOT not in path.parents or not path.is_file():
            return None
        return path

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self._file()
        if path is None:
            self._send(404)
            return
        if self.command == "GET":
            n = _gets.get(str(path), 0)
            _gets[str(path)] = n + 1
            if n < FAIL_FIRST:
                self._send(503, b"try again")
                return
        data = path.read_bytes()
        size = len(data)
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        common = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else size - 1, size - 1)
            if start >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            headers = dict(common, **{"Content-Range": f"bytes {start}-{end}/{size}"})
            self._send(206, data[start : end + 1], headers)
        else:
            self._send(200, data, common)


if __name__ == "__main__":
    os.chdir(ROOT)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
