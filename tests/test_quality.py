"""The no-model quality score: junk of every kind ranks below photos; each term does its job."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.annotate import image as img
from curate.annotate.caption import caption_signals
from curate.core import schema
from curate.select.quality import QualityConfig, heuristic, image_terms, quality
from synthweb.junk import KINDS, junk
from tests.photos import encode, photo

COLUMNS = ("width", "height", "aspect", "blank_share", "sharpness", "entropy") + (
    "contrast",
    "effective_side",
    "palette_share",
    "blockiness",
)
NAMES = {"aspect": schema.ASPECT}


def table(images: list[Image.Image], caption: str = "a dog running on a beach at sunset") -> pa.Table:
    """What the annotate stage measures, from its own decoder and signal code, one caption for all."""
    cols = {NAMES.get(c, c): [] for c in COLUMNS}
    for im in images:
        dec, err = img.decode(encode(im) if im.mode == "RGB" else encode(im.convert("RGB")))
        assert err is None
        m = img.measure(dec.pixels)
        for c in COLUMNS:
            cols[NAMES.get(c, c)].append(getattr(m, c))
    out = pa.table({k: pa.array(v, pa.float32()) for k, v in cols.items()})
    for name, arr in caption_signals([caption] * len(images)).items():
        out = out.append_column(name, arr)
    out = out.append_column(schema.LANG, pa.array(["en"] * len(images)))
    return out.append_column(schema.LANG_SCORE, pa.array([0.95] * len(images), pa.float32()))


@pytest.mark.parametrize("size", [(32, 32), (320, 240)])
def test_every_junk_kind_ranks_below_every_photo(size):
    rng = np.random.default_rng(size[0])
    photos = [photo(s, size) for s in range(8)]
    made = {k: [junk(k, rng, size, photo(100 + s, size)) for s in range(6)] for k in KINDS}
    scores = heuristic(table(photos + [im for k in KINDS for im in made[k]]))
    worst_photo = scores[: len(photos)].min()
    at = len(photos)
    for k in KINDS:
        kind = scores[at : at + len(made[k])]
        at += len(made[k])
        assert kind.max() < worst_photo, (k, kind, worst_photo)


def test_noise_no_longer_outranks_photos_by_sharpness_and_entropy():
    rng = np.random.default_rng(0)
    t = table([photo(1, (64, 48)), junk("noise", rng, (64, 48))])
    assert t.column("sharpness")[1].as_py() > t.column("sharpness")[0].as_py()  # noise is "sharper"
    assert t.column("entropy")[1].as_py() > t.column("entropy")[0].as_py()  # and richer in grey levels
    terms = image_terms(t)
    assert terms["noise"][0] == 1.0 and terms["noise"][1] == 0.0


def test_each_term_names_its_junk():
    rng = np.random.default_rng(1)
    size = (128, 96)
    base = photo(5, size)
    t = table(
        [
            base,
            junk("flat", rng, size),
            junk("tiny_upscale", rng, size, base),
            junk("text", rng, size),
            junk("compressed", rng, size, base),
        ]
    )
    terms = image_terms(t)
    assert all(terms[name][0] > 0.9 for name in ("noise", "flat", "palette", "blockiness"))
    assert terms["flat"][1] == 0.0
    assert terms["resolution"][2] < terms["resolution"][0] - 0.3
    assert terms["palette"][3] < 0.7
    assert terms["blockiness"][4] == 0.0


def test_missing_new_columns_leave_their_terms_neutral():
    t = table([photo(2, (64, 48))]).drop_columns(["contrast", "effective_side", "palette_share", "blockiness"])
    terms = image_terms(t)
    assert terms["noise"][0] == 1.0 and terms["flat"][0] == 1.0 and terms["blockiness"][0] == 1.0


def test_a_good_caption_cannot_rescue_junk_pixels():
    rng = np.random.default_rng(2)
    t = table([junk("flat", rng, (64, 64))])
    assert heuristic(t)[0] == 0.0


def test_bootstrap_score_needs_its_column():
    t = table([photo(3, (32, 32))])
    with pytest.raises(ValueError, match="bootstrap"):
        quality(t, QualityConfig(score="bootstrap"))
    scored = t.append_column("bootstrap_score", pa.array([0.25], pa.float32()))
    assert quality(scored, QualityConfig(score="bootstrap"))[1] == "bootstrap"
    with pytest.raises(ValueError, match="unknown quality score"):
        quality(t, QualityConfig(score="magic"))


def test_photo_helper_decodes():
    assert Image.open(io.BytesIO(encode(photo(0, (32, 24))))).size == (32, 24)
