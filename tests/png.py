"""Read the pixels of a PNG file (8-bit RGB or RGBA, not interlaced), as Chromium writes them.

Enough to tell a screenshot from a blank page without an imaging library.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type: RGB, RGBA


def pixels(path: Path) -> tuple[int, int, Counter[tuple[int, ...]]]:
    """Return the width, the height and how many pixels have each colour (RGB)."""
    data = path.read_bytes()
    assert data.startswith(SIGNATURE), f"{path} is not a PNG file"
    offset = len(SIGNATURE)
    header = b""
    compressed = bytearray()
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in CHANNELS and not interlace, (depth, colour)
    channels = CHANNELS[colour]
    raw = zlib.decompress(bytes(compressed))
    stride = width * channels
    previous = bytearray(stride)
    colours: Counter[tuple[int, ...]] = Counter()
    for row in range(height):
        start = row * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        for x in range(0, stride, channels):
            colours[(line[x], line[x + 1], line[x + 2])] += 1
        previous = line
    return width, height, colours


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:
        for i in range(len(line)):
            line[i] = (line[i] + previous[i]) & 0xFF
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + previous[i]) // 2) & 0xFF
        elif kind == 4:
            up = previous[i]
            up_left = previous[i - bpp] if i >= bpp else 0
            estimate = left + up - up_left
            pa, pb, pc = (
                abs(estimate - left),
                abs(estimate - up),
                abs(estimate - up_left),
            )
            if pa <= pb and pa <= pc:
                predictor = left
            elif pb <= pc:
                predictor = up
            else:
                predictor = up_left
            line[i] = (line[i] + predictor) & 0xFF
        else:
            raise AssertionError(f"unknown PNG filter {kind}")
