"""A web server on 127.0.0.1 that does what hostile and broken servers do: test material.

Each path is one behaviour (``PATHS``); the downloader must end every one of them with the right
reason, within its deadline:

- ``/ok.<fmt>``: a genuine 64 x 48 image (jpeg, png, webp, gif, bmp, tiff, jpeg2000, ico, psd, avif);
- ``/bomb/<fmt>``: a few hundred bytes declaring 8000 x 6000 pixels (:mod:`~synthweb.bombs`),
  also ``/bomb/heic`` and ``/bomb/ppm``, formats whose size nothing checks;
- ``/slow-status``, ``/slow-headers``, ``/slow-body``: the status line, the header block or the body
  sent one byte every ``trickle`` seconds, for ever — each byte resets a socket timeout;
- ``/stall``: reads the request and never answers;
- ``/endless``: a 200 with no length whose body never ends; ``/huge-length``: a 10 GB Content-Length;
- ``/noai``: an image with ``X-Robots-Tag: noai``; ``/redirect-noai``: a redirect carrying
  ``X-Robots-Tag: noai`` to ``/ok.jpeg``, which does not repeat it;
- ``/redirect?to=URL``: a redirect to any URL (another port, a private address, ``file:``);
- ``/html``: an HTML page labelled ``image/jpeg``.

``with HostileServer() as s: s.url("/slow-headers")``. Trickling stops when the client hangs up or
the server stops.
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from synthweb import bombs

CTYPES = {"jpeg2000": "image/jp2", "ico": "image/x-icon", "psd": "image/vnd.adobe.photoshop", "heic": "image/heic"}
TEN_GB = 10 * 1024**3
FOREVER = 600.0  # seconds a trickle or a stall lasts at most, so a forgotten server ends by itself
PATHS = (
    "/slow-status",
    "/slow-headers",
    "/slow-body",
    "/stall",
    "/endless",
    "/huge-length",
    "/noai",
    "/redirect-noai",
    "/redirect",
    "/html",
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    """One method per behaviour; the server's class attributes (trickle, stop, images) parameterise it."""

    protocol_version = "HTTP/1.1"
    trickle: float = 0.5
    stop: threading.Event
    samples: dict[str, bytes] = {}
    bombs: dict[str, bytes] = {}

    def log_message(self, fmt, *args):
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "text/html", headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes) -> None:
        """Send ``data`` one byte every ``trickle`` seconds, until done, hung up or stopped."""
        self.close_connection = True
        for i in range(len(data)):
            if self.stop.wait(self.trickle):
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return

    def _head_only(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.close_connection = True

    def _ok_head(self) -> bytes:
        jpeg = self.samples["jpeg"]
        return (
            f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            "X-Padding: " + "x" * 600 + "\r\n\r\n"
        ).encode()

    def slow_status(self, query):
        self._drip(self._ok_head() * 100)

    def slow_headers(self, query):
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        self._drip(self._ok_head().split(b"\r\n", 1)[1] * 100)

    def slow_body(self, query):
        jpeg = self.samples["jpeg"]
        self._head_only(len(jpeg) * 100)
        self._drip(jpeg * 100)

    def stall(self, query):
        self.close_connection = True
        self.stop.wait(FOREVER)

    def endless(self, query):
        self._head_only(None)
        jpeg = self.samples["jpeg"]
        block = jpeg[:-2] + b"\0" * (65536 - len(jpeg))
        try:
            while not self.stop.is_set():
                self.wfile.write(block)
        except OSError:
            pass

    def huge_length(self, query):
        self._head_only(TEN_GB)
        try:
            self.wfile.write(self.samples["jpeg"])
        except OSError:
            pass

    def noai(self, query):
        self._send(200, self.samples["jpeg"], "image/jpeg", {"X-Robots-Tag": "noai"})

    def redirect_noai(self, query):
        self._send(302, b"", headers={"Location": "/ok.jpeg", "X-Robots-Tag": "noai, noimageai"})

    def redirect(self, query):
        to = urllib.parse.parse_qs(query).get("to", ["/ok.jpeg"])[0]
        self._send(302, b"", headers={"Location": to})

    def html(self, query):
        self._send(200, b"<!DOCTYPE html><html><body>not here</body></html>", "image/jpeg")

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        for prefix, images in (("/ok.", self.samples), ("/bomb/", self.bombs)):
            if path.startswith(prefix):
                fmt = path[len(prefix) :]
                if fmt not in images:
                    return self._send(404, b"<html>404</html>")
                return self._send(200, images[fmt], CTYPES.get(fmt, f"image/{fmt}"))
        if path in PATHS:
            return getattr(self, path[1:].replace("-", "_"))(url.query)
        return self._send(404, b"<html>404</html>")


class HostileServer:
    """The behaviours above on ``127.0.0.1:port`` (0: a free port), served from a background thread."""

    def __init__(self, port: int = 0, trickle: float = 0.5, host: str = "127.0.0.1"):
        self.host, self.port, self.trickle = host, port, trickle
        self._stop = threading.Event()
        self._server: _Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> HostileServer:
        handler = type(
            "Handler",
            (_Handler,),
            {
                "trickle": self.trickle,
                "stop": self._stop,
                "samples": {f: bombs.sample(f) for f in bombs.FORMATS},
                "bombs": {f: bombs.bomb(f) for f in [*bombs.FORMATS, *bombs.UNCHECKABLE]},
            },
        )
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="hostile-web", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
