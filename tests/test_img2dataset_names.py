"""img2dataset's option names in [download]: aliases, columns of the URL list, ignored and refused options."""

from __future__ import annotations

import argparse
import logging

import pytest

from curate.core.errors import InputError
from curate.download.config import DownloadConfig, config_from_dict
from pipelines.build import config_from_toml
from pipelines.options import add_read_options, read_config


def test_aliases_and_columns_are_taken_and_runner_options_ignored_with_a_warning(caplog):
    data = {"thread_count": 8, "number_sample_per_shard": 100, "processes_count": 16, "distributor": "pyspark",
            "output_format": "webdataset", "url_col": "URL", "caption_col": "TEXT", "image_size": 256}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        cfg = config_from_dict(data)
    assert (cfg.threads, cfg.samples_per_shard, cfg.image_size) == (8, 100, 256)
    assert (cfg.url_col, cfg.caption_col) == ("URL", "TEXT")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "processes_count" in said and "one download task runs per Ray CPU" in said and "distributor" in said
    assert cfg.fingerprint() == DownloadConfig(threads=8, samples_per_shard=100, image_size=256).fingerprint()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"output_format": "parquet"}, "writes webdataset shards"),
        ({"max_image_area": 1000}, "no equivalent"),
        ({"skip_reencode": True}, "no equivalent"),
        ({"thread_count": 4, "threads": 8}, "same setting"),
        ({"no_such_option": 1}, "unknown key"),
    ],
)
def test_what_cannot_be_honoured_is_refused(data, match):
    with pytest.raises(InputError, match=match):
        config_from_dict(data, source="img2dataset.toml")


def test_build_config_reads_them_and_flags_win_over_them():
    cfg = config_from_toml({"download": {"thread_count": 4, "url_col": "URL", "input_format": "csv"}})
    assert cfg.download.threads == 4 and cfg.filters  # the rest of the build config as usual
    p = argparse.ArgumentParser()
    add_read_options(p)
    assert read_config(p.parse_args([]), cfg.download).url_col == "URL"
    assert read_config(p.parse_args([]), cfg.download).format == "csv"
    assert read_config(p.parse_args(["--url-col", "link"]), cfg.download).url_col == "link"
