"""An image that cannot be read says why in a few words: a missing file and a decompression
bomb used to read the same, "not an image file PIL can open" (issue 27, item 8)."""

from __future__ import annotations

import struct
import zlib

from mvdeploy.data import read_image, sample_image_paths, unreadable_reason


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (PIL checks the size before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_each_unreadable_image_says_why(tmp_path):
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(_png_header_claiming(20000, 20000))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(sample_image_paths()[0].read_bytes()[:2000])
    cases = {tmp_path / "gone.jpg": "no such file",
             tmp_path: "a folder, not an image file",
             bomb: "too large (over PIL's decompression-bomb limit of 89,478,485 pixels)",
             text: "not an image file PIL can open",
             truncated: "cannot be read"}
    for path, reason in cases.items():
        assert read_image(path, 64, 64) is None, path
        assert unreadable_reason(path).startswith(reason), (path, unreadable_reason(path))
