"""A hostile HTTP server for tests: what a third-party item's host could do to this machine.

Run as ``python hostile_server.py ROOT PORT LOG ROUTES``: it serves ROOT on 127.0.0.1:PORT with
byte ranges (as GDAL's /vsicurl/ reads), logs every request to LOG (one JSON line, written as
the request arrives, before any answer: a stalled request is counted too), and answers the
paths listed in the JSON file ROUTES (read at every request, so a test can change it) as told:

* ``{"redirect": URL}``: 302 to URL (absolute, or a path on this server);
* ``{"stall": N}``: 200 with the file's length, its first N bytes, then nothing (the socket
  stays open until the server is stopped);
* ``{"stall_after": N}``: ranges that start before N are served, later ones stall;
* ``{"gzip_bomb": N}``: ``Content-Encoding: gzip`` with N zero bytes compressed (N = 512 MB is
  about 500 kB on the wire);
* ``{"status": CODE}``: that status, empty body.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(sys.argv[1]).resolve()
PORT = int(sys.argv[2])
LOG = Path(sys.argv[3])
ROUTES = Path(sys.argv[4])
_lock = threading.Lock()
_bombs: dict[int, bytes] = {}


def _gzip_zeros(n: int) -> bytes:
    if n not in _bombs:
        chunk = bytes(1 << 20)
        import io

        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
            for _ in range(n >> 20):
                gz.write(chunk)
        _bombs[n] = buf.getvalue()
    return _bombs[n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _log(self) -> None:
        entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range")}
        with _lock, open(LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stall(self) -> None:
        self.wfile.flush()
        time.sleep(3600)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self._log()
        url = urlparse(self.path)
        routes = json.loads(ROUTES.read_text()) if ROUTES.is_file() else {}
        route = routes.get(url.path, {})
        if "redirect" in route:
            self._send(302, b"", {"Location": route["redirect"]})
            return
        if "status" in route:
            self._send(int(route["status"]))
            return
        if "gzip_bomb" in route:
            body = _gzip_zeros(int(route["gzip_bomb"]))
            self._send(200, body, {"Content-Encoding": "gzip",
                                   "Content-Type": "application/json"})  # fmt: skip
            return
        path = (ROOT / unquote(url.path).lstrip("/")).resolve()
        if ROOT not in path.parents or not path.is_file():
            self._send(404)
            return
        data = path.read_bytes()
        size = len(data)
        if "stall" in route:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data[: int(route["stall"])])
                self._stall()
            return
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        common = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if match:
            start = int(match[1])
            if "stall_after" in route and start >= int(route["stall_after"]):
                self._stall()
                return
            end = min(int(match[2]) if match[2] else size - 1, size - 1)
            if start >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            headers = dict(common, **{"Content-Range": f"bytes {start}-{end}/{size}"})
            self._send(206, data[start : end + 1], headers)
        else:
            self._send(200, data, common)


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", PORT), Handler).serve_forever()
