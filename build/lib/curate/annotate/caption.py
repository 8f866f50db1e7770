"""Caption signals: length, word count, alphabetic share, repetition, and URL / HTML / boilerplate flags.

All are cheap string measurements of the caption as downloaded (no normalisation beyond what each
definition says), so a filter threshold means the same thing on every build:

- ``caption_chars``: Unicode code points; ``caption_words``: whitespace-separated tokens (as DataComp
  counts them; a Chinese caption without spaces is one word, which is why the language filter, not
  the word filter, is what should judge it);
- ``alpha_share``: alphabetic code points / non-space code points (0 for an empty caption);
- ``repeat_share``: share of tokens that repeat an earlier token, case-folded (0 with < 2 tokens);
- ``has_url``, ``has_html``: a URL or domain, an HTML tag or entity anywhere in the caption;
- ``boilerplate``: the caption is a placeholder or a file name ("image", "IMG_0423.JPG",
  "untitled"), or carries web-shop / page-furniture phrases ("click to enlarge", "add to cart",
  "all rights reserved", "image 3 of 12"). Descriptive context words ("stock image", "clip art")
  are not boilerplate.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from curate.core import schema

_URL = re.compile(
    r"(?i)\bhttps?://|\bwww\.|\b[a-z0-9][a-z0-9-]*\.(?:com|net|org|info|biz|io|co|uk|de|fr|es|ru|cn|jp|br|it|nl|pl)\b"
)
_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>|&(?:[a-zA-Z]{2,8}|#\d{2,5}|#x[0-9a-fA-F]{2,4});")
_PLACEHOLDER = re.compile(
    r"(?i)^\W*(?:image|img|photo|picture|pic|untitled|thumbnail|thumb|logo|banner|icon|placeholder|default"
    r"|no image|null|none|n/?a|jpe?g|png)(?:[\s_#-]*\d+)?\W*$"
)
_FILENAME = re.compile(
    r"(?i)^\W*(?:(?:img|dsc[nf]?|dcim|pxl|pict?|screenshot)[\s_-]?\d[\w-]*|\S+\.(?:jpe?g|png|gif|webp|bmp|tiff?))\W*$"
)
_PHRASES = re.compile(
    r"(?i)\b(?:click (?:here|to (?:enlarge|zoom|view))|free shipping|buy (?:it )?now|shop now"
    r"|add to (?:cart|basket|wishlist)|best price|all rights reserved|copyright"
    r"|share (?:on|to) (?:facebook|twitter|pinterest|whatsapp)|view (?:gallery|larger|full size)"
    r"|see (?:more|details)|read more|(?:image|photo|picture) \d+ of \d+|out of stock|sign up|subscribe)\b|\u00a9"
)

FIELDS = [
    schema.CAPTION_CHARS,
    schema.CAPTION_WORDS,
    schema.ALPHA_SHARE,
    schema.REPEAT_SHARE,
    schema.HAS_URL,
    schema.HAS_HTML,
    schema.BOILERPLATE,
]


def is_boilerplate(text: str) -> bool:
    return bool(_PLACEHOLDER.match(text) or _FILENAME.match(text) or _PHRASES.search(text))


def _alpha_share(text: str) -> float:
    letters = other = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
        elif not ch.isspace():
            other += 1
    total = letters + other
    return letters / total if total else 0.0


def caption_signals(captions: list[str | None]) -> dict[str, pa.Array]:
    """The caption columns for ``captions`` (None counts as the empty caption)."""
    n = len(captions)
    chars = np.zeros(n, np.int32)
    words = np.zeros(n, np.int32)
    alpha = np.zeros(n, np.float32)
    repeat = np.zeros(n, np.float32)
    url = np.zeros(n, bool)
    html = np.zeros(n, bool)
    boiler = np.zeros(n, bool)
    for i, text in enumerate(captions):
        if not text:
            continue
        tokens = text.split()
        chars[i] = len(text)
        words[i] = len(tokens)
        alpha[i] = _alpha_share(text)
        if len(tokens) > 1:
            repeat[i] = 1.0 - len({t.casefold() for t in tokens}) / len(tokens)
        url[i] = _URL.search(text) is not None
        html[i] = _HTML.search(text) is not None
        boiler[i] = is_boilerplate(text)
    return {
        schema.CAPTION_CHARS: pa.array(chars),
        schema.CAPTION_WORDS: pa.array(words),
        schema.ALPHA_SHARE: pa.array(alpha),
        schema.REPEAT_SHARE: pa.array(repeat),
        schema.HAS_URL: pa.array(url),
        schema.HAS_HTML: pa.array(html),
        schema.BOILERPLATE: pa.array(boiler),
    }
