"""The annotate stage: image, caption and language signals, hostile images, units, CLIP, and Ray end to end."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.annotate import AnnotateConfig, annotate, load_embeddings, read_annotations
from curate.annotate import image as img
from curate.annotate.caption import caption_signals
from curate.annotate.clip import parse_spec, save_random_model
from curate.annotate.language import LanguageID
from curate.annotate.run import ShardAnnotator, _is_current
from curate.core import schema, units
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
    from curate.core.tarstream import MappedTar

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
    with MappedTar(path) as tar:
        got = {name: tar.read(offset, size) for name, offset, size in tar.members}
        assert [n for n, _, _ in tar.members if n.endswith(".jpg")] == [names[0], names[2]]
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


# --- a hand-made raw shard: units, hostile members, CLIP -------------------------------------


def write_raw_shard(raw, shard="00000"):
    """A raw shard as img2dataset writes it, with every kind of bad member; returns the success uids."""
    raw.mkdir(parents=True, exist_ok=True)
    good = scene(4)
    members = {
        "000": ("a red square on a blue background", encode(good, "JPEG", quality=90)),
        "001": ("a png stored under .jpg", encode(scene(5), "PNG")),  # disable_all_reencoding does this
        "002": ("cut off", encode(good, "JPEG")[:300]),
        "003": ("a bomb", bomb_png()),
        "004": ("a web page", HTML_BODY),
        "005": ("nothing at all", b""),
        "006": ("ein Bild von einem roten Quadrat auf blauem Grund", encode(good, "WEBP")),
    }
    rows = []
    with tarfile.open(raw / f"{shard}.tar", "w") as tf:
        for key, (cap, data) in members.items():
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", cap.encode()), (f"{key}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            rows.append({"key": key, "uid": f"uid{key}", "caption": cap, "status": "success"})
        evil = tarfile.TarInfo("../../evil.jpg")  # never used as a path: not a key the parquet lists
        evil.size = 4
        tf.addfile(evil, io.BytesIO(b"evil"))
    rows.append({"key": "007", "uid": "uid007", "caption": "listed but absent", "status": "success"})
    rows.append({"key": "008", "uid": "uid008", "caption": "failed", "status": "failed_to_download"})
    t = pa.Table.from_pylist(rows)
    t = t.append_column("url", pa.array([f"http://127.0.0.1/{r['key']}" for r in rows]))
    t = t.append_column("original_width", pa.array([128] + [None] * (len(rows) - 1), pa.int32()))
    t = t.append_column("original_height", pa.array([96] + [None] * (len(rows) - 1), pa.int32()))
    pq.write_table(t, raw / f"{shard}.parquet")
    (raw / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows)}))
    return [r["uid"] for r in rows if r["status"] == "success"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("clip") / "tiny")


def test_shard_unit_records_every_failure_and_resumes(tmp_path):
    ok_uids = write_raw_shard(tmp_path / "raw")
    cfg = AnnotateConfig(batch_size=3)  # several batches per shard
    worker = ShardAnnotator(str(tmp_path), cfg, worker=False)
    summary = worker(pa.table({"shard": ["00000"]})).to_pylist()
    assert summary[0]["error"] is None and summary[0]["rows"] == len(ok_uids) == 8

    t = read_annotations(tmp_path)
    assert t.column_names[:5] == [schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY]
    schema.require(t, schema.ANNOTATIONS, "test")
    rows = {r["uid"]: r for r in t.to_pylist()}
    assert sorted(rows) == sorted(ok_uids)  # one row per success, the failure left out
    err = {u: r[schema.DECODE_ERROR] for u, r in rows.items()}
    assert err == {
        "uid000": None,
        "uid001": None,
        "uid002": "truncated",
        "uid003": "too_many_pixels",
        "uid004": "not_an_image",
        "uid005": "empty",
        "uid006": None,
        "uid007": "missing_in_tar",
    }
    assert rows["uid001"][schema.IMAGE_FORMAT] == "png" and rows["uid006"][schema.IMAGE_FORMAT] == "webp"
    assert rows["uid000"][schema.WIDTH] == 128 and rows["uid000"][schema.ORIGINAL_WIDTH] == 128
    assert rows["uid002"][schema.WIDTH] is None and rows["uid002"][schema.SHA256] is not None
    assert rows["uid006"][schema.LANG] == "de" and rows["uid000"][schema.LANG] == "en"
    assert rows["uid000"][schema.CLIP_SCORE] is None
    # Different bytes, same pixels? No: JPEG and WebP of one scene differ; but the pHash sees one image.
    assert hamming(rows["uid000"][schema.PHASH], rows["uid006"][schema.PHASH]) <= 6

    marker = units.read_marker(tmp_path / "annotations", "00000")
    assert marker["rows"] == 8 and marker["decode_errors"]["truncated"] == 1
    raw = tmp_path / "raw"
    assert _is_current(tmp_path / "annotations", raw, "00000", cfg)
    assert not _is_current(tmp_path / "annotations", raw, "00000", AnnotateConfig(lid_top_k=3))
    (raw / "00000.parquet").touch()  # a re-downloaded shard is annotated again
    assert not _is_current(tmp_path / "annotations", raw, "00000", cfg)


def test_an_unreadable_shard_is_reported_not_raised_by_the_worker(tmp_path):
    write_raw_shard(tmp_path / "raw")
    (tmp_path / "raw" / "00000.tar").write_bytes(b"not a tar at all" * 100)
    out = ShardAnnotator(str(tmp_path), AnnotateConfig(), worker=False)(pa.table({"shard": ["00000"]}))
    assert "00000.tar" in out.column("error")[0].as_py()
    assert not units.is_done(tmp_path / "annotations", "00000")


def test_clip_scores_and_embeddings_stored_apart(tmp_path, tiny_clip):
    write_raw_shard(tmp_path / "raw")
    ShardAnnotator(str(tmp_path), AnnotateConfig(clip_model=tiny_clip, batch_size=4, clip_batch_size=2), worker=False)(
        pa.table({"shard": ["00000"]})
    )
    t = read_annotations(tmp_path)
    uids, emb = load_embeddings(tmp_path)
    _, txt = load_embeddings(tmp_path, schema.TEXT_EMBEDDING)
    assert uids == t.column(schema.UID).to_pylist() and emb.dtype == np.float16 and emb.shape == (8, 64)
    decoded = np.array([e is None for e in t.column(schema.DECODE_ERROR).to_pylist()])
    norms = np.linalg.norm(emb.astype(np.float32), axis=1)
    assert np.allclose(norms[decoded], 1.0, atol=2e-3) and np.all(norms[~decoded] == 0)
    score = t.column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False)
    dots = (emb.astype(np.float32) * txt.astype(np.float32)).sum(1)
    assert np.allclose(score[decoded], dots[decoded], atol=2e-3) and np.isnan(score[~decoded]).all()

    # The same weights named as ARCH.json:CHECKPOINT (a plain state dict, loaded weights_only) score the same.
    d = tiny_clip.removeprefix("local-dir:")
    other = f"{d}/model_config.json:{d}/open_clip_pytorch_model.bin"
    assert parse_spec(other).weights.endswith(".bin")
    ShardAnnotator(str(tmp_path), AnnotateConfig(clip_model=other), worker=False)(pa.table({"shard": ["00000"]}))
    again = read_annotations(tmp_path).column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False)
    assert np.allclose(again[decoded], score[decoded], atol=1e-5)

    # Annotating again without CLIP removes the embeddings, which would no longer match.
    ShardAnnotator(str(tmp_path), AnnotateConfig(), worker=False)(pa.table({"shard": ["00000"]}))
    with pytest.raises(InputError, match="--clip-model"):
        load_embeddings(tmp_path)


def test_a_tiers_train_run_scores_the_pool(tmp_path):
    """The DFN path's plumbing: a CLIP trained by `tiers train` on trusted data annotates the pool."""
    import train
    from synthweb import WebConfig, build, shards_from_synthweb

    build(tmp_path / "trusted", WebConfig(n=80, seed=9, mix={"clean": 1.0}, eval_per_concept=1, retrieval_pairs=2))
    manifest = shards_from_synthweb(tmp_path / "trusted", tmp_path / "tiers", tiers={"trusted": 1.0})
    cfg = train.make_config({"model": "ct-vit-micro-32", "samples_seen": 64, "batch_size": 32})
    train.train(cfg, manifest, "trusted", tmp_path / "run", progress=False)
    write_raw_shard(tmp_path / "pool" / "raw")
    spec = f"run:{tmp_path / 'run'}"
    ShardAnnotator(str(tmp_path / "pool"), AnnotateConfig(clip_model=spec), worker=False)(
        pa.table({"shard": ["00000"]})
    )
    t = read_annotations(tmp_path / "pool")
    scored = [s is not None for s in t.column(schema.CLIP_SCORE).to_pylist()]
    decoded = [e is None for e in t.column(schema.DECODE_ERROR).to_pylist()]
    assert scored == decoded and sum(scored) == 3
    missing = ShardAnnotator(str(tmp_path / "pool"), AnnotateConfig(clip_model="run:/no/such/run"), worker=False)
    assert "no `tiers train` run" in missing(pa.table({"shard": ["00000"]})).column("error")[0].as_py()


