"""`clipcap-export upgrade`: a bundle of format 1 (tests/fixtures/format-1/lm.onnx, the tiny bundle's
language model as format 1 wrote it) brought to format 2 in place, computing what the exporter's own
format-2 graph computes, on padded batches too."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import tomli_w
from conftest import REPO

from clipcap_export import graphs
from clipcap_export.bundle import FORMAT_VERSION, read_manifest
from clipcap_export.cli import main
from clipcap_export.upgrade import UpgradeError, upgrade_bundle

TINY = REPO / "tests" / "fixtures" / "tiny-bundle"


def format_1(dest):
    """The tiny bundle with its format-1 language model and manifest."""
    shutil.copytree(TINY, dest)
    shutil.copy(REPO / "tests" / "fixtures" / "format-1" / "lm.onnx", dest / "lm.onnx")
    manifest = read_manifest(dest)
    manifest["format_version"] = 1
    (dest / "manifest.toml").write_text(tomli_w.dumps(manifest), encoding="utf-8")
    return dest


def padded_feeds():
    """Three rows with 10, 12 and 15 positions of past, padded on the left, one token each."""
    rng = np.random.default_rng(0)
    lengths = [10, 12, 15]
    past = [rng.standard_normal((3, 2, 15, 16), dtype=np.float32) for _ in range(4)]
    for p in past:
        for row, n in enumerate(lengths):
            p[row, :, :15 - n] = 0
    ids = rng.integers(0, 50257, (3, 1))
    return graphs.lm_feeds(graphs.lm_input_names(2), np.zeros((3, 0, 32), np.float32), ids, lengths, past)


def test_a_format_1_bundle_is_upgraded_in_place(tmp_path, capsys):
    bundle = format_1(tmp_path / "b")
    main(["upgrade", str(bundle)])
    assert "upgraded to format 2" in capsys.readouterr().out
    assert read_manifest(bundle)["format_version"] == FORMAT_VERSION == 2
    run = {b: ort.InferenceSession(str(b / "lm.onnx"), providers=["CPUExecutionProvider"]) for b in (bundle, TINY)}
    names = [i.name for i in run[TINY].get_inputs()]
    assert [i.name for i in run[bundle].get_inputs()] == names
    feeds = padded_feeds()
    upgraded, exported = (run[b].run(None, feeds) for b in (bundle, TINY))
    for name, a, b in zip(["logits", "hidden_states"], upgraded, exported, strict=False):
        assert np.abs(a - b).max() < 1e-4, name
    # Already current: nothing to do.
    main(["upgrade", str(bundle)])
    assert "already format 2" in capsys.readouterr().out


def test_a_graph_clipcap_export_did_not_write_is_refused(tmp_path):
    bundle = format_1(tmp_path / "b")
    shutil.copy(bundle / "mapper.onnx", bundle / "lm.onnx")
    with pytest.raises(UpgradeError, match="not a format-1 lm.onnx written by clipcap-export"):
        upgrade_bundle(bundle)
    assert read_manifest(bundle)["format_version"] == 1
