import numpy as np
import pyarrow as pa
import pytest

from curate.dedup import DedupConfig, deduplicate, normalise_caption
from curate.dedup.clusters import Links, resolve
from curate.dedup.near import NearConfig, brute_force_pairs, distinct, near_pairs, recall_bound
from curate.dedup.semantic import semantic_pairs


def flip(h, bits):
    for b in bits:
        h ^= np.uint64(1) << np.uint64(b)
    return h


def random_hashes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)


def test_near_pairs_match_brute_force_exactly_with_planted_copies():
    rng = np.random.default_rng(1)
    h = random_hashes(3000)
    for t in range(300):  # plant copies at distance 1..6
        h[2000 + t] = flip(h[t].copy(), rng.choice(64, 1 + t % 6, replace=False))
    h, _ = distinct(h)
    ref = brute_force_pairs(h, 6)
    i, j, d = near_pairs(h, NearConfig(k=6, tables=16))
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    assert got <= ref  # verified by popcount: never a false pair
    assert len(got) >= 0.98 * len(ref) and len(ref) >= 300
    assert (d <= 6).all() and (i < j).all()


def test_recall_bound_is_honest():
    cfg = NearConfig(k=6, bands=3, tables=10)
    assert recall_bound(1, cfg) == 1.0 and recall_bound(2, cfg) == 1.0
    assert 0.9 < recall_bound(6, cfg) < 1.0
    assert recall_bound(6, NearConfig(tables=1)) < recall_bound(6, cfg)


def table(uids, sha=None, pix=None, phash=None, captions=None):
    n = len(uids)
    return pa.table(
        {
            "uid": uids,
            "sha256": sha or [f"s{i}" for i in range(n)],
            "pixel_hash": pix or [f"p{i}" for i in range(n)],
            "phash": pa.array(phash if phash is not None else random_hashes(n, 9), pa.uint64()),
            "caption": captions or [f"caption {i}" for i in range(n)],
        }
    )


def test_transitive_clusters_become_one_cluster():
    h = random_hashes(4, 3)
    a = h[0]
    b = flip(a.copy(), [1, 2, 3])  # a ~ b (3 bits)
    c = flip(b.copy(), [10, 11, 12])  # b ~ c (3 bits), a !~ c (6 bits > k=4)
    t = table(["a", "b", "c", "d"], phash=[a, b, c, h[3]])
    out = deduplicate(t, DedupConfig(near_k=4)).to_pydict()
    assert out["dup_of"] == [None, "a", "a", None]
    assert out["dup_kind"] == [None, "near", "near", None]


def test_keeper_is_best_quality_then_smallest_uid_whatever_the_order():
    t = table(["u3", "u1", "u2", "x"], sha=["s", "s", "s", "t"])
    q = np.array([0.5, 0.9, 0.9, 0.1])
    out = deduplicate(t, quality=q).to_pydict()
    assert out["dup_of"] == ["u1", None, "u1", None]
    assert out["dup_kind"] == ["exact", None, "exact", None]
    rev = t.take([3, 2, 1, 0])
    out2 = deduplicate(rev, quality=q[::-1].copy()).to_pydict()
    assert dict(zip(out2["uid"], out2["dup_of"], strict=True)) == dict(zip(out["uid"], out["dup_of"], strict=True))
    # "prefer" (e.g. passes the filters) outranks quality
    out3 = deduplicate(t, quality=q, prefer=np.array([True, False, False, True])).to_pydict()
    assert out3["dup_of"] == [None, "u3", "u3", None]


def test_strongest_link_names_the_kind():
    h = random_hashes(3, 5)
    t = table(
        ["a", "b", "c"],
        sha=["s1", "s1", "s3"],
        pix=["p1", "p1", "p1"],
        phash=[h[0], h[0], h[0]],
    )
    out = deduplicate(t).to_pydict()
    assert out["dup_kind"] == [None, "exact", "pixels"]


def test_null_hashes_are_never_duplicates_of_each_other():
    t = pa.table(
        {
            "uid": ["a", "b"],
            "sha256": ["s1", "s2"],
            "pixel_hash": pa.array([None, None], pa.string()),
            "phash": pa.array([None, None], pa.uint64()),
        }
    )
    assert deduplicate(t).column("dup_of").to_pylist() == [None, None]


def test_semantic_and_caption_duplicates():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 16)).astype(np.float32)
    e[7] = e[3] + 0.001 * rng.normal(size=16)
    i, j = semantic_pairs(e)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(3, 7)}
    t = table([f"u{k:02d}" for k in range(50)], captions=[f"c{k}" for k in range(48)] + ["A dog!", "a  dog"])
    out = deduplicate(t, DedupConfig(captions=True, semantic=True), embeddings=e).to_pydict()
    assert out["dup_kind"][7] == "semantic" and out["dup_of"][7] == "u03"
    assert out["dup_kind"][49] == "caption" and out["dup_of"][49] == "u48"
    assert deduplicate(t).column("dup_of").null_count == 50  # semantic needs embeddings; captions are opt-in
    assert deduplicate(t, embeddings=e).column("dup_of").null_count == 50  # and semantic is opt-in too
    assert normalise_caption("  A  Dog!! ") == "a dog" and normalise_caption("!!") is None


def test_links_reject_unknown_kinds():
    with pytest.raises(ValueError):
        Links(2).add("fuzzy", np.array([0]), np.array([1]))
    out = resolve(Links(3), np.array(["c", "a", "b"], dtype=object))
    assert out["keeper"].all()


