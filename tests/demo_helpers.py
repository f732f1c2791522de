"""For the demo tests (gradio_client and browser):
the demo served in-process on 127.0.0.1, bad input files."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: never phone home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def loopback_only():
    """Within it, a connection to any address but this machine's loopback fails the test."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
                raise AssertionError(f"the demo tests must not connect to {address}")

    socket.socket.connect = lambda sock, address: check(sock, address) or connect(sock, address)
    socket.socket.connect_ex = lambda sock, address: check(sock, address) or connect_ex(sock, address)
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


@contextmanager
def serving(editor_or_source, build_kwargs=None, **launch_kwargs):
    """Yields (url, demo) of the demo launched on a free local port; closes it afterwards."""
    from demo import build_demo, launch

    demo = build_demo(editor_or_source, **(build_kwargs or {}))
    _, url, _ = launch(
        demo,
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        **launch_kwargs,
    )
    try:
        yield url, demo
    finally:
        demo.close()


def client_for(url):
    """A gradio_client Client without its telemetry
    (on by default, whatever GRADIO_ANALYTICS_ENABLED says)."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: a huge image in a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_files(folder: Path) -> dict[str, Path]:
    """Inputs the demo must refuse with a message: name -> file."""
    files = {
        "text": folder / "notes.txt",
        "text named .png": folder / "fake.png",
        "no face": folder / "wall.png",
        "over 100 MP": folder / "huge.png",
        "decompression bomb": folder / "bomb.png",
    }
    files["text"].write_text("not an image")
    files["text named .png"].write_text("not an image either")
    Image.new("RGB", (400, 300), (200, 180, 150)).save(files["no face"])
    files["over 100 MP"].write_bytes(png_header(10_500, 10_000))
    files["decompression bomb"].write_bytes(png_header(20_000, 20_000))
    return files


BAD_INPUT_MESSAGES = {
    "text": "is not an image format PIL can read",
    "text named .png": "is not an image format PIL can read",
    "no face": "No face was found in this photo",
    "over 100 MP": "10500x10000 = 105,000,000 pixels, more than the limit",
    "decompression bomb": "is too large to decode safely",
}


def start_app(
    folder: Path, tmp_path: Path, python=sys.executable, **env_vars
) -> tuple[subprocess.Popen, dict]:
    """`python app.py` in `folder` as a user starts it, with no weights but those given in env_vars;
    returns the process and the page's config once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREIM3D_WEIGHTS"}
    env.update(
        PREIM3D_HOME=str(tmp_path / "home"),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        **env_vars,
    )
    process = subprocess.Popen(
        [str(python), "app.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                config = json.loads(response.read())
                config["url"] = f"http://127.0.0.1:{port}/"
                return process, config
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"app.py did not start:\n{process.communicate()[0]}") from None
            time.sleep(0.5)


def stop(process: subprocess.Popen) -> str:
    """Stop an app started by `start_app`; returns what it printed."""
    process.terminate()
    return process.communicate(timeout=30)[0]


@contextmanager
def weights_to_download(server, official_folder, home: Path):
    """The tiny official files served where the Download button fetches them (PREIM3D_*_URL pointing at
    `server`), `home` as PREIM3D_HOME, and no PREIM3D_WEIGHTS. Yields the table of files to fetch."""
    from weights_server import fixture_table

    from preim3d.weights import sources

    table, bodies = fixture_table(official_folder)
    for file in table:
        server.serve(file, bodies[file.filename])
    saved = {
        key: os.environ.get(key)
        for key in [*sources.BASE_URL_ENV.values(), "PREIM3D_HOME", "PREIM3D_WEIGHTS"]
    }
    os.environ.update({sources.BASE_URL_ENV[host]: url for host, url in server.base_urls.items()})
    os.environ["PREIM3D_HOME"] = str(home)
    os.environ.pop("PREIM3D_WEIGHTS", None)
    try:
        yield table
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
