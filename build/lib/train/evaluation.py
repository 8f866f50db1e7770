"""Evaluate a trained model: zero-shot classification, image-text retrieval, linear probe; results in eval.json.

Datasets are read as they are found:

- classification (zero-shot, linear probe): an ImageFolder (``DIR/<class>/<image>``, or
  ``DIR/{train,test}/<class>/...`` for a fixed split) or a parquet with an ``image`` column (bytes,
  or a struct with ``bytes`` as Hugging Face writes it) and ``label`` (int) and/or ``label_name``;
  an optional ``split`` column (train/test) fixes the linear probe's split;
- retrieval: a parquet with ``image`` and ``caption`` (or ``text``, or a ``captions`` list per image), or a
  Flickr / COCO directory (:func:`train.standard.read_captioned`).

Class names and prompt templates come from a ``classes.json`` (``{"classnames", "templates"}``)
given explicitly; else, for a standard dataset name (``cifar10=DIR``), from clip_benchmark
(:mod:`train.standard`); else from a ``classes.json`` next to the dataset; else from ``label_name``
and default templates.
Undecodable images are skipped and counted. Zero-shot also keeps every sample's correctness
(``correct``: packed bits, :func:`unpack_correct`), so two runs can be compared sample by sample
and one run's accuracy gets a bootstrap interval. Each result names its dataset by its file stem
(``cifar10-test`` for ``cifar10/test.parquet``), or by ``NAME=PATH``.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from curate.core import access, storage
from curate.core.errors import InputError
from train import standard
from train.augment import decode_image
from train.probe import linear_probe_accuracy

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_GENERIC_STEMS = {"test", "train", "val", "validation", "data", "eval", "images"}


def dataset_name(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` -> (name, local path); a URL is fetched to a local cache first."""
    name, sep, path = spec.partition("=")
    if sep and name and not os.path.exists(spec) and "://" not in name:
        return name, local_copy(path)
    url = spec
    p = Path(storage.name(url)) if not storage.is_local(url) else Path(spec)
    stem = p.stem if p.suffix == ".parquet" else p.name
    parent = storage.name(storage.parent(url)) if not storage.is_local(url) else p.parent.name
    return (f"{parent}-{stem}" if stem in _GENERIC_STEMS and parent else stem), local_copy(spec)


def local_copy(spec: str) -> Path:
    """An evaluation set named by a URL (a parquet, and the ``classes.json`` beside it if there is one)
    copied once into ``~/.cache/clip-tiers/eval/``; a local path as it is. Sets are small: they are read
    whole anyway, so a copy costs one read."""
    if storage.is_local(spec):
        return storage.local_path(spec)
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip-tiers" / "eval"
    where = cache / hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()
    target = where / storage.name(spec)
    if not target.exists():
        if not storage.isfile(spec):
            access.check_access(spec, write=False)
            raise InputError("no such evaluation set (a parquet file is expected at a URL)", path=spec)
        where.mkdir(parents=True, exist_ok=True)
        classes = storage.join(storage.parent(spec), "classes.json")
        if storage.isfile(classes):
            storage.write_bytes(str(where / "classes.json"), storage.read_bytes(classes))
        storage.write_bytes(str(target), storage.read_bytes(spec))
    return target


@dataclass
class Labelled:
    images: list  # encoded bytes or file paths
    labels: np.ndarray
    classnames: list[str]
    split: np.ndarray | None  # "train" / "test" per row, or None


IMAGE_COLUMNS = ("image", "jpg", "png", "img", "image_bytes")


def _image_column(table, path) -> list:
    cols = table.column_names
    col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    if col is None:
        raise InputError(f"no image column (looked for image, jpg, png, img); columns: {cols}", path=str(path))
    values = table.column(col).to_pylist()
    return [v.get("bytes") if isinstance(v, dict) else v for v in values]


