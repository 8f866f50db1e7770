"""Generated stand-ins for photos, for tests that must run without ../shared/data."""

import io

import numpy as np
from PIL import Image, ImageDraw


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A generated 'photo': a smooth random colour field with a few strokes and blobs on it, drawn at
    four times the size and shrunk, as small web photos are."""
    rng = np.random.default_rng(seed)
    w, h = size[0] * 4, size[1] * 4
    field = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(6):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(12, 56)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        else:
            draw.line([(x0, y0), (rng.uniform(0, w), rng.uniform(0, h))], fill=colour, width=int(r / 3) + 1)
    # Photos have texture at every scale (power falling with frequency); flat blobs have none between
    # their edges, and a verifier tuned on photos need not find their crops.
    grain = np.zeros((h, w))
    for octave in range(2, 8):
        cells = rng.normal(0, 16, (3 * 2**octave // 4, 2**octave))
        grain += np.asarray(Image.fromarray(cells.astype(np.float32)).resize((w, h), Image.BICUBIC))
    field = Image.fromarray(np.clip(np.asarray(field, np.float64) + grain[..., None], 0, 255).astype(np.uint8))
    return field.resize(size, Image.BOX)


def encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()
