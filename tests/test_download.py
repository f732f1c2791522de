"""`preim3d download`: fetching from a local HTTP server on 127.0.0.1 —
resume, checks, conversion, licences."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import torch
from weights_server import fixture_table

from preim3d import cli
from preim3d.editing import CELEBA_ATTRIBUTES
from preim3d.errors import DownloadError, Preim3DError
from preim3d.pipeline import Editor
from preim3d.weights import sources
from preim3d.weights.download import download_official, fetch
from preim3d.weights.sources import PICKLE_HEADER, ZIP_HEADER, OfficialFile, official_files


def blob(n=300_000, seed=0) -> bytes:
    """n bytes that look like a torch zip archive."""
    import random

    return ZIP_HEADER + random.Random(seed).randbytes(n - len(ZIP_HEADER))


def entry(body: bytes, **changes) -> OfficialFile:
    file = OfficialFile(
        "encoder",
        "model.pt",
        "drive",
        "file-id-123",
        "preim3d",
        (ZIP_HEADER,),
        size=len(body),
        min_size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    return replace(file, **changes)


def test_official_table():
    files = official_files()
    directions = [f for f in files if f.role == "direction"]
    assert sorted(f.filename.split("/")[-1][:-3] for f in directions) == sorted(
        a for a in CELEBA_ATTRIBUTES if a != "Blurry"
    )
    assert all(f.sha256 and f.size for f in directions)
    assert [f.role for f in files[-2:]] == ["encoder", "generator"]  # small files first
    drive = files[-1].url({})
    assert drive.startswith("https://drive.usercontent.google.com/download?")
    assert (
        "id=1tFfynggbcITiKF_iLBcFutBSMCScBPSa" in drive
        and "confirm=t" in drive
        and "export=download" in drive
    )
    assert official_files("ngc")[-1].url({}) == (
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files/ffhq512-128.pkl"
    )
    assert official_files("ngc")[-1].headers == (PICKLE_HEADER,)
    assert (
        directions[0]
        .url({})
        .startswith(f"https://raw.githubusercontent.com/mybabyyh/Preim3D/{sources.PREIM3D_COMMIT}/")
    )
    with pytest.raises(ValueError, match="ngc-rebalanced"):
        official_files("elsewhere")
    notice = sources.licence_notice(files)
    assert "Non-commercial" in notice and "MIT" in notice


def test_base_urls_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PREIM3D_DRIVE_URL", "http://127.0.0.1:9/drive/")
    assert sources.ENCODER.url().startswith("http://127.0.0.1:9/drive?id=")
    assert sources.ENCODER.url({"drive": "http://mirror/dl"}).startswith("http://mirror/dl?id=")


def test_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    body = blob()
    file = entry(body)
    path = server.serve(file, body)
    server.cut[path] = 100_000
    with pytest.raises(DownloadError, match="interrupted.*again to resume"):
        fetch(file, tmp_path, base_urls=server.base_urls, retries=0, progress=False)
    part = tmp_path / "model.pt.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "model.pt").exists()

    done = fetch(file, tmp_path, base_urls=server.base_urls, retries=0, progress=False)
    assert done.read_bytes() == body and not part.exists()
    assert server.requests[-1] == (path, "bytes=100000-")  # only the missing bytes were asked for


def test_a_cut_transfer_is_resumed_within_one_call(server, tmp_path):
    body = blob(seed=1)
    file = entry(body)
    path = server.serve(file, body)
    server.cut[path] = 12_345
    assert fetch(file, tmp_path, base_urls=server.base_urls, progress=False).read_bytes() == body
    assert [r for _, r in server.requests] == [None, "bytes=12345-"]


def test_a_server_ignoring_the_range_restarts_the_file(server, tmp_path):
    body = blob(seed=2)
    file = entry(body)
    path = server.serve(file, body)
    server.ignore_range.add(path)
    (tmp_path / "model.pt.part").write_bytes(b"stale bytes of another attempt")
    assert fetch(file, tmp_path, base_urls=server.base_urls, progress=False).read_bytes() == body


def test_corrupt_files_are_rejected_and_removed(server, tmp_path):
    body = blob(seed=3)
    damaged = body[:-1] + bytes([body[-1] ^ 1])
    file = entry(body)
    server.serve(file, damaged)
    with pytest.raises(DownloadError, match="SHA-256.*rejected"):
        fetch(file, tmp_path, base_urls=server.base_urls, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a part to resume

    unknown = entry(body, size=None, sha256=None, min_size=10, filename="other.pt", remote="other-id")
    server.serve(unknown, b"\x00\x01" + body[2:])
    with pytest.raises(DownloadError, match="starts with bytes"):
        fetch(unknown, tmp_path, base_urls=server.base_urls, progress=False)

    small = entry(
        body, size=None, sha256=None, min_size=10 * len(body), filename="small.pt", remote="small-id"
    )
    server.serve(small, body)
    with pytest.raises(DownloadError, match="at least"):
        fetch(small, tmp_path, base_urls=server.base_urls, progress=False)


def test_wrong_announced_size_and_html_pages_are_refused(server, tmp_path):
    body = blob(seed=4)
    file = entry(body, size=len(body) + 1)
    server.serve(file, body)
    with pytest.raises(DownloadError, match="announces"):
        fetch(file, tmp_path, base_urls=server.base_urls, progress=False)

    quota = entry(body, remote="quota-id", filename="quota.pt")
    server.html.add(server.serve(quota, body))
    with pytest.raises(DownloadError, match="HTML page.*drive.google.com/file/d/quota-id"):
        fetch(quota, tmp_path, base_urls=server.base_urls, progress=False)
    assert not (tmp_path / "quota.pt").exists() and not (tmp_path / "quota.pt.part").exists()

    sniffed = entry(body, remote="sniffed-id", filename="sniffed.pt")
    server.serve(sniffed, b"\n<!DOCTYPE html><html>Sign in</html>".ljust(len(body), b" "))  # sent as a binary
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(sniffed, tmp_path, base_urls=server.base_urls, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_complete_file_is_not_fetched_again(server, tmp_path):
    body = blob(seed=5)
    file = entry(body)
    server.serve(file, body)
    fetch(file, tmp_path, base_urls=server.base_urls, progress=False)
    fetch(file, tmp_path, base_urls=server.base_urls, progress=False)
    assert len(server.requests) == 1


def test_unreachable_server_says_so(tmp_path):
    body = blob(1000)
    with pytest.raises(DownloadError, match="Could not reach"):
        fetch(entry(body), tmp_path, base_urls={"drive": "http://127.0.0.1:9"}, progress=False)


def test_download_official_fetches_and_converts(server, tmp_path, tiny_official_files, tiny_bundle):
    table, bodies = fixture_table(tiny_official_files)
    for file in table:
        server.serve(file, bodies[file.filename])
    generator_path = urlsplit(table[-1].url(server.base_urls))
    server.cut[f"{generator_path.path}?{generator_path.query}"] = 5000  # one interruption on the way
    with pytest.raises(Preim3DError, match="Non-commercial"):
        download_official(files=table, out=tmp_path / "weights", accept_licences=False)
    assert server.requests == []  # nothing is fetched before the licences are accepted

    out = download_official(
        files=table,
        out=tmp_path / "weights",
        downloads=tmp_path / "downloads",
        accept_licences=True,
        base_urls=server.base_urls,
        progress=False,
        log=lambda _: None,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "directions.safetensors",
        "encoder.safetensors",
        "generator.safetensors",
        "latent_avg.safetensors",
    ]
    assert not (tmp_path / ".weights.partial").exists()
    generator_requests = [r for path, r in server.requests if "generator-id" in path]
    assert generator_requests == [None, "bytes=5000-"]  # the cut transfer was resumed
    editor = Editor.from_pretrained(out, device="cpu")
    reference = Editor.from_pretrained(tiny_bundle, device="cpu")
    assert editor.directions.names == reference.directions.names
    assert editor.directions.provenance["downloaded_from"].startswith(server.base)
    torch.testing.assert_close(editor.latent_avg, reference.latent_avg)


def test_cli_download_states_the_licences_and_rejects_a_corrupt_official_file(
    server, tmp_path, monkeypatch, capsys
):
    for host, url in server.base_urls.items():
        monkeypatch.setenv(sources.BASE_URL_ENV[host], url)
    first = official_files()[0]
    server.serve(first, ZIP_HEADER + b"not the official direction".ljust(first.size - len(ZIP_HEADER), b"."))
    args = ["download", "--out", str(tmp_path / "weights"), "--downloads", str(tmp_path / "downloads")]

    assert cli.main(args) == 1  # not a terminal and no --accept-licences: nothing happens
    captured = capsys.readouterr()
    assert "Non-commercial" in captured.out and "--accept-licences" in captured.err
    assert server.requests == []

    assert cli.main([*args, "--accept-licences"]) == 1
    err = capsys.readouterr().err
    assert first.filename in err and "SHA-256" in err and "rejected" in err
    assert not (tmp_path / "weights").exists() and not any((tmp_path / "downloads").rglob("*.pt*"))
