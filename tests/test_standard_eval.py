"""Standard evaluation sets: clip_benchmark's class names and prompt ensembles picked by dataset name, the
layouts users hold them in (torchvision CIFAR, ImageNet folders, Flickr, COCO), multi-caption retrieval."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate.core.errors import InputError
from synthweb.shards import shards_from_synthweb
from train import api, standard
from train.config import EvalConfig, make_config
from train.evaluation import read_labelled


def cb_templates(name: str) -> list[str]:
    from importlib import resources

    root = resources.files("clip_benchmark.datasets")
    return json.loads((root / "en_zeroshot_classification_templates.json").read_text())[name]


def test_names_pick_clip_benchmark_prompts_and_imagenet_names():
    names, templates, used = standard.prompts("cifar10", ["airplane", "cat"])
    assert names is None and len(templates) == 18 == len(cb_templates("cifar10"))
    assert templates[0] == cb_templates("cifar10")[0].replace("{c}", "{}")
    assert used == {"classnames": "dataset", "templates": "clip_benchmark:cifar10"}
    names, templates, used = standard.prompts("ImageNet", [str(i) for i in range(1000)])
    assert names[:2] == ["tench", "goldfish"] and len(names) == 1000 and len(templates) == 80
    names, _, _ = standard.prompts("in1k", ["0", "2"])  # a label column with two of the classes present
    assert names == ["tench", "great white shark"]
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert standard.prompts("imagenet1k", wnids)[0][999] == "toilet paper"
    with pytest.raises(InputError, match="needs all 1000"):
        standard.prompts("imagenet1k", wnids[:3])
    assert standard.prompts("my-own-set", ["a"]) == (None, None, {})


def test_torchvision_cifar_layout_reads_without_running_pickled_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (4, 3072), dtype=np.uint8)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 1, 0, 3]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": ["airplane", "automobile", "bird", "cat"]}, f)
    d = read_labelled(tmp_path)
    assert d.labels.tolist() == [3, 1, 0, 3] and d.classnames == ["airplane", "automobile", "bird", "cat"]
    img = np.asarray(Image.open(io.BytesIO(d.images[0])))
    assert (img == data[0].reshape(3, 32, 32).transpose(1, 2, 0)).all()  # lossless

    class Evil:
        def __reduce__(self):
            return (eval, ("1",))  # not print: a process that started Ray has its own print

    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": Evil()}, f)
    with pytest.raises(InputError, match="refusing to load builtins.eval"):
        read_labelled(tmp_path)


def test_multi_caption_recall_is_the_clip_papers_and_equals_one_to_one():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[0.2, 1.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    r = standard.recall(img, txt, torch.tensor([0, 0, 1]))
    assert r["i2t_r1"] == 1.0  # image 0's best text is one of its own (the second)
    assert r["t2i_r1"] == pytest.approx(2 / 3)  # text 0 points at image 1
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    r = standard.recall(a, b, torch.arange(20))
    sim, truth = a @ b.T, torch.arange(20)
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        rank = (s > s[truth, truth][:, None]).sum(-1)
        assert r[f"{name}_r5"] == float((rank < 5).float().mean())


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_flickr_and_coco_layouts_and_caption_lists(tmp_path):
    flickr = tmp_path / "flickr"
    flickr.mkdir()
    for n in ("a", "b"):
        (flickr / f"{n}.jpg").write_bytes(_jpeg("red"))
    (flickr / "flickr8k_test_karpathy.txt").write_text(
        "image,caption\na.jpg,one, with a comma\na.jpg,two\nb.jpg,three\n"
    )
    images, caps = standard.read_captioned(flickr)
    assert [p.name for p in images] == ["a.jpg", "b.jpg"] and caps == [["one, with a comma", "two"], ["three"]]
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "val2017" / "x.jpg").write_bytes(_jpeg("blue"))
    doc = {"images": [{"id": 7, "file_name": "x.jpg"}], "annotations": [{"image_id": 7, "caption": " a cat "}] * 2}
    (coco / "captions_val2017.json").write_text(json.dumps(doc))
    images, caps = standard.read_captioned(coco)
    assert images == [coco / "val2017" / "x.jpg"] and caps == [["a cat", "a cat"]]
    pq.write_table(pa.table({"image": [_jpeg("red")], "captions": [["x", "y", "z"]]}), tmp_path / "c.parquet")
    assert standard.read_captioned(tmp_path / "c.parquet")[1] == [["x", "y", "z"]]
    with pytest.raises(InputError, match="no retrieval layout"):
        standard.read_captioned(tmp_path / "flickr" / ".." / "coco" / "val2017")


def test_eval_by_name_keeps_the_name_and_says_where_prompts_came_from(small_web, tmp_path):
    tiers = tmp_path / "t"
    shards_from_synthweb(small_web, tiers, {"all": 1.0}, shard_size=100)
    run = tmp_path / "run"
    cfg = make_config({"model": "ct-vit-micro-32", "batch_size": 32, "threads": 1, "workers": 0, "samples_seen": 64})
    api.train(cfg, tiers, "all", run, progress=False)
    zs = small_web / "eval" / "zeroshot.parquet"
    pairs = pq.read_table(small_web / "eval" / "retrieval.parquet").slice(0, 20)
    multi = pa.table(
        {"image": pairs.column("image"), "captions": [[c, c.upper()] for c in pairs["caption"].to_pylist()]}
    )
    pq.write_table(multi, tmp_path / "multi.parquet")
    report = api.evaluate(
        run, EvalConfig(zeroshot=(f"cifar10={zs}", str(zs)), retrieval=(str(tmp_path / "multi.parquet"),))
    )
    std, own = report.get("zeroshot", "cifar10"), report.get("zeroshot", "zeroshot")
    assert std["templates_from"] == "clip_benchmark:cifar10" and std["classnames_from"] == "dataset"
    assert "templates_from" not in own and std["n"] == own["n"]  # the same images, other prompts
    ret = report.get("retrieval", "multi")
    assert ret["n"] == 20 and ret["texts"] == 40 and 0 <= ret["i2t_r1"] <= ret["i2t_r5"] <= 1
