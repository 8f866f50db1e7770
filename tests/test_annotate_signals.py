"""Annotate's per-sample signals: decoding hostile bytes, image, caption and language signals, the tar reader."""

import io
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from curate.annotate import artefacts
from curate.annotate import image as img
from curate.annotate.caption import caption_signals
from curate.annotate.language import LanguageID
from curate.core import schema
from curate.core.errors import InputError
from synthweb.bodies import HTML_BODY, bomb_png


def encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def scene(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        a[y : y + 20, x : x + 20] = rng.integers(0, 256, 3)
    return a


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# --- decoding and image signals ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (None, "empty"),
        (HTML_BODY, "not_an_image"),
        (b"\x00" * 300, "not_an_image"),
        (bomb_png(), "too_many_pixels"),
    ],
)
def test_hostile_bytes_get_a_reason_not_an_exception(data, reason):
    dec, err = img.decode(data)
    assert dec is None and err == reason


def test_truncated_and_oversize_images_are_refused():
    jpeg = encode(scene(0), "JPEG", quality=90)
    assert img.decode(jpeg[: len(jpeg) // 2])[1] == "truncated"
    png = encode(scene(0), "PNG")
    assert img.decode(png[: len(png) // 2])[1] in ("truncated", "decode_failed")
    assert img.decode(jpeg, max_pixels=96 * 128 - 1)[1] == "too_many_pixels"
    assert img.decode(jpeg, max_pixels=96 * 128)[1] is None


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "I;16", "CMYK", "1"])
def test_every_pixel_mode_decodes_to_rgb(mode):
    im = Image.fromarray(scene(1)).convert(mode)
    fmt = "TIFF" if mode in ("I;16", "CMYK") else "PNG"
    dec, err = img.decode(encode(np.asarray(im), fmt) if mode == "RGB" else _save(im, fmt))
    assert err is None and dec.pixels.shape == (96, 128, 3) and dec.pixels.dtype == np.uint8


def _save(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_animated_gif_keeps_its_first_frame():
    frames = [Image.fromarray(scene(s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    dec, err = img.decode(buf.getvalue())
    assert err is None and dec.format == "gif" and dec.pixels.shape == (96, 128, 3)


@pytest.mark.parametrize(
    "fmt, mode, kw",
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("JPEG", "L", {}),
        ("PNG", "RGB", {}),
        ("PNG", "P", {}),
        ("WEBP", "RGB", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {}),  # the extended (VP8X) header
        ("GIF", "P", {}),
    ],
)
def test_sniff_reads_the_declared_size_without_decoding(fmt, mode, kw):
    from curate.core.imagecheck import sniff

    for w, h in [(1, 1), (123, 45), (17, 300)]:
        im = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        data = buf.getvalue()
        assert sniff(data) == (fmt.lower(), w, h)
        assert sniff(data[:9])[1:] == (None, None)  # a header cut short: unknown, never a guess
    assert sniff(b"GIF89a") == ("gif", None, None) and sniff(HTML_BODY) == (None, None, None)


def test_the_fast_decoder_and_pil_agree_on_lossless_pixels():
    a = scene(6)
    fast = img.decode(encode(a, "PNG"))[0]
    slow = img._decode_pil(encode(a, "PNG"), img.DEFAULT_MAX_PIXELS)[0]
    assert np.array_equal(fast.pixels, a) and np.array_equal(slow.pixels, a)
    assert np.array_equal(np.asarray(fast.image), a)


def test_signals_mean_what_they_say():
    flat = np.full((64, 80, 3), 200, np.uint8)
    s = img.measure(flat)
    assert (s.width, s.height) == (80, 64) and s.aspect == pytest.approx(1.25)
    assert s.blank_share == 1.0 and s.entropy == 0.0 and s.sharpness == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    n = img.measure(noise)
    assert n.blank_share < 0.05 and n.entropy > 7.5 and n.sharpness > 1000
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, 32:] = 255
    assert img.measure(half).blank_share == pytest.approx(0.5, abs=0.02)
    one = img.measure(np.zeros((1, 1, 3), np.uint8))  # degenerate but legal
    assert one.width == 1 and one.aspect == 1.0


@pytest.mark.parametrize("palette", [1, 3, 8, 9, 200, 4096])
def test_palette_share_is_the_share_of_the_eight_fullest_colour_bins(palette):
    # Images of `palette` colours (bins), some equally full, with and without 8 bins filled: the
    # value is the definition's, counted the plain way.
    rng = np.random.default_rng(palette)
    colours = rng.integers(0, 256, (palette, 3), dtype=np.uint8)
    pixels = colours[rng.integers(0, palette, 64 * 48)].reshape(48, 64, 3)
    bins = Counter(tuple(int(c) // 16 for c in px) for px in pixels.reshape(-1, 3))
    want = sum(sorted(bins.values())[-8:]) / pixels.shape[0] / pixels.shape[1]
    assert artefacts.palette_share(pixels) == pytest.approx(want, abs=1e-6)
    assert img.measure(pixels).palette_share == pytest.approx(want, abs=1e-6)


def test_phash_survives_reencoding_and_resizing_but_tells_images_apart():
    a = scene(2, 192, 256)
    ha = img.measure(a).phash
    jpeg = img.decode(encode(a, "JPEG", quality=60))[0].pixels
    small = np.asarray(Image.fromarray(a).resize((180, 135), Image.BILINEAR))
    assert hamming(ha, img.measure(jpeg).phash) <= 6
    assert hamming(ha, img.measure(small).phash) <= 6
    assert min(hamming(ha, img.measure(scene(s, 192, 256)).phash) for s in range(3, 10)) > 10
    assert 0 <= ha < 2**64


def test_pixel_hash_matches_across_lossless_encodings_only():
    a = scene(3)
    png = img.decode(encode(a, "PNG"))[0]
    webp = img.decode(encode(a, "WEBP", lossless=True))[0]
    jpeg = img.decode(encode(a, "JPEG", quality=95))[0]
    assert (png.format, webp.format, jpeg.format) == ("png", "webp", "jpeg")
    assert img.pixel_hash(png.pixels) == img.pixel_hash(webp.pixels) != img.pixel_hash(jpeg.pixels)
    # Same bytes, different shape: a pixel hash must not confuse a 2x8 with an 8x2 image.
    flat = np.zeros((2, 8, 3), np.uint8)
    assert img.pixel_hash(flat) != img.pixel_hash(flat.reshape(8, 2, 3))


# --- captions and language ----------------------------------------------------------------------


def test_caption_signals():
    caps = [
        "a red circle on a grey background",
        "sale sale sale sale",
        "IMG_0423.JPG",
        "see https://example.com/pic for more",
        "<b>bold</b> &amp; loud",
        "Click to enlarge",
        "stock image of a blue star",
        "红色的圆形",
        None,
    ]
    s = {k: v.to_pylist() for k, v in caption_signals(caps).items()}
    assert s[schema.CAPTION_WORDS][:3] == [7, 4, 1] and s[schema.CAPTION_CHARS][0] == 33
    assert s[schema.REPEAT_SHARE][1] == pytest.approx(0.75) and s[schema.REPEAT_SHARE][0] == pytest.approx(1 / 7)
    assert s[schema.ALPHA_SHARE][0] == 1.0 and s[schema.ALPHA_SHARE][7] == 1.0
    assert s[schema.HAS_URL] == [False, False, False, True, False, False, False, False, False]
    assert s[schema.HAS_HTML] == [False, False, False, False, True, False, False, False, False]
    assert s[schema.BOILERPLATE] == [False, False, True, False, False, True, False, False, False]
    assert s[schema.CAPTION_WORDS][8] == 0 and s[schema.ALPHA_SHARE][8] == 0.0


def test_language_id_is_fasttexts_own_top_label():
    lid = LanguageID()
    caps = ["a photo of a red circle on a white background", "Ein roter Kreis auf hellem Hintergrund", "", None]
    out = {k: v.to_pylist() for k, v in lid(caps + ["line one\nline two in english"]).items()}
    assert out[schema.LANG][:4] == ["en", "de", None, None]
    assert out[schema.LANG_SCORE][2] == 0.0 and out[schema.LANG_SCORES][3] == []
    labels, probs = lid.model.predict(caps[1])
    assert out[schema.LANG_SCORE][1] == pytest.approx(min(1.0, float(probs[0])), abs=1e-6)
    assert labels[0] == "__label__de" and out[schema.LANG][4] == "en"
    top = out[schema.LANG_SCORES][0]
    assert len(top) == 5 and top[0][0] == "en" and sum(p for _, p in top) <= 1.0 + 1e-5


def test_a_missing_lid_model_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="language-ID"):
        LanguageID(str(tmp_path / "nope.ftz"))


# --- the tar reader -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_agrees_with_tarfile(tmp_path, fmt):
    from curate.core.tarstream import scan

    path = tmp_path / "t.tar"
    rng = np.random.default_rng(0)
    names = ["000000001.jpg", "000000001.txt", "d/" + "x" * 120 + ".jpg", "büro.png", "big.webp"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2], names[3] = "d/" + "x" * 90 + ".jpg", "buero.png"  # ustar: <= 100 + prefix, ASCII
    payloads = [rng.bytes(n) for n in (0, 511, 512, 513, 70_000)]
    with tarfile.open(path, "w", format=fmt) as tf:
        d = tarfile.TarInfo("d")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in zip(names, payloads, strict=True):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    data = path.read_bytes()
    members = scan(data, str(path))
    got = {name: data[offset : offset + size] for name, offset, size in members}
    assert [n for n, _, _ in members if n.endswith(".jpg")] == [names[0], names[2]]
    assert got == dict(zip(names, payloads, strict=True))


def test_tar_reader_refuses_corrupt_and_cut_off_archives(tmp_path):
    from curate.core.tarstream import scan

    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 5000
        tf.addfile(info, io.BytesIO(b"x" * 5000))
    data = path.read_bytes()
    assert [name for name, _, _ in scan(data)] == ["a.jpg"]
    cut_at_member_end = data[: 512 + 5120]  # whole members, but no end-of-archive block
    for bad in (data[:1500], data[:300], b"", cut_at_member_end, b"\x01" * 2048, data[:100] + b"9" + data[101:]):
        with pytest.raises(tarfile.TarError):
            scan(bad)


def test_tar_reader_takes_old_signed_checksums_and_unterminated_sizes():
    from curate.core.tarstream import scan

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("büro.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(buf.getvalue())
    h = data[:512]
    h[124:136] = b"%012o" % 3  # twelve digits, no terminator
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    assert signed != sum(h)  # the name's UTF-8 bytes are > 127
    h[148:156] = b"%06o\0 " % signed
    data[:512] = h
    assert scan(bytes(data)) == [("büro.png", 512, 3)]

    h[124:136] = b"-0000001000\0"  # a hostile negative size, with a valid checksum: refused, no endless loop
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    data[:512] = h
    with pytest.raises(tarfile.TarError, match="corrupt tar header at byte 0"):
        scan(bytes(data))
