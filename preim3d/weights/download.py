"""Fetching the official files (see `preim3d.weights.sources`) and converting them into a bundle.

`fetch(file, folder)` downloads one file with plain urllib:

* into `<name>.part`, resumed with an HTTP Range request when a previous attempt was cut off
  (a server that ignores the range sends the whole file again, which restarts the part);
* with a tqdm progress bar;
* checked before it takes its final name: the length the server announced, the exact size and
  SHA-256 where they are known, a lower bound otherwise, and the first bytes (an HTML page, such
  as Google Drive's quota or sign-in page, is refused as soon as it arrives). A file that fails a
  check is deleted, not resumed: its bytes are wrong, not missing.

`download_official` fetches every file (after the licences were accepted) and converts them
(`preim3d.weights.convert.convert_official`) into the default bundle folder.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .. import __version__
from ..errors import DownloadError, Preim3DError
from .checksum import file_sha256
from .resolve import default_downloads_dir, default_weights_dir
from .sources import DIRECTIONS_FOLDER, LICENCES, OfficialFile, licence_notice, official_files

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a connection counts as broken
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head")


def fetch(
    file: OfficialFile,
    folder,
    *,
    base_urls: dict | None = None,
    retries: int = 2,
    progress: bool = True,
    timeout: float = TIMEOUT,
) -> Path:
    """Download `file` into `folder / file.filename` (resuming a `.part` left by an earlier attempt).

    A file already there that passes the checks is kept without a request. A transfer cut off
    part-way is resumed up to `retries` times in this call; after that the `.part` stays for the
    next call. Raises DownloadError saying what went wrong and what to do.
    """
    dest = Path(folder) / file.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            _verify(file, dest)
            return dest
        except DownloadError:
            dest.unlink()  # a damaged earlier download: fetch it again
    part = dest.with_name(dest.name + ".part")
    url = file.url(base_urls)
    for attempt in range(retries + 1):
        try:
            _transfer(file, url, part, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(
                    f"The download of {file.filename} from {url} was interrupted ({exc}); "
                    f"{part.stat().st_size if part.exists() else 0} bytes are kept in {part}. Run the "
                    "command again to resume."
                ) from exc
    try:
        _verify(file, part)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    """The connection broke or closed before the whole file arrived."""


def _transfer(file: OfficialFile, url: str, part: Path, progress: bool, timeout: float) -> None:
    """One request: append to `part` from its current size (or restart it) until the server is done."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"preim3d/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and file.size is not None and offset == file.size:
            return  # the part is already whole
        if exc.code == 416:
            part.unlink()  # our part is longer than the file: start again
            raise _Interrupted("the server refused to resume; starting again") from exc
        raise DownloadError(_http_failure(file, url, exc.code, exc.reason)) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"Could not reach {url} to download {file.filename} ({reason}). Check the internet connection, "
            f"or fetch the file by hand from {file.page} and convert it with `preim3d convert`."
        ) from exc
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Interrupted(f"the server resumed at byte {start} instead of {offset}")
        else:
            offset = 0  # the server sends the whole file
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if "text/html" in response.headers.get("Content-Type", ""):
            raise DownloadError(_html_failure(file, url))
        if file.size is not None and total is not None and total != file.size:
            raise DownloadError(
                f"{url} announces {total} bytes for {file.filename}, but the official file has {file.size}: "
                f"it is not the expected file."
            )
        _stream(response, part, offset, total, file, progress, url)


def _stream(
    response, part: Path, offset: int, total: int | None, file: OfficialFile, progress: bool, url
) -> None:
    """Append the response body to `part` (or start it when offset is 0), with a progress bar."""
    from tqdm.auto import tqdm

    block = _read(response)
    if offset == 0 and block.lstrip()[:16].lower().startswith(_HTML_STARTS):
        raise DownloadError(_html_failure(file, url))  # a page sent as a file: nothing is written
    received = offset
    with (
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=file.filename,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
        open(part, "ab" if offset else "wb") as out,
    ):
        while block:
            out.write(block)
            received += len(block)
            bar.update(len(block))
            block = _read(response)
    if total is not None and received < total:
        raise _Interrupted(f"the connection closed after {received} of {total} bytes")


def _read(response) -> bytes:
    try:
        return response.read(CHUNK)
    except (TimeoutError, http.client.IncompleteRead, ConnectionError) as exc:
        raise _Interrupted(type(exc).__name__) from exc


