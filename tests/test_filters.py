"""Each filter on small hand-made annotation tables, the wrapper's reasons and counts, and the TOML config."""

import numpy as np
import pyarrow as pa
import pytest

from curate.core import schema
from curate.core.errors import InputError
from curate.filters import apply_filters, build_filters, config_from_dict, load_config, preset_config, rules

LANG_SCORES = schema.ANNOTATIONS.field(schema.LANG_SCORES).type


def table(**cols) -> pa.Table:
    n = len(next(iter(cols.values())))
    out = {schema.UID: [f"u{i}" for i in range(n)]}
    for name, values in cols.items():
        out[name] = pa.array(values, schema.ANNOTATIONS.field(name).type)
    return pa.table(out)


def keep(f, t) -> list[bool]:
    mask, reason = f(t)
    assert reason == f.name
    return mask.tolist()


def test_decoded_keeps_rows_without_a_decode_error():
    t = table(decode_error=[None, "truncated", None])
    assert keep(rules.decoded(), t) == [True, False, True]


def test_language_argmax_and_probability_rules():
    t = table(
        lang=["en", "fr", "de", None, "en"],
        lang_scores=[
            [("en", 0.9)],
            [("fr", 0.5), ("en", 0.3)],  # a short English caption the argmax calls French
            [("de", 0.99)],
            [],  # empty caption
            [("en", 0.08), ("id", 0.07)],  # English on top, but unsure
        ],
    )
    assert keep(rules.language(["en"]), t) == [True, False, False, False, True]
    assert keep(rules.language(["en"], min_score=0.1), t) == [True, True, False, False, True]
    assert keep(rules.language(["de", "fr"]), t) == [False, True, True, False, False]


def test_caption_length_rules_are_inclusive_lower_bounds():
    t = table(caption_words=[2, 3, 10], caption_chars=[5, 6, 40])
    assert keep(rules.min_words(3), t) == [False, True, True]
    assert keep(rules.min_chars(6), t) == [False, True, True]


def test_caption_share_and_flag_rules():
    t = table(
        alpha_share=[0.2, 0.9, None],
        repeat_share=[0.0, 0.8, 0.5],
        has_url=[False, True, None],
        has_html=[True, False, False],
        boilerplate=[False, False, True],
    )
    assert keep(rules.min_alpha_share(0.5), t) == [False, True, False]  # unmeasured fails
    assert keep(rules.max_repeat_share(0.5), t) == [True, False, True]
    assert keep(rules.no_url(), t) == [True, False, False]
    assert keep(rules.no_html(), t) == [False, True, True]
    assert keep(rules.no_boilerplate(), t) == [True, True, False]


def test_image_rules_and_unmeasured_images_fail_them():
    t = table(
        width=[300, 100, 900, None],
        height=[250, 400, 200, None],
        blank_share=[0.5, 0.99, 0.1, None],
        sharpness=[50.0, 1.0, 500.0, None],
        entropy=[5.0, 0.2, 7.0, None],
    )
    assert keep(rules.min_side(200), t) == [True, False, True, False]
    assert keep(rules.max_aspect(3.0), t) == [True, False, False, False]
    assert keep(rules.max_blank_share(0.97), t) == [True, False, True, False]
    assert keep(rules.min_sharpness(10), t) == [True, False, True, False]
    assert keep(rules.min_entropy(1.0), t) == [True, False, True, False]


def test_size_rules_use_the_original_size_where_img2dataset_recorded_it():
    # Stored at 256 px by the downloader; the originals were 1024x768 and 150x100.
    t = table(width=[256, 150], height=[192, 100], original_width=[1024, None], original_height=[768, None])
    assert keep(rules.min_side(200), t) == [True, False]


def test_clip_score_threshold_and_exact_top_fraction():
    t = table(clip_score=[0.1, 0.4, None, 0.3, 0.2, 0.35])
    assert keep(rules.clip_score(threshold=0.3), t) == [False, True, False, True, False, True]
    # 5 scored rows: the top 40% is exactly 2 of them; the unscored row is never kept.
    assert keep(rules.clip_score(top_fraction=0.4), t) == [False, True, False, False, False, True]
    with pytest.raises(ValueError):
        rules.clip_score(threshold=0.3, top_fraction=0.1)
    with pytest.raises(InputError, match="--clip-model"):
        rules.clip_score(top_fraction=0.3)(table(clip_score=[None, None]))


