"""The column-wise tar reader reads exactly what the header-by-header walk reads, and refuses the same tars
with the same message, on tars of every format and on damaged ones; and the read planner that turns the
members wanted from a tar into ranged reads (``coalesce``)."""

from __future__ import annotations

import io
import random
import tarfile
import tempfile

import pytest

from curate.core import tarscan
from curate.core.tarstream import TarWriter
from tests.memory import needs_proc, peak_growth_mb


def outcome(buf):
    """What the walk says of ``buf``: its members, or the error it raises."""
    try:
        return tarscan._walk(buf, "t")
    except tarfile.TarError as e:
        return f"{type(e).__name__}: {e}"


def scanned(buf):
    try:
        return tarscan.scan(buf, "t")
    except tarfile.TarError as e:
        return f"{type(e).__name__}: {e}"


def scanned_file(buf, path):
    """What :func:`tarscan.scan_file` reads of ``buf`` written to ``path``: members, or the error."""
    path.write_bytes(buf)
    try:
        return tarscan.scan_file(path, "t").rows()
    except tarfile.TarError as e:
        return f"{type(e).__name__}: {e}"


def ours(rng: random.Random, n: int) -> bytes:
    """A tar as TarWriter (and img2dataset) writes it: plain headers, some members that look like headers."""
    members = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.2:  # data that holds a valid header block, aligned: never on the header chain
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                info = tarfile.TarInfo("evil.jpg")
                info.size = 10**6
                tf.addfile(info, io.BytesIO(b"\0" * 10**6))
            data = inner.getvalue()[:512] * rng.randint(1, 3)
        else:
            data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randint(0, 5000)]))
        members.append((f"{i:09d}.{rng.choice(['jpg', 'txt', 'json', 'png'])}", data))

    with tempfile.TemporaryFile() as tmp:
        writer = TarWriter(tmp.fileno())
        for name, data in members:
            writer.add(name, data)
        writer.close()
        tmp.seek(0)
        return tmp.read()


def theirs(rng: random.Random, n: int, fmt) -> bytes:
    """A tar from Python's tarfile in ``fmt``: long and non-ASCII names, folders, directories, links."""
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w", format=fmt) as tf:
        for i in range(n):
            kind = rng.random()
            name = f"{i:05d}.jpg"
            if kind < 0.15:
                name = "d" * rng.randint(90, 150) + "/" + name
            elif kind < 0.25:
                name = f"büro{i}.JPG"
            elif kind < 0.3:
                d = tarfile.TarInfo(f"dir{i}")
                d.type = tarfile.DIRTYPE
                tf.addfile(d)
                continue
            elif kind < 0.35:
                link = tarfile.TarInfo(f"link{i}.jpg")
                link.type = tarfile.SYMTYPE
                link.linkname = "x" * rng.randint(1, 150 if fmt != tarfile.USTAR_FORMAT else 99)
                tf.addfile(link)
                continue
            data = rng.randbytes(rng.randint(0, 3000))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return f.getvalue()


def damaged(rng: random.Random, buf: bytes) -> bytes:
    b = bytearray(buf)
    what = rng.random()
    if what < 0.3:
        return bytes(b[: rng.randint(0, len(b))])
    if what < 0.6:  # a byte of a header (or anywhere)
        at = rng.choice([rng.randrange(0, len(b), 512) + rng.randint(0, 511), rng.randrange(len(b))])
        b[at] = rng.randrange(256)
        return bytes(b)
    if what < 0.8:  # a size field rewritten, with its checksum fixed: the chain goes elsewhere
        at = rng.randrange(0, len(b) - 512, 512)
        b[at + 124 : at + 136] = b"%011o\0" % rng.randint(0, 8000)
        b[at + 148 : at + 156] = b" " * 8
        b[at + 148 : at + 156] = b"%06o\0 " % sum(b[at : at + 512])
        return bytes(b)
    return bytes(b[:-1024]) + bytes(rng.randint(0, 1024))  # the end blocks cut or shortened