def _verify(file: OfficialFile, path: Path) -> None:
    """Size, checksum and first bytes of a complete download; DownloadError when any is wrong."""
    size = path.stat().st_size
    if file.size is not None and size != file.size:
        raise DownloadError(
            f"{file.filename} has {size} bytes, the official file {file.size}: it is damaged."
        )
    if size < file.min_size:
        raise DownloadError(
            f"{file.filename} has only {size} bytes; the official file has at least {file.min_size}. The "
            f"server sent something else; fetch it by hand from {file.page} if this persists."
        )
    with open(path, "rb") as f:
        head = f.read(16)
    if not head.startswith(file.headers):
        kind = "an HTML page" if head.lstrip().lower().startswith(_HTML_STARTS) else f"bytes {head[:8]!r}"
        raise DownloadError(
            f"{file.filename} starts with {kind}, not like the official file: it was rejected."
        )
    if file.sha256 is not None:
        digest = file_sha256(path)
        if digest != file.sha256:
            raise DownloadError(
                f"{file.filename} has SHA-256 {digest}, the official file {file.sha256}: it is damaged or "
                "altered and was rejected."
            )


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total or None) of a 'bytes a-b/total' Content-Range header."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        return int(span.split("-", 1)[0]), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError) as exc:
        raise _Interrupted(f"the server answered a resumed request with Content-Range {value!r}") from exc


def _html_failure(file: OfficialFile, url: str) -> str:
    hint = (
        " Google Drive answers with a page instead of the file when a file's daily download quota is used "
        "up or it needs signing in; try again later, or download it in a browser"
        if file.host == "drive"
        else " Download it in a browser"
    )
    return (
        f"{url} sent an HTML page instead of {file.filename}.{hint} from {file.page} and convert it with "
        f"`preim3d convert`."
    )


def _http_failure(file: OfficialFile, url: str, code: int, reason) -> str:
    return (
        f"Downloading {file.filename} failed: {url} answered HTTP {code} {reason}. Try again later, or fetch "
        f"it by hand from {file.page} and convert it with `preim3d convert`."
    )


def download_official(
    *,
    generator: str = "preim3d",
    out=None,
    downloads=None,
    accept_licences: bool = False,
    base_urls: dict | None = None,
    files: list[OfficialFile] | None = None,
    device=None,
    keep_downloads: bool = True,
    progress: bool = True,
    log=print,
) -> Path:
    """Fetch the official files and convert them into a bundle; returns the bundle folder.

    generator: "preim3d" (PREIM3D's copy of EG3D, default), "ngc" or "ngc-rebalanced" (NVIDIA NGC).
    out: the bundle folder (default `default_weights_dir()`); it is replaced only once the new
    bundle is complete. downloads: where the official files go (default `default_downloads_dir()`).
    accept_licences must be True: the EG3D weights are for non-commercial use only (see
    `sources.licence_notice`). `files` replaces the official table (mirrors, tests).
    """
    files = list(files) if files is not None else official_files(generator)
    if not accept_licences:
        raise Preim3DError(
            "The official weights come under these licences; accept them to download:\n"
            + licence_notice(files)
        )
    out = Path(out) if out is not None else default_weights_dir()
    downloads = Path(downloads) if downloads is not None else default_downloads_dir()
    paths = {}
    for index, file in enumerate(files, 1):
        paths[file.role] = fetch(file, downloads, base_urls=base_urls, progress=progress)
        log(f"[{index}/{len(files)}] {file.filename}: ok")
    log(f"converting into {out} ...")
    from .convert import convert_official

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    urls = {f.role: f.url(base_urls) for f in files}
    provenance = {"generator": {"downloaded_from": urls["generator"]}} if "generator" in urls else {}
    directions = None
    if "direction" in paths:
        directions = downloads / DIRECTIONS_FOLDER
        # the direction component has no licence field of its own: keep the terms in its provenance
        licence = LICENCES[next(f.licence for f in files if f.role == "direction")]
        provenance["directions"] = {
            "downloaded_from": urls["direction"].rsplit("/", 1)[0] + "/",
            "licence": licence,
        }
    convert_official(
        staging,
        generator=paths.get("generator"),
        encoder=paths.get("encoder"),
        directions=directions,
        device=device,
        provenance=provenance,
    )
    _replace_folder(staging, out)
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
    return out


def _replace_folder(new: Path, old: Path) -> None:
    """Put the folder `new` in place of `old`, which stays intact until the swap."""
    if old.exists():
        trash = old.with_name(f".{old.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(old, trash)
        os.replace(new, old)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, old)
