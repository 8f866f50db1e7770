"""A synthetic web with known ground truth: images and captions of controlled quality, served locally.

``build(out, WebConfig(n, seed))`` writes it; ``WebServer(out)`` serves it on 127.0.0.1;
``truth.parquet`` says what every URL really is, so each filter can be scored, not eyeballed.
"""

from synthweb.build import DEFAULT_MIX, KINDS, WebConfig, build, parse_mix
from synthweb.server import WebServer, write_url_list
from synthweb.shards import shards_from_synthweb

__all__ = [
    "DEFAULT_MIX",
    "KINDS",
    "WebConfig",
    "WebServer",
    "build",
    "parse_mix",
    "shards_from_synthweb",
    "write_url_list",
]