@pytest.mark.parametrize("spec", ["ViT-B-32", "ViT-B-32:/no/such/checkpoint.pt", "no-such-arch:/x.pt"])
def test_unusable_clip_models_are_input_errors(spec):
    from curate.annotate.clip import ClipScorer

    with pytest.raises(InputError):
        ClipScorer(spec, "cpu")


# --- end to end: synthetic web -> img2dataset -> annotate on Ray -> filter -----------------------

E2E_MIX = {
    "clean": 0.45,
    "foreign": 0.12,
    "generic": 0.05,
    "exact_dup": 0.05,
    "tiny": 0.06,
    "extreme_aspect": 0.06,
    "blank": 0.06,
    "truncated": 0.04,
    "html_as_image": 0.03,
    "bomb": 0.03,
    "empty_body": 0.03,
    "http_404": 0.02,
}


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory, ray_local):
    """A 200-URL synthetic web (no private addresses, no stalls) downloaded by `tiers download`."""
    from curate.download import DownloadConfig, download
    from synthweb import WebConfig, WebServer, build

    root = tmp_path_factory.mktemp("annweb")
    build(root / "web", WebConfig(n=200, seed=5, mix=E2E_MIX, eval_per_concept=1, retrieval_pairs=5, workers=1))
    cfg = DownloadConfig(timeout=2, samples_per_shard=60, threads=8)
    with WebServer(root / "web", slow_seconds=1) as web:
        download(web.urls_path, root / "build", cfg, allow_private="loopback", progress=False)
    return root


