"""The example upload app (examples/targets/upload_app.py) in a configuration made to hang on a decompression bomb.

Pillow's bomb guard is switched off (``MAX_IMAGE_PIXELS = None``) and an image whose header declares more than
50 million pixels blocks the request handler for an hour: a stand-in for a decoder busy for minutes on a bomb,
without spending the test machine's memory on really decoding one. The handler is async, so the block stalls
the whole service, health route included, as a real decode in the event loop would.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

import examples.targets.upload_app as upload_app

Image.MAX_IMAGE_PIXELS = None
_preprocess = upload_app.preprocess


def stalling(data: bytes, size: int, quality: int | None, channels: int) -> object:
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    if w * h > 50_000_000:
        time.sleep(3600)
    return _preprocess(data, size, quality, channels)


upload_app.preprocess = stalling  # type: ignore[assignment]

if __name__ == "__main__":
    upload_app.main(sys.argv[1:])
