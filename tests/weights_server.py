"""A local HTTP server standing in for the official weight sources (NGC, Google Drive, GitHub), and the
table of tiny official-format files it serves: for the download tests of the command line and the demo."""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import replace
from urllib.parse import urlsplit

from preim3d.weights import sources
from preim3d.weights.sources import ZIP_HEADER, OfficialFile


class FileServer:
    """Serves bytes by path (query included) with HTTP Range support, and misbehaves on request.

    cut[path] = n: the next response for path stops after n body bytes and closes the connection.
    ignore_range: paths whose Range header is ignored (the whole file comes with 200).
    html: paths that answer with an HTML page, as Google Drive does over quota.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.html: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if self.path in owner.html:
                    page = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>"
                    self._head(200, len(page), "text/html; charset=utf-8")
                    self.wfile.write(page)
                    return
                start, requested = 0, self.headers.get("Range")
                if requested and self.path not in owner.ignore_range:
                    start = int(requested.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self._head(416, 0, extra={"Content-Range": f"bytes */{len(body)}"})
                        return
                    self._head(
                        206,
                        len(body) - start,
                        extra={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"},
                    )
                else:
                    self._head(200, len(body))
                payload = body[start:]
                cut = owner.cut.pop(self.path, None)
                self.wfile.write(payload if cut is None else payload[:cut])  # then the connection closes

            def _head(self, code, length, kind="application/octet-stream", extra=None):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(length))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base_urls = {host: f"{self.base}/{host}" for host in ("ngc", "drive", "github")}
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def serve(self, file: OfficialFile, body: bytes) -> str:
        """Serve `body` where `file` is fetched from; returns that request path."""
        parts = urlsplit(file.url(self.base_urls))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.files[path] = body
        return path


def fixture_table(official_folder) -> tuple[list[OfficialFile], dict[str, bytes]]:
    """Entries like the official table's, for the tiny files in the official layout, and their bytes."""
    table, bodies = [], {}
    for path in sorted((official_folder / "directions").glob("*.pt")):
        bodies[f"directions/{path.name}"] = path.read_bytes()
        table.append(
            OfficialFile(
                "direction",
                f"directions/{path.name}",
                "github",
                f"{sources.DIRECTIONS_PATH}/{path.name}",
                "mit",
                (ZIP_HEADER,),
            )
        )
    for role, name, host, remote in (
        ("encoder", "preim3d_ffhq.pt", "drive", "encoder-id"),
        ("generator", "eg3d_G_ema.pkl", "drive", "generator-id"),
    ):
        bodies[name] = (official_folder / name).read_bytes()
        table.append(OfficialFile(role, name, host, remote, "eg3d", (ZIP_HEADER,)))
    return [
        replace(f, size=len(bodies[f.filename]), sha256=hashlib.sha256(bodies[f.filename]).hexdigest())
        for f in table
    ], bodies