@pytest.mark.parametrize("seed", range(40))
def test_column_wise_scan_equals_the_walk(seed, tmp_path):
    rng = random.Random(seed)
    bufs = [ours(rng, rng.randint(0, 40))]
    bufs += [theirs(rng, rng.randint(1, 30), fmt) for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT)]
    bufs.append(theirs(rng, rng.randint(1, 30), tarfile.PAX_FORMAT))
    for buf in bufs + [damaged(rng, b) for b in bufs for _ in range(5)] + [b""]:
        assert scanned(buf) == outcome(buf)
        assert scanned_file(buf, tmp_path / "t.tar") == outcome(buf)  # headers read, not mapped
        cols = None
        try:
            cols = tarscan.scan_columns(buf, "t")
        except tarfile.TarError:
            pass
        if cols is not None:
            assert cols.rows() == outcome(buf)


def test_tars_we_and_img2dataset_write_take_the_column_wise_path():
    rng = random.Random(0)
    buf = ours(rng, 200)
    assert tarscan._scan_plain(buf, "t") is not None
    assert tarscan._scan_plain(theirs(rng, 5, tarfile.USTAR_FORMAT)[:-512], "t") is None  # cut: the walk says where


HEADER_SCAN_MEMORY_SETUP = """
import os, sys
from curate.core.tarscan import scan_file
from curate.core.tarstream import TarWriter

path = os.path.join(sys.argv[1], "raw.tar")
with open(path, "wb") as f:  # 256 members of 256 kB, written just now: in the page cache
    w = TarWriter(f.fileno())
    for i in range(256):
        w.add(f"{i:09d}.jpg", os.urandom(256 << 10))
        w.add(f"{i:09d}.txt", b"a caption")
    w.close()
"""


@needs_proc
def test_scanning_a_tars_headers_holds_the_headers_not_the_tar(tmp_path):
    """Indexing a raw tar reads its header blocks only: the reader's peak must not grow by the tar's
    64 MB. Scanning them through a map did (each touched header maps the page-cache folio around it)."""
    grew = peak_growth_mb(HEADER_SCAN_MEMORY_SETUP, "assert len(scan_file(path).sizes) == 512", tmp_path)
    assert grew < 16, f"the scan's peak grew by {grew} MB for a 64 MB tar's 512 headers"


def test_band_shards_read_neighbouring_images_of_a_remote_tar_in_one_range():
    """Ranged reads of a raw tar in object storage: images closer than MAX_GAP share one GET, a block
    never outgrows max_block (an image larger than it is a block of its own), and every image maps
    to the block that holds it."""
    import numpy as np

    from curate.core.tarstream import coalesce

    offsets, sizes = np.array([100, 0, 5000, 10, 9000]), np.array([10, 5, 10, 90, 3000])
    blocks, block_of = coalesce(offsets, sizes, max_gap=50, max_block=1000)
    assert blocks == [(0, 110), (5000, 10), (9000, 3000)] and block_of.tolist() == [0, 0, 1, 0, 2]
    for (o, n), b in zip(zip(offsets, sizes, strict=True), block_of, strict=True):
        start, length = blocks[b]
        assert start <= o and o + n <= start + length
    blocks, _ = coalesce(np.array([0, 10, 20]), np.array([10, 10, 10]), max_gap=50, max_block=15)
    assert blocks == [(0, 10), (10, 10), (20, 10)]


def test_coalesce_cuts_blocks_as_the_greedy_rule_does_item_by_item():
    """The column-wise cut equals the rule applied item by item in offset order (overlapping, empty and
    oversized items included)."""
    import numpy as np

    from curate.core.tarstream import coalesce

    def greedy(offsets, sizes, max_gap, max_block):
        blocks, block_of = [], np.zeros(len(offsets), np.int64)
        for i in np.argsort(offsets, kind="stable").tolist():
            o, e = int(offsets[i]), int(offsets[i] + sizes[i])
            if blocks and o - blocks[-1][1] < max_gap and max(blocks[-1][1], e) - blocks[-1][0] <= max_block:
                blocks[-1][1] = max(blocks[-1][1], e)
            else:
                blocks.append([o, e])
            block_of[i] = len(blocks) - 1
        return [(a, b - a) for a, b in blocks], block_of.tolist()

    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(0, 30))
        offsets, sizes = rng.integers(0, 2000, n), rng.integers(0, 300, n)
        tar = rng.random() < 0.5  # members of a tar: apart, in order
        if tar:
            offsets = np.cumsum(sizes + rng.integers(0, 200, n)) - sizes
        gap, block = int(rng.integers(0, 200)), int(rng.integers(1, 1000))
        blocks, block_of = coalesce(offsets, sizes, gap, block)
        assert (blocks, block_of.tolist()) == greedy(offsets, sizes, gap, block)
