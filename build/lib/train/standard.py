"""Standard evaluation sets by name: class names and OpenAI's prompt ensembles as clip_benchmark ships them,
the layouts users have them in, and retrieval with several captions per image.

``tiers eval RUN --zeroshot cifar10=DIR``: a dataset named like one of clip_benchmark's (``cifar10``,
``cifar100``, ``imagenet1k``, ``food101``, ``cars``, ...; ``imagenet`` / ``in1k`` are ``imagenet1k``)
is evaluated with clip_benchmark's English prompt templates for it (18 for CIFAR, OpenAI's 80 for
ImageNet), and with its class names where it ships a list (ImageNet-1k: OpenAI's curated 1,000) and the
data's labels are standard indices (an integer ``label`` column without names, or ImageNet's ``nXXXXXXXX``
folders). Elsewhere the data's own class names stay, as clip_benchmark takes CIFAR's from the dataset
itself. The result records which names and templates were used. An explicit ``--classes`` file wins.

The lists are read from the two JSON files clip_benchmark ships (``en_classnames.json``,
``en_zeroshot_classification_templates.json``), the files its ``build_dataset`` reads; importing
``clip_benchmark.datasets.builder`` itself takes ~14 s here (it imports every dataset module), so we
read the files, not the module, and copy nothing.

Layouts read besides ImageFolder and parquet (:mod:`train.evaluation`): torchvision's CIFAR directories
(``cifar-10-batches-py/``, ``cifar-100-python/``: the test split, unpickled with numpy arrays allowed and
nothing else, since a pickle can run code); for retrieval, Flickr8k/30k as
clip_benchmark has them (images + ``*_test_karpathy.txt``), COCO (images + a captions JSON with
``images`` and ``annotations``), and a parquet whose ``captions`` column holds a list per image.
Retrieval with several captions per image is scored the CLIP way: text->image recall@k per caption,
image->text counts an image found when any of its captions is in the top k.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from curate.core.errors import InputError

ALIASES = {"imagenet": "imagenet1k", "imagenet-1k": "imagenet1k", "in1k": "imagenet1k", "imagenet_1k": "imagenet1k"}
_WNID = re.compile(r"^n\d{8}$")


@functools.cache
def _lists() -> tuple[dict, dict]:
    from importlib import resources

    try:
        root = resources.files("clip_benchmark.datasets")
        names = json.loads((root / "en_classnames.json").read_text())
        templates = json.loads((root / "en_zeroshot_classification_templates.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise InputError(f"standard evaluation sets need clip-benchmark (pip install clip-benchmark): {e}") from None
    return names, templates


def key(name: str | None) -> str | None:
    """clip_benchmark's name for dataset ``name``, or None when it is not one of its datasets."""
    if not name:
        return None
    k = ALIASES.get(name.lower(), name.lower())
    return k if k in _lists()[1] else None


def prompts(name: str | None, classnames: list[str]) -> tuple[list[str] | None, list[str] | None, dict]:
    """``(class names or None, templates or None, what was used)`` for a dataset called ``name`` whose
    own class names are ``classnames`` (None: keep what the caller has)."""
    k = key(name)
    if k is None:
        return None, None, {}
    names_by_key, templates_by_key = _lists()
    templates = [t.replace("{c}", "{}") for t in templates_by_key[k]]
    standard = names_by_key.get(k)
    indices = all(c.isdigit() for c in classnames) or all(_WNID.match(c) for c in classnames)
    if standard and indices and len(classnames) <= len(standard):
        if all(c.isdigit() for c in classnames):
            names = [standard[int(c)] for c in classnames]
        else:  # wnid folders: the standard list is in sorted-wnid order, so all of them must be there
            if len(classnames) != len(standard):
                raise InputError(f"{k}: {len(classnames)} class folders; the standard order needs all {len(standard)}")
            names = list(standard)
        return names, templates, {"classnames": f"clip_benchmark:{k}", "templates": f"clip_benchmark:{k}"}
    return None, templates, {"classnames": "dataset", "templates": f"clip_benchmark:{k}"}


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python batches are pickles: let them build numpy arrays and nothing else (no code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            doc = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InputError(f"unreadable CIFAR batch: {e}", path=str(path)) from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in doc.items()}