def test_annotate_end_to_end_through_ray(downloaded, ray_local, capsys):
    from pipelines.cli import main

    build_dir = downloaded / "build"
    assert main(["annotate", str(build_dir), "--actors", "2"]) == 0
    assert "annotated 4 of 4 shards" in capsys.readouterr().out

    raw = pa.concat_tables([pq.read_table(p) for p in sorted((build_dir / "raw").glob("[0-9]*.parquet"))])
    ok = {r["uid"] for r in raw.to_pylist() if r[schema.DOWNLOAD_STATUS] == "success"}
    t = read_annotations(build_dir)
    uids = t.column(schema.UID).to_pylist()
    assert len(uids) == len(set(uids)) and set(uids) == ok

    truth = {r["uid"]: r for r in pq.read_table(downloaded / "web" / "truth.parquet").to_pylist()}
    rows = t.to_pylist()
    by_kind = {}
    for r in rows:
        kind = truth[r["uid"]]["kind"]
        by_kind.setdefault(kind, []).append(r)
        assert r[schema.DECODE_ERROR] is None, (kind, r)  # the downloader kept only decodable images
        # Images of at most 256 px are stored at their size (re-encoded as JPEG); the size is the truth's.
        assert (r[schema.WIDTH], r[schema.HEIGHT]) == (truth[r["uid"]]["width"], truth[r["uid"]]["height"])
        assert (r[schema.ORIGINAL_WIDTH], r[schema.ORIGINAL_HEIGHT]) == (r[schema.WIDTH], r[schema.HEIGHT])
    assert not {"truncated", "html_as_image", "bomb", "empty_body"} & set(by_kind)
    sha = {r["uid"]: r[schema.SHA256] for r in rows}
    assert all(sha[r["uid"]] == sha[truth[r["uid"]]["dup_of"]] for r in by_kind["exact_dup"])

    # A rerun does nothing; the filter preset for the synthetic web drops every low-quality kind.
    assert main(["annotate", str(build_dir)]) == 0
    assert "annotated 0 of 4 shards" in capsys.readouterr().out
    out = downloaded / "decisions.parquet"
    assert main(["filter", str(build_dir), "--preset", "synthetic-basic", "--out", str(out)]) == 0
    decisions = {r["uid"]: r for r in pq.read_table(out).to_pylist()}
    for kind in ("tiny", "extreme_aspect", "blank", "foreign"):
        assert not any(decisions[r["uid"]]["keep"] for r in by_kind[kind]), kind
    clean = [decisions[r["uid"]]["keep"] for r in by_kind["clean"]]
    assert sum(clean) >= 0.9 * len(clean)


def test_hostile_images_through_ray_workers_are_recorded_not_fatal(tmp_path, ray_local):
    """The bytes as served (no downloader checks): Ray actors record every bad image and finish."""
    ok_uids = write_raw_shard(tmp_path / "raw", "00000")
    write_raw_shard(tmp_path / "raw", "00001")
    summary = annotate(tmp_path, AnnotateConfig(actors=2), progress=False)
    assert summary.rows == 2 * len(ok_uids) and summary.done == 2
    assert summary.decode_errors == {
        "empty": 2,
        "missing_in_tar": 2,
        "not_an_image": 2,
        "too_many_pixels": 2,
        "truncated": 2,
    }


def test_a_model_the_actors_cannot_load_is_one_input_error(tmp_path, ray_local, tiny_clip):
    write_raw_shard(tmp_path / "raw")
    d = tiny_clip.removeprefix("local-dir:")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="shard 00000"):
        annotate(tmp_path, AnnotateConfig(clip_model=f"{d}/model_config.json:{bad}"), progress=False)
    assert not units.is_done(tmp_path / "annotations", "00000")


def test_annotate_without_raw_shards_is_an_input_error(tmp_path):
    from pipelines.cli import main

    assert main(["annotate", str(tmp_path)]) == 2
    with pytest.raises(InputError, match="raw"):
        annotate(tmp_path)