def test_wrapper_records_first_and_all_reasons_and_counts_add_up():
    t = table(
        decode_error=[None, "truncated", None, None],
        caption_words=[5, 1, 1, 5],
        caption_chars=[30, 2, 20, 30],
        width=[300, None, 300, 300],
        height=[300, None, 300, 50],
    )
    fs = [rules.decoded(), rules.min_words(3), rules.min_chars(6), rules.min_side(100)]
    r = apply_filters(t, fs)
    rows = r.table.to_pylist()
    assert [x["keep"] for x in rows] == [True, False, False, False]
    assert [x["reason"] for x in rows] == [None, "decode_error", "min_words", "min_side"]
    assert rows[1]["reasons"] == ["decode_error", "min_words", "min_chars", "min_side"]
    assert rows[2]["reasons"] == ["min_words"] and rows[0]["reasons"] == []
    c = r.counts
    assert c["kept"] + sum(v for k, v in c.items() if k.startswith("dropped_")) == c["input"] == 4
    assert c["dropped_min_words"] == 1 and c["failing_min_words"] == 2
    assert r.keep.tolist() == [True, False, False, False]


def test_wrapper_without_filters_keeps_everything_and_rejects_duplicate_names():
    t = table(caption_words=[1, 2])
    r = apply_filters(t, [])
    assert r.keep.tolist() == [True, True] and r.counts == {"input": 2, "kept": 2}
    with pytest.raises(InputError, match="unique"):
        apply_filters(t, [rules.min_words(2), rules.min_words(3)])


def test_a_filter_on_a_missing_column_names_it():
    with pytest.raises(InputError, match="clip_score"):
        apply_filters(table(caption_words=[1]), [rules.clip_score(threshold=0.2)])


def test_presets_and_the_datacomp_size_scaling():
    names = [f.name for f in build_filters(preset_config("datacomp-basic"))]
    assert names == ["decode_error", "language", "min_words", "min_chars", "min_side", "max_aspect"]
    side = {f.name: f for f in build_filters(preset_config("datacomp-basic", image_size=256))}["min_side"]
    assert side.params["value"] == 100
    combined = [f.name for f in build_filters(preset_config(["datacomp-basic", "clip-score"]))]
    assert combined[-1] == "clip_score" and combined.count("decode_error") == 1
    assert "blank" in [f.name for f in build_filters(preset_config("synthetic-basic"))]


def test_toml_config_replaces_appends_and_drops(tmp_path):
    p = tmp_path / "filters.toml"
    p.write_text(
        'preset = ["datacomp-basic", "clip-score"]\n'
        "image_size = 256\n"
        'drop = ["max_aspect"]\n'
        "[[filters]]\n"
        'type = "clip_score"\n'
        "threshold = 0.25\n"
        "[[filters]]\n"
        'type = "max_blank_share"\n'
        "value = 0.9\n"
        'name = "placeholder"\n'
    )
    cfg = load_config(p)
    fs = {f.name: f for f in build_filters(cfg)}
    assert list(fs) == ["decode_error", "language", "min_words", "min_chars", "min_side", "clip_score", "placeholder"]
    assert fs["clip_score"].params == {"threshold": 0.25, "top_fraction": None}
    assert fs["placeholder"].params == {"value": 0.9}
    assert cfg.to_dict()["image_size"] == 256


@pytest.mark.parametrize(
    "text, match",
    [
        ('preset = "nope"', "unknown filter preset"),
        ('[[filters]]\ntype = "min_wrds"', "unknown filter type"),
        ('[[filters]]\ntype = "min_words"\nminimum = 3', "min_words"),
        ('drop = ["blank"]\npreset = "datacomp-basic"', "no filter named"),
        ("thresholds = 1", r"\[filters\] unknown key\(s\): thresholds"),
        ("preset = [", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_file_and_the_problem(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_refiltering_is_a_pass_over_columns():
    # 200k rows through the whole datacomp-basic preset: columns only, well under a second.
    rng = np.random.default_rng(0)
    n = 200_000
    t = table(
        decode_error=[None] * n,
        lang=rng.choice(["en", "de"], n).tolist(),
        lang_scores=[[("en", 0.5)]] * n,
        caption_words=rng.integers(0, 10, n),
        caption_chars=rng.integers(0, 60, n),
        width=rng.integers(50, 600, n),
        height=rng.integers(50, 600, n),
    )
    import time

    t0 = time.perf_counter()
    r = apply_filters(t, build_filters(config_from_dict({"preset": "datacomp-basic"})))
    assert time.perf_counter() - t0 < 2.0
    assert r.counts["input"] == n
