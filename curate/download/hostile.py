"""A web server on 127.0.0.1 that does what hostile and broken servers do: test material.

Each path is one behaviour (``PATHS``); the downloader must end every one of them with the right
reason, within its deadline:

- ``/ok.<fmt>``: a genuine 64 x 48 image (jpeg, png, webp, gif, bmp, tiff, jpeg2000, ico, psd, avif);
- ``/bomb/<fmt>``: a few hundred bytes declaring 8000 x 6000 pixels (:mod:`~curate.download.bombs`),
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

from curate.download import bombs

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


def _handler(trickle: float, stop: threading.Event):
    samples = {f: bombs.sample(f) for f in bombs.FORMATS}
    bomb_bytes = {f: bombs.bomb(f) for f in [*bombs.FORMATS, *bombs.UNCHECKABLE]}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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
            for i in range(len(data)):
                if stop.wait(trickle):
                    return
                try:
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return

        def _image(self, fmt: str, data: bytes, headers: dict | None = None):
            self._send(200, data, CTYPES.get(fmt, f"image/{fmt}"), headers)

        def do_GET(self):  # noqa: C901 - one branch per behaviour reads best as a table
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            jpeg = samples["jpeg"]
            if path.startswith("/ok."):
                fmt = path[4:]
                return self._image(fmt, samples[fmt]) if fmt in samples else self._send(404)
            if path.startswith("/bomb/"):
                fmt = path[6:]
                return self._image(fmt, bomb_bytes[fmt]) if fmt in bomb_bytes else self._send(404)
            ok_head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                "X-Padding: " + "x" * 600 + "\r\n\r\n"
            ).encode()
            if path == "/slow-status":
                self.close_connection = True
                return self._drip(ok_head * 100)
            if path == "/slow-headers":
                self.close_connection = True
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.wfile.flush()
                return self._drip(ok_head.split(b"\r\n", 1)[1] * 100)
            if path == "/slow-body":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg) * 100))
                self.end_headers()
                self.close_connection = True
                return self._drip(jpeg * 100)
            if path == "/stall":
                self.close_connection = True
                stop.wait(FOREVER)
                return None
            if path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.close_connection = True
                block = jpeg[:-2] + b"\0" * (65536 - len(jpeg))
                try:
                    while not stop.is_set():
                        self.wfile.write(block)
                except OSError:
                    pass
                return None
            if path == "/huge-length":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(TEN_GB))
                self.end_headers()
                self.close_connection = True
                try:
                    self.wfile.write(jpeg)
                except OSError:
                    pass
                return None
            if path == "/noai":
                return self._image("jpeg", jpeg, {"X-Robots-Tag": "noai"})
            if path == "/redirect-noai":
                return self._send(302, b"", headers={"Location": "/ok.jpeg", "X-Robots-Tag": "noai, noimageai"})
            if path == "/redirect":
                to = urllib.parse.parse_qs(url.query).get("to", ["/ok.jpeg"])[0]
                return self._send(302, b"", headers={"Location": to})
            if path == "/html":
                return self._send(200, b"<!DOCTYPE html><html><body>not here</body></html>", "image/jpeg")
            return self._send(404, b"<html>404</html>")

    return Handler


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
        self._server = _Server((self.host, self.port), _handler(self.trickle, self._stop))
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