def _subset(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def read_labelled(path: str | os.PathLike, limit: int = 0) -> Labelled:
    p = Path(path)
    cifar = standard.read_cifar(p) if p.is_dir() else None
    if cifar is not None:
        data = Labelled(cifar[0], cifar[1], cifar[2], None)
    elif p.is_dir():
        subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())
        if subdirs and set(subdirs) <= {"train", "test", "val"}:
            parts = [(_folder(p / s), s if s == "train" else "test") for s in subdirs]
            names = sorted({c for (_, _, cs), _ in parts for c in cs})
            imgs, labels, split = [], [], []
            for (im, lab, cs), s in parts:
                imgs += im
                labels += [names.index(cs[i]) for i in lab]
                split += [s] * len(im)
            data = Labelled(imgs, np.array(labels), [n.replace("_", " ") for n in names], np.array(split))
        else:
            im, lab, cs = _folder(p)
            data = Labelled(im, np.array(lab), [c.replace("_", " ") for c in cs], None)
    elif p.is_file():
        try:
            table = pq.read_table(p)
        except Exception as e:
            raise InputError(f"not a readable parquet: {e}", path=str(p)) from None
        images = _image_column(table, p)
        cols = table.column_names
        if "label" in cols:
            labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
            names = {}
            if "label_name" in cols:
                names = dict(zip(labels.tolist(), table.column("label_name").to_pylist(), strict=True))
            classnames = [str(names.get(i, i)) for i in range(int(labels.max()) + 1)]
        elif "label_name" in cols:
            raw = table.column("label_name").to_pylist()
            classnames = sorted(set(raw))
            labels = np.array([classnames.index(x) for x in raw])
        else:
            raise InputError(f"no label or label_name column; columns: {cols}", path=str(p))
        split = np.asarray(table.column("split").to_pylist()) if "split" in cols else None
        data = Labelled(images, labels, classnames, split)
    else:
        raise InputError("no such dataset (an ImageFolder directory or a parquet file)", path=str(p))
    if not len(data.images):
        raise InputError("no images in this dataset", path=str(p))
    keep = _subset(len(data.images), limit)
    data.images = [data.images[i] for i in keep]
    data.labels = data.labels[keep]
    data.split = None if data.split is None else data.split[keep]
    return data


