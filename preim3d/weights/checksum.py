"""SHA-256 of a file, read in chunks so a weights file of any size never sits in memory."""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