# torchvision's CIFAR layouts: (folder, test batch, meta file, labels key, names key)
_CIFAR = (("cifar-10-batches-py", "test_batch", "batches.meta", "labels", "label_names"),
          ("cifar-100-python", "test", "meta", "fine_labels", "fine_label_names"))  # fmt: skip


def read_cifar(path: Path):
    """``(PNG images, labels, class names)`` of the CIFAR test split in torchvision's layout under ``path``
    (the python batches CIFAR ships), or None when ``path`` holds none."""
    from PIL import Image

    for folder, batch, meta, labels_key, names_key in _CIFAR:
        root = path / folder
        if not root.is_dir():
            continue
        doc, names = _unpickle(root / batch), _unpickle(root / meta)[names_key]
        pixels = np.asarray(doc["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        images = []
        for arr in pixels:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")  # lossless: the pixels CIFAR holds
            images.append(buf.getvalue())
        return images, np.asarray(doc[labels_key], dtype=np.int64), [str(n) for n in names]
    return None


def read_captioned(path: str | os.PathLike, limit: int = 0) -> tuple[list, list[list[str]]]:
    """``(images, captions per image)`` from a parquet (``caption``/``text``, or a ``captions`` list), a
    Flickr directory (images + ``*_karpathy.txt``) or a COCO directory (images + captions JSON)."""
    p = Path(path)
    if p.is_dir():
        images, captions = _read_dir(p)
    else:
        try:
            table = pq.read_table(p)
        except Exception as e:
            raise InputError(f"not a readable parquet: {e}", path=str(p)) from None
        cols = table.column_names
        col = next((c for c in ("captions", "caption", "text") if c in cols), None)
        img = next((c for c in ("image", "jpg", "png", "img", "image_bytes") if c in cols), None)
        if col is None or img is None:
            raise InputError(f"need image and caption (or captions, text) columns; columns: {cols}", path=str(p))
        images = [v.get("bytes") if isinstance(v, dict) else v for v in table.column(img).to_pylist()]
        values = table.column(col).to_pylist()
        captions = [[c or "" for c in v] if isinstance(v, list) else [v or ""] for v in values]
    if limit and limit < len(images):
        keep = np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False))
        images, captions = [images[i] for i in keep], [captions[i] for i in keep]
    return images, captions


def _read_dir(p: Path) -> tuple[list, list[list[str]]]:
    karpathy = sorted(p.glob("*_test_karpathy.txt")) or sorted(p.glob("*_karpathy.txt"))
    if karpathy:
        from clip_benchmark.datasets.flickr import Flickr  # its reader; this module imports no dataset builder

        ds = Flickr(root=str(p), ann_file=str(karpathy[0]))
        images_dir = p / "Images" if (p / "Images").is_dir() else p
        return [images_dir / img for img, _ in ds.data], [list(c) for _, c in ds.data]
    for ann in sorted(p.glob("*.json")) + sorted(p.glob("annotations/captions_*.json")):
        doc = json.loads(ann.read_text())
        if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
            by_id: dict[int, list[str]] = {}
            for a in doc["annotations"]:
                by_id.setdefault(a["image_id"], []).append(a["caption"].strip())
            folder = next((d for d in (p / "images", p / "val2017", p) if d.is_dir()), p)
            imgs = [im for im in doc["images"] if by_id.get(im["id"])]
            return [folder / im["file_name"] for im in imgs], [by_id[im["id"]] for im in imgs]
    raise InputError(
        "no retrieval layout here (a Flickr *_karpathy.txt, or a COCO captions JSON with images and annotations)",
        path=str(p),
    )


def recall(image_feats: torch.Tensor, text_feats: torch.Tensor, owner: torch.Tensor) -> dict:
    """Recall@1/5/10 both ways; ``owner[j]`` is the image of text ``j`` (several texts may share one)."""
    sim = image_feats @ text_feats.T  # images x texts
    out = {}
    # text -> image: the rank of the text's own image among all images
    t2i_rank = (sim.T > sim.T.gather(1, owner[:, None])).sum(-1)
    # image -> text: the best rank among the image's own texts
    own = torch.zeros_like(sim, dtype=torch.bool)
    own[owner, torch.arange(len(owner))] = True
    best_own = sim.masked_fill(~own, float("-inf")).max(-1).values
    i2t_rank = (sim > best_own[:, None]).sum(-1)
    for name, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float((rank < k).float().mean())
    out["mean_r1"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
    return out