def _folder(p: Path) -> tuple[list, list[int], list[str]]:
    classes = sorted(d.name for d in p.iterdir() if d.is_dir())
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((p / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
                labels.append(i)
    return images, labels, classes


def check_eval_set(path: str | os.PathLike, task: str, classes: str | None = None) -> None:
    """Can ``path`` serve ``task`` ("zeroshot" or "retrieval")? Reads the schema and the label column,
    decodes no image. For zero-shot, the class names must resolve: a ``classes`` file (or one beside
    the data) with one name per class, or a ``label_name`` column. Raises :class:`InputError`."""
    p = Path(path)
    if task == "retrieval" and p.is_dir():
        return  # a Flickr / COCO directory: train.standard.read_captioned names what it lacks
    if task == "zeroshot" and p.is_dir():
        if not any(d.is_dir() for d in p.iterdir()):
            raise InputError("an ImageFolder needs one subdirectory per class; there is none", path=str(p))
        return
    if not p.is_file():
        raise InputError(
            f"no {task} dataset here (a parquet file{' or an ImageFolder' if task == 'zeroshot' else ''})", path=str(p)
        )
    try:
        cols = pq.read_schema(p).names
    except Exception as e:
        raise InputError(f"not a readable parquet: {e}", path=str(p)) from None
    if not any(c in cols for c in IMAGE_COLUMNS):
        raise InputError(f"no image column (looked for {', '.join(IMAGE_COLUMNS)}); columns: {cols}", path=str(p))
    if task == "retrieval":
        if not {"caption", "text", "captions"} & set(cols):
            raise InputError(f"no caption (or text, or captions) column; columns: {cols}", path=str(p))
        return
    if "label" not in cols and "label_name" not in cols:
        raise InputError(f"no label or label_name column; columns: {cols}", path=str(p))
    col = "label" if "label" in cols else "label_name"
    values = pq.read_table(p, columns=[col]).column(col).to_pylist()
    n = (max(values) + 1) if col == "label" else len(set(values))
    names, _ = read_classes(classes, p, n)
    if names is None and "label_name" not in cols:
        raise InputError(
            "integer labels, no label_name column and no classes.json with class names: the prompts would "
            "read 'a photo of a 3.'; give [eval] classes",
            path=str(p),
        )


def read_classes(path: str | os.PathLike | None, dataset: Path, n_classes: int) -> tuple[list[str] | None, list[str]]:
    """Class names and templates from ``path``, else a ``classes.json`` beside the dataset that fits."""
    cand = Path(path) if path else (dataset if dataset.is_dir() else dataset.parent) / "classes.json"
    if not cand.is_file():
        if path:
            raise InputError("no classes file here", path=str(path))
        return None, list(DEFAULT_TEMPLATES)
    try:
        doc = json.loads(cand.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"unreadable classes file: {e}", path=str(cand)) from None
    names = doc.get("classnames")
    if names is not None and len(names) != n_classes:
        if path:
            raise InputError(f"{len(names)} class names for {n_classes} classes", path=str(cand))
        names = None
    return names, list(doc.get("templates") or DEFAULT_TEMPLATES)


@torch.no_grad()
def embed_images(model, preprocess, images: list, batch_size: int, device) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised image features of the decodable images, and the mask of which those were."""
    size = model.visual.preprocess_cfg["size"]
    side = size if isinstance(size, int) else max(size)
    feats, ok = [], np.zeros(len(images), dtype=bool)
    for start in range(0, len(images), batch_size):
        batch = []
        for i in range(start, min(len(images), start + batch_size)):
            item = images[i]
            try:
                data = Path(item).read_bytes() if isinstance(item, Path) else item
                batch.append(preprocess(decode_image(data, side)))
                ok[i] = True
            except Exception:  # undecodable: counted by the caller through ``ok``
                continue
        if batch:
            feats.append(model.encode_image(torch.stack(batch).to(device), normalize=True).float().cpu())
    return (torch.cat(feats) if feats else torch.zeros(0, 0)), ok


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], batch_size: int, device) -> torch.Tensor:
    out = [
        model.encode_text(tokenizer(texts[k : k + batch_size]).to(device), normalize=True).float().cpu()
        for k in range(0, len(texts), batch_size)
    ]
    return torch.cat(out)


def zeroshot(
    model, preprocess, tokenizer, path, classes=None, templates=None, batch_size=256, limit=0, device="cpu", name=None
):
    """Top-1 / top-5 accuracy of prompt-ensembled class embeddings as the classifier. A standard dataset
    ``name`` (:mod:`train.standard`) brings its class names and prompts, unless ``classes`` names a file."""
    data = read_labelled(path, limit)
    names, file_templates = read_classes(classes, Path(path), len(data.classnames))
    std_names, std_templates, used = (None, None, {}) if classes else standard.prompts(name, data.classnames)
    names = std_names or names or data.classnames
    templates = list(templates or std_templates or file_templates)
    feats, ok = embed_images(model, preprocess, data.images, batch_size, device)
    if not ok.any():
        raise InputError("no decodable image in this dataset", path=str(path))
    weights = torch.stack(
        [embed_texts(model, tokenizer, [t.format(c) for t in templates], batch_size, device).mean(0) for c in names]
    )
    weights = torch.nn.functional.normalize(weights, dim=-1)
    labels = torch.as_tensor(data.labels[ok])
    top = (feats @ weights.T).topk(min(5, len(names)), dim=-1).indices
    hit = top == labels[:, None]
    return {
        "correct": pack_correct(hit[:, 0].numpy()),  # per decodable sample, in dataset order: paired tests
        "top1": float(hit[:, 0].float().mean()),
        "top5": float(hit.any(-1).float().mean()),
        "n": int(ok.sum()),
        "skipped": int((~ok).sum()),
        "classes": len(names),
        "chance": 1 / len(names),
        "templates": len(templates),
        **({f"{k}_from": v for k, v in used.items()}),
    }


def pack_correct(correct) -> str:
    """Per-sample correctness as base64 of packed bits: 50,000 samples take 8 KB of ``eval.json``."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool)).tobytes()).decode()


def unpack_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=n).astype(bool)


def retrieval(model, preprocess, tokenizer, path, batch_size=256, limit=0, device="cpu"):
    """Recall@1/5/10 image->text and text->image over images and their captions (one, or several per image:
    see :func:`train.standard.recall`)."""
    images, captions = standard.read_captioned(path, limit)
    feats, ok = embed_images(model, preprocess, images, batch_size, device)
    if not ok.any():
        raise InputError("no decodable image in this dataset", path=str(path))
    kept = [c for c, k in zip(captions, ok, strict=True) if k]
    owner = torch.as_tensor([i for i, cs in enumerate(kept) for _ in cs])
    texts = embed_texts(model, tokenizer, [c for cs in kept for c in cs], batch_size, device)
    return {"n": len(feats), "texts": len(owner), "skipped": int((~ok).sum()), **standard.recall(feats, texts, owner)}


def linear_probe(model, preprocess, path, batch_size=256, limit=0, device="cpu", seed=0):
    """Logistic regression on frozen image features (see :mod:`train.probe`)."""
    data = read_labelled(path, limit)
    feats, ok = embed_images(model, preprocess, data.images, batch_size, device)
    if ok.sum() < 4:
        raise InputError("too few decodable images for a linear probe", path=str(path))
    split = None if data.split is None else data.split[ok]
    res = linear_probe_accuracy(feats.numpy(), data.labels[ok], split=split, seed=seed)
    return {**res, "skipped": int((~ok).sum()), "classes": len(data.classnames)}
