"""Serve a built synthetic web over HTTP on 127.0.0.1, faults included.

Every route in ``routes.parquet`` has a behaviour: ``ok`` (the image), ``noai`` (the image with
``X-Robots-Tag: noai``), ``http_404``, ``http_500``, ``slow`` (headers and a few bytes, then a
stall far past any sane timeout), ``truncated`` (half a JPEG, honestly sized), ``html_as_image``
(an HTML page labelled image/jpeg), ``empty_body`` (200 with zero bytes), ``redirect_loop``
(A -> B -> A) and ``bomb`` (a tiny PNG declaring 100000 x 100000 pixels). The ``private_address``
kind never reaches the server: its URL names a private IPv6 host.

Use it as a context manager: ``with WebServer(out) as web: ... web.base_url, web.urls_path``.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq

from synthweb.build import DEFAULT_BASE, rebase_urls

SLOW_SECONDS = 600.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 refuses connections under a downloader's burst of parallel requests.
    request_queue_size = 1024
    allow_reuse_address = True


def _handler(routes: dict[str, dict], blobs: mmap.mmap | bytes, stop: threading.Event, slow_seconds: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "synthweb/1"

        def log_message(self, fmt, *args):  # quiet: thousands of requests per second
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "text/html", headers: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                return self._send(404, b"<html><body>no such page</body></html>")
            b = route["behaviour"]
            body = bytes(blobs[route["offset"] : route["offset"] + route["length"]])
            ctype = route["content_type"]
            if b == "ok":
                return self._send(200, body, ctype)
            if b == "noai":
                return self._send(200, body, ctype, {"X-Robots-Tag": "noai, noimageai"})
            if b == "http_404":
                return self._send(404, b"<html><body>404 Not Found</body></html>")
            if b == "http_500":
                return self._send(500, b"<html><body>500 Internal Server Error</body></html>")
            if b == "redirect_loop":
                return self._send(302, b"", headers={"Location": route["location"]})
            if b in ("truncated", "html_as_image", "empty_body", "bomb"):
                return self._send(200, body, ctype)
            if b == "slow":
                return self._slow(body, ctype)
            return self._send(500, b"unknown behaviour")

        def _slow(self, body: bytes, ctype: str):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:16])
            self.wfile.flush()
            deadline = time.monotonic() + slow_seconds
            while time.monotonic() < deadline and not stop.is_set():
                stop.wait(0.25)
            try:
                self.wfile.write(body[16:])
            except OSError:
                pass  # the client gave up long ago, as it should

    return Handler


class WebServer:
    """A synthetic web served on ``host:port`` (port 0: a free one) in a background thread."""

    def __init__(self, root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1", slow_seconds=SLOW_SECONDS):
        self.root = Path(root)
        if not (self.root / "routes.parquet").exists():
            raise FileNotFoundError(
                f"{self.root}: not a synthetic web (no routes.parquet); run `tiers web build` first"
            )
        self.host, self.port, self.slow_seconds = host, port, slow_seconds
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._file = None
        self._blobs: mmap.mmap | bytes = b""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> WebServer:
        routes = {r["path"]: r for r in pq.read_table(self.root / "routes.parquet").to_pylist()}
        self._file = open(self.root / "blobs.bin", "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._blobs = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._server = _Server((self.host, self.port), _handler(routes, self._blobs, self._stop, self.slow_seconds))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="synthweb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if isinstance(self._blobs, mmap.mmap):
            self._blobs.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def urls_path(self) -> Path:
        """The URL list pointing at this running server (written on first use)."""
        return write_url_list(self.root, self.base_url)


def built_base(root: str | os.PathLike) -> str:
    meta = Path(root) / "web.json"
    return json.loads(meta.read_text()).get("base_url", DEFAULT_BASE) if meta.exists() else DEFAULT_BASE


def write_url_list(root: str | os.PathLike, base_url: str, dest: str | os.PathLike | None = None) -> Path:
    """Write ``urls.parquet`` rebased onto ``base_url``; default ``<root>/urls-<port>.parquet``."""
    root = Path(root)
    if dest is None:
        port = base_url.rstrip("/").rsplit(":", 1)[-1]
        dest = root / f"urls-{port}.parquet"
    dest = Path(dest)
    table = pq.read_table(root / "urls.parquet")
    old = built_base(root)
    if old.rstrip("/") != base_url.rstrip("/"):
        table = rebase_urls(table, old, base_url)
    tmp = dest.with_name(dest.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(dest)
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