@pytest.mark.parametrize("seed", range(4))
def test_union_find_components_are_scipys_and_keepers_follow_the_rule(monkeypatch, seed):
    """The NumPy union-find (``clusters.Forest``) against scipy's connected components, on graphs with long
    chains, stars and random links spread over kinds, in chunks smaller than a kind's links; and the keeper
    and kind of every row against the rule itself: the best-ranked row of its component, and the first
    kind whose links (with the stronger ones') join it to that keeper."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from curate.dedup import clusters
    from curate.dedup.clusters import KINDS, Forest, keepers

    monkeypatch.setattr(Forest, "CHUNK", 97)
    rng = np.random.default_rng(seed)
    n = 3_000
    chain = rng.permutation(n)[:800]
    pairs = [(chain[:-1], chain[1:]), (np.zeros(300, np.int64), rng.integers(0, n, 300))]
    pairs += [tuple(rng.integers(0, n, (2, 700)))]
    links = Links(n)
    for k, (i, j) in enumerate(pairs):
        cut = rng.integers(0, len(KINDS), len(i))
        for c in range(len(KINDS)):
            if k < 2 or c != 3:  # one kind without links in some graphs
                links.add(KINDS[c], i[cut == c], j[cut == c])

    def scipy_min_labels(kinds):
        i = np.concatenate([links.by_kind[k][0] for k in kinds if k in links.by_kind])
        j = np.concatenate([links.by_kind[k][1] for k in kinds if k in links.by_kind])
        labels = connected_components(sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)[1]
        smallest = np.full(labels.max() + 1, n)
        np.minimum.at(smallest, labels, np.arange(n))
        return smallest[labels]

    forest = Forest(n)
    for i, j in links.by_kind.values():
        forest.union(i, j)
    assert np.array_equal(forest.roots(), scipy_min_labels(KINDS))  # a root is its component's smallest row
    quality = np.round(rng.random(n), 1)  # ties, broken by uid
    uids = np.array([f"u{(k * 7919) % n:05d}" for k in range(n)], dtype=object)
    out = keepers(links, uids, quality)
    full = scipy_min_labels(KINDS)
    order = clusters.preference_order(uids, quality, None)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    prefixes = [scipy_min_labels(KINDS[: m + 1]) for m in range(len(KINDS))]
    assert len(np.unique(full)) < n - 500  # the graph has many non-trivial components
    for comp in np.unique(full):
        members = np.flatnonzero(full == comp)
        best = members[np.argmin(rank[members])]
        assert (out["cluster"][members] == best).all() and out["keeper"][members].sum() == 1
        for row in members[members != best]:
            first = next(k for k, lab in zip(KINDS, prefixes, strict=True) if lab[row] == lab[best])
            assert out["dup_kind"][row] == first


def test_decontamination_finds_exact_and_resized_copies_of_eval_images(tmp_path):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from curate.annotate.image import decode, measure, sha256
    from curate.dedup.decontaminate import eval_hashes, find_contaminated
    from synthweb.render import Concept, encode, render

    evals = [encode(render(Concept("red", "star"), np.random.default_rng(i), (96, 96)), "jpeg") for i in range(5)]
    pq.write_table(pa.table({"image": evals, "label": [0] * 5}), tmp_path / "zs.parquet")
    resized = Image.open(io.BytesIO(evals[2])).resize((80, 80))
    pool_bytes = [
        evals[0],  # exact copy
        encode(resized, "png"),  # resized, other format
        encode(render(Concept("blue", "cross"), np.random.default_rng(99), (96, 96)), "jpeg"),  # unrelated
    ]
    rows = []
    for i, b in enumerate(pool_bytes):
        m = measure(decode(b)[0].pixels)
        rows.append({"uid": f"p{i}", "sha256": sha256(b), "pixel_hash": m.pixel_hash, "phash": m.phash})
    pool = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [("uid", pa.string()), ("sha256", pa.string()), ("pixel_hash", pa.string()), ("phash", pa.uint64())]
        ),
    )
    hits = find_contaminated(pool, {"zs": eval_hashes(tmp_path / "zs.parquet")}, k=6)
    assert hits == {0: "zs:0", 1: "zs:2"}


def test_decontamination_vetoes_phash_matches_of_another_shape():
    from curate.dedup.decontaminate import find_contaminated

    ev = pa.table(
        {
            "item": [0, 1],
            "sha256": ["e0", "e1"],
            "pixel_hash": ["p0", "p1"],
            "phash": pa.array([0b1011, 0xFFFF_FFFF_0000_0000], pa.uint64()),
            "width": pa.array([96, 96], pa.int32()),
            "height": pa.array([96, 96], pa.int32()),
        }
    )
    pool = pa.table(
        {
            "sha256": ["a", "b", "c", "d", "e1"],
            "pixel_hash": ["x", "y", "z", "w", "v"],
            "phash": pa.array([0b1011, 0b1010, 0b1011, 0b1011, 0xFFFF_FFFF_0000_0000], pa.uint64()),
            "width": pa.array([64, 200, 64, None, 50], pa.int32()),
            "height": pa.array([64, 100, 64, None, 200], pa.int32()),
            # what img2dataset saw before resizing: row 2 was a 2:1 image cropped to a square
            "original_width": pa.array([640, None, 400, None, None], pa.int32()),
            "original_height": pa.array([640, None, 200, None, None], pa.int32()),
        }
    )
    hits = find_contaminated(pool, {"zs": ev}, k=6, shape_tolerance=0.05)
    # 0: a resized copy; 1, 2: same pHash neighbourhood but 2:1 images; 3: shape unknown, no veto;
    # 4: identical bytes (sha256) whatever its shape
    assert hits == {0: "zs:0", 3: "zs:0", 4: "zs:1"}
    assert find_contaminated(pool, {"zs": ev}, k=6) == {0: "zs:0", 1: "zs:0", 2: "zs:0", 3: "zs:0", 4: "zs:1"}
