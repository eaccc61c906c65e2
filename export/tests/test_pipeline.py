"""The flows: `run` (train, evaluate, export with the scores, gate), `sweep` (the prefix-length table),
and `embed` (cached, resumable CLIP embeddings)."""

import json
from pathlib import Path

import numpy as np
import pytest

from clipcap_export import embed as embed_module
from clipcap_export.bundle import read_manifest
from clipcap_export.cli import main
from clipcap_export.data import EmbeddingSet, load_karpathy, write_index
from clipcap_export.world import generate


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """12 train and 4 test images of the demo world, with random 32-d embeddings (tiny CLIP's size)."""
    world = tmp_path_factory.mktemp("world")
    records = load_karpathy(generate(world, 12, 0, 4, seed=1), world)
    folder = tmp_path_factory.mktemp("emb")
    write_index(folder, records, "random:tiny", 224)
    np.save(folder / "embeddings.npy", np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32))
    return folder


def train_args(small_set, gpt2_files):
    return ["--embeddings", str(small_set), "--gpt2", "random:tiny", "--tokenizer-dir", str(gpt2_files),
            "--batch-size", "8", "--epochs", "1", "--lr", "1e-3", "--warmup", "1", "--max-tokens", "20"]


def test_run_exports_a_bundle_with_its_scores(small_set, gpt2_files, tmp_path):
    main(["run", *train_args(small_set, gpt2_files), "--out", str(tmp_path / "run"), "--bundle", str(tmp_path / "b")])
    m = read_manifest(tmp_path / "b")
    scores = m["provenance"]["evaluation"]["scores"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert abs(scores["bleu4"] - summary["scores"]["BLEU-4"]) < 1e-4
    assert {"bleu1", "bleu4", "meteor", "rougel", "cider"} <= set(scores)
    assert m["provenance"]["training"]["epochs"] == 1 and m["provenance"]["training"]["mapper"] == "mlp"
    assert "test split, 4 images" in m["provenance"]["evaluation"]["dataset"]
    assert (tmp_path / "run" / "evaluation" / "report.md").read_text().startswith("# Caption evaluation")


def test_bleu_gate_stops_the_export(small_set, gpt2_files, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", *train_args(small_set, gpt2_files), "--out", str(tmp_path / "run"), "--bundle",
              str(tmp_path / "b"), "--min-bleu4", "0.99"])
    assert e.value.code == 2 and "below --min-bleu4 0.99; not exporting" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_sweep_writes_the_comparison(small_set, gpt2_files, tmp_path):
    main(["sweep", *train_args(small_set, gpt2_files), "--prefix-lengths", "1,4", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["prefix_length"] for r in rows] == [1, 4]
    assert rows[0]["trainable_parameters"] < rows[1]["trainable_parameters"]
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("| prefix length | BLEU-1 |") and "\n| 4 |" in table
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_embed_resumes_after_an_interruption(tmp_path, monkeypatch):
    world = tmp_path / "world"
    records = load_karpathy(generate(world, 5, 0, 0, seed=2), world)
    source = embed_module.Source.random("tiny")
    monkeypatch.setattr(embed_module, "CHUNK", 2)
    done = embed_module.embed(records, source, tmp_path / "straight", workers=0)
    calls = []
    real = embed_module.DataLoader

    def failing_loader(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed_module, "DataLoader", failing_loader)
    with pytest.raises(KeyboardInterrupt):
        embed_module.embed(records, source, tmp_path / "resumed", workers=0)
    assert len(list((tmp_path / "resumed" / "chunks").glob("*.npy"))) == 1
    monkeypatch.setattr(embed_module, "DataLoader", real)
    resumed = embed_module.embed(records, source, tmp_path / "resumed", workers=0)
    assert np.array_equal(np.asarray(done.embeddings), np.asarray(resumed.embeddings))
    assert EmbeddingSet(tmp_path / "resumed").split("train") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="holds another data set"):
        embed_module.embed(records[:3], source, tmp_path / "resumed", workers=0)


def test_coco_format_captions_are_read_and_split(tmp_path):
    from clipcap_export.data import load_coco_captions

    data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(200)] + [{"id": 999, "file_name": "x.jpg"}],
            "annotations": [{"image_id": i, "caption": f"  A dog   number {i}"} for i in range(200)]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    records = load_coco_captions(tmp_path / "c.json", tmp_path, val_fraction=0.1, test_fraction=0.2)
    assert len(records) == 200, "images without captions are left out"
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert 10 <= counts["val"] <= 30 and 25 <= counts["test"] <= 55 and counts["train"] > 120, counts
    assert records[5].captions == ["A dog number 5."] and records[5].path == tmp_path / "5.jpg"
