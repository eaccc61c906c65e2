"""The export side of the bundle contract (docs/bundle.md): what `write_bundle` produces."""

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import REPO

from clipcap_export import graphs
from clipcap_export.bundle import FORMAT_VERSION, MANIFEST, Provenance, read_manifest, write_bundle
from clipcap_export.models import Source, build_models

IMAGE_MATMULS = 6 * 2 + 1  # the tiny CLIP: q, k, v, out and the two MLP projections per block; the projection
PROV = Provenance(image_encoder="test", language_model="test", mapper="test", training_data="none")


@pytest.fixture(scope="module")
def tiny():
    return build_models(Source.random("tiny"))


@pytest.fixture(scope="module")
def bundle(tiny, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    write_bundle(tiny, tokenizer, out, PROV)
    return out


def io(path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ({i.name: (i.type, i.shape) for i in s.get_inputs()}, {o.name: (o.type, o.shape) for o in s.get_outputs()})


def test_manifest_describes_the_models(bundle, tiny):
    m = read_manifest(bundle)
    assert m["format_version"] == FORMAT_VERSION
    assert m["image_encoder"] == {"file": "image_encoder.onnx", "embedding_dim": 32, "normalize": False}
    assert m["mapper"] == {"file": "mapper.onnx", "kind": "mlp", "prefix_length": 10}
    lm = m["language_model"]
    assert (lm["width"], lm["layers"], lm["heads"], lm["vocab_size"], lm["max_positions"]) == (32, 2, 2, 50257, 128)
    assert m["tokenizer"] == {"file": "tokenizer.json", "eos_token": 50256, "stop_tokens": [13, 50256],
                              "max_tokens": 67}
    assert m["preprocess"]["size"] == 224 and m["preprocess"]["filter"] == "bicubic"
    te = m["text_encoder"]
    assert (te["file"], te["tokenizer"], te["context_length"], te["embedding_dim"]) == \
        ("text_encoder.onnx", "clip_tokenizer.json", 77, 32)
    assert abs(te["logit_scale"] - tiny.logit_scale) < 1e-6
    checks = m["provenance"]["export_check"]
    assert set(checks) == {"image_encoder", "mapper", "lm", "text_encoder"}
    assert all(0 <= v < 1e-3 for v in checks.values())


def prefix_feeds(prefix: np.ndarray) -> dict[str, np.ndarray]:
    """The tiny model's prefix pass for `prefix` [batch, 10, 32]."""
    batch = prefix.shape[0]
    return graphs.lm_feeds(graphs.lm_input_names(2), prefix, np.zeros((batch, 0), np.int64), [0] * batch,
                           [np.zeros((batch, 2, 0, 16), np.float32)] * 4)


def test_graph_signatures_follow_the_contract(bundle):
    ins, outs = io(bundle / "image_encoder.onnx")
    assert ins == {"pixel_values": ("tensor(float)", ["batch", 3, 224, 224])}
    assert outs == {"image_embeds": ("tensor(float)", ["batch", 32])}
    ins, outs = io(bundle / "mapper.onnx")
    assert ins == {"image_embeds": ("tensor(float)", ["batch", 32])}
    assert outs == {"prefix": ("tensor(float)", ["batch", 10, 32])}
    ins, outs = io(bundle / "lm.onnx")
    assert ins["prefix_embeds"] == ("tensor(float)", ["batch", "prefix_len", 32])
    assert ins["input_ids"] == ("tensor(int64)", ["batch", "ids_len"])
    assert ins["attention_mask"] == ("tensor(int64)", ["batch", "total_len"])
    assert ins["position_ids"] == ("tensor(int64)", ["batch", "new_len"])
    assert outs["logits"] == ("tensor(float)", ["batch", 50257])
    assert outs["hidden_states"] == ("tensor(float)", ["batch", "new_len", 32])
    for i in range(2):
        for kv in ("key", "value"):
            assert ins[f"past_key_values.{i}.{kv}"] == ("tensor(float)", ["batch", 2, "past_len", 16])
            assert outs[f"present.{i}.{kv}"] == ("tensor(float)", ["batch", 2, "total_len", 16])
    assert len(ins) == 4 + 4 and len(outs) == 2 + 4
    ins, outs = io(bundle / "text_encoder.onnx")
    assert ins == {"input_ids": ("tensor(int64)", ["batch", 77])}
    assert outs == {"text_embeds": ("tensor(float)", ["batch", 32])}


def test_opset_and_size(bundle):
    for name in ("image_encoder.onnx", "mapper.onnx", "lm.onnx", "text_encoder.onnx"):
        model = onnx.load(str(bundle / name))
        assert {o.domain: o.version for o in model.opset_import}[""] == graphs.OPSET
    total = sum(p.stat().st_size for p in bundle.iterdir())
    assert total < 15e6, f"tiny bundle is {total / 1e6:.1f} MB"
    # GPT-2's token embedding is stored once, shared by the input lookup and the output projection.
    wte = 50257 * 32 * 4
    assert (bundle / "lm.onnx").stat().st_size < 1.5 * wte


def test_lm_batches_are_independent(bundle, tiny):
    # Beams of different content in one batch give each its own logits (no leakage across the batch axis).
    s = ort.InferenceSession(str(bundle / "lm.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 10, 32, generator=g).numpy()
    feeds = prefix_feeds(prefix)
    both = s.run(["logits"], feeds)[0]
    one = {k: v[1:] for k, v in feeds.items()}
    assert np.abs(s.run(["logits"], one)[0][0] - both[1]).max() < 1e-5


def test_a_wrong_graph_stops_the_export(tiny, tokenizer, tmp_path, monkeypatch):
    forward = graphs.LmGraph.forward

    def off_by_a_little(self, *args):
        logits, *rest = forward(self, *args)
        return (logits + 0.01, *rest)

    monkeypatch.setattr(graphs.LmGraph, "forward", off_by_a_little)
    with pytest.raises(graphs.ExportCheckError, match="lm.onnx logits"):
        write_bundle(tiny, tokenizer, tmp_path / "b", PROV)
    assert not (tmp_path / "b" / MANIFEST).exists()


def test_a_graph_that_ignores_the_padding_stops_the_export(tiny, tokenizer, tmp_path, monkeypatch):
    # Rows of one length pass either way: only the check of a padded batch tells this graph apart.
    forward = graphs.LmGraph.forward

    def sees_padding(self, prefix, ids, mask, positions, *past):
        return forward(self, prefix, ids, torch.ones_like(mask), positions, *past)

    monkeypatch.setattr(graphs.LmGraph, "forward", sees_padding)
    with pytest.raises(graphs.ExportCheckError, match="lm.onnx padded logits"):
        write_bundle(tiny, tokenizer, tmp_path / "b", PROV)


def test_text_encoder_is_optional(tiny, tokenizer, tmp_path):
    write_bundle(tiny, tokenizer, tmp_path / "b", PROV, text_encoder=False)
    assert "text_encoder" not in read_manifest(tmp_path / "b")
    assert not (tmp_path / "b" / "text_encoder.onnx").exists()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_quantised_bundle_keeps_the_contract_and_the_logits(bundle, tiny, tokenizer, tmp_path, precision,
                                                              clipcap_binary, rust_env):
    out = tmp_path / "q"
    write_bundle(tiny, tokenizer, out, PROV, quantize=precision)
    lm = onnx.load(str(out / "lm.onnx"))
    ops = [n.op_type for n in lm.graph.node]
    # Every projection and the head: 4 per block, and the head; int8 as MatMulInteger (which every
    # supported ONNX Runtime runs), int4 as 4-bit MatMulNBits.
    method = {"int8": "MatMulInteger", "int4": "MatMulNBits"}[precision]
    assert ops.count(method) == 4 * 2 + 1 and "Gemm" not in ops
    assert io(out / "lm.onnx") == io(bundle / "lm.onnx")
    q = read_manifest(out)["provenance"]["quantization"]
    assert (q["weights"], q["method"], q["graphs"], q["matmuls"]) == (precision, method, ["lm", "image_encoder"], 9)
    # The image encoder, int8 at either precision: every projection of its blocks, and the last one.
    encoder = [n.op_type for n in onnx.load(str(out / "image_encoder.onnx")).graph.node]
    assert encoder.count("MatMulInteger") == q["image_encoder"]["matmuls"] == IMAGE_MATMULS and "Gemm" not in encoder
    assert io(out / "image_encoder.onnx") == io(bundle / "image_encoder.onnx")
    pixels = torch.randn(1, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(2)).numpy()
    fp32, quantised = (ort.InferenceSession(str(b / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
                       .run(None, {"pixel_values": pixels})[0].ravel() for b in (bundle, out))
    cosine = fp32 @ quantised / np.linalg.norm(fp32) / np.linalg.norm(quantised)
    assert cosine > 0.999, cosine  # measured 0.99969 (full-size encoder: 0.99985)
    # The same prefix pass, in fp32 and quantised: the tiny model's wide random weights are a hard
    # case (measured: mean error 1.5% / 12% of the logits' spread, correlation 0.9998 / 0.988).
    g = torch.Generator().manual_seed(1)
    feeds = prefix_feeds(torch.randn(1, 10, 32, generator=g).numpy())
    fp32, quantised = (ort.InferenceSession(str(b / "lm.onnx"), providers=["CPUExecutionProvider"])
                       .run(["logits"], feeds)[0][0] for b in (bundle, out))
    error, correlation = np.abs(quantised - fp32).mean() / fp32.std(), np.corrcoef(quantised, fp32)[0, 1]
    assert error < {"int8": 0.03, "int4": 0.25}[precision], error
    assert correlation > {"int8": 0.999, "int4": 0.95}[precision], correlation
    # The runtime reads the manifest's new section and captions with the quantised graph.
    image = REPO / "tests" / "fixtures" / "images" / "coffee.png"
    caption = subprocess.run([str(clipcap_binary), "caption", "--json", "--bundle", str(out), str(image)],
                             capture_output=True, text=True, env=rust_env)
    assert caption.returncode == 0, caption.stderr
    assert len(json.loads(caption.stdout)["token_ids"]) > 0


def test_an_fp16_bundle_halves_every_graph_and_keeps_the_contract(bundle, tiny, tokenizer, tmp_path, clipcap_binary,
                                                                  rust_env):
    out = tmp_path / "fp16"
    write_bundle(tiny, tokenizer, out, PROV, quantize="fp16")
    q = read_manifest(out)["provenance"]["quantization"]
    assert (q["weights"], q["method"]) == ("fp16", "float16")
    assert sorted(q["graphs"]) == ["image_encoder", "lm", "mapper", "text_encoder"]
    for name in q["graphs"]:
        graph = onnx.load(str(out / f"{name}.onnx")).graph
        assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.dims], name
        assert io(out / f"{name}.onnx") == io(bundle / f"{name}.onnx"), name
    # The prefix pass in fp32 and in fp16 (measured: mean error 0.05% of the logits' spread).
    g = torch.Generator().manual_seed(1)
    feeds = prefix_feeds(torch.randn(1, 10, 32, generator=g).numpy())
    fp32, half = (ort.InferenceSession(str(b / "lm.onnx"), providers=["CPUExecutionProvider"])
                  .run(["logits"], feeds)[0][0] for b in (bundle, out))
    error = np.abs(half - fp32).mean() / fp32.std()
    assert error < 0.01, error
    image = REPO / "tests" / "fixtures" / "images" / "coffee.png"
    caption = subprocess.run([str(clipcap_binary), "caption", "--json", "--bundle", str(out), str(image)],
                             capture_output=True, text=True, env=rust_env)
    assert caption.returncode == 0, caption.stderr
    assert len(json.loads(caption.stdout)["token_ids"]) > 0


def test_an_existing_bundle_is_quantised_into_a_copy_once(bundle, tmp_path, capsys):
    from clipcap_export.cli import main

    out = tmp_path / "int8"
    main(["quantize", str(bundle), "--precision", "int8", "--out", str(out)])
    assert read_manifest(out)["provenance"]["quantization"]["weights"] == "int8"
    assert "quantization" not in read_manifest(bundle)["provenance"], "the fp32 bundle is kept"
    for source, target, why in [(out, tmp_path / "again", "already quantised (int8)"),
                                (bundle, bundle, "the copy must go elsewhere than the bundle")]:
        with pytest.raises(SystemExit):
            main(["quantize", str(source), "--precision", "int4", "--out", str(target)])
        assert why in capsys.readouterr().err
        assert not (tmp_path / "again").exists()


def test_every_named_file_is_pinned_and_rewriting_the_manifest_drops_its_signature(bundle, tmp_path, clipcap_binary):
    import hashlib
    import shutil

    from clipcap_export.bundle import SIGNATURE
    from clipcap_export.cli import main

    m = read_manifest(bundle)
    named = {m[s]["file"] for s in ("image_encoder", "mapper", "language_model", "tokenizer")}
    named |= {m["text_encoder"]["file"], m["text_encoder"]["tokenizer"]}
    assert set(m["files"]) == named
    for name, pin in m["files"].items():
        data = (bundle / name).read_bytes()
        assert pin == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # The runtime reads the same pins: `clipcap verify` (without keys) checks the files against them.
    ok = subprocess.run([clipcap_binary, "verify", str(bundle)], capture_output=True, text=True)
    assert ok.returncode == 0 and "equal to their pins" in ok.stdout, ok.stdout + ok.stderr

    # A quantised copy pins its own files, and leaves out the original's signature.
    (bundle / SIGNATURE).write_text("a signature of the fp32 manifest\n")
    try:
        main(["quantize", str(bundle), "--precision", "int4", "--out", str(tmp_path / "int4")])
    finally:
        (bundle / SIGNATURE).unlink()
    q = read_manifest(tmp_path / "int4")
    assert q["files"]["lm.onnx"] != m["files"]["lm.onnx"]
    assert q["files"]["lm.onnx"]["sha256"] == hashlib.sha256((tmp_path / "int4/lm.onnx").read_bytes()).hexdigest()
    assert not (tmp_path / "int4" / SIGNATURE).exists()

    # `pin` brings the pins up to date with the files, and removes a signature that no longer holds.
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / SIGNATURE).write_text("stale\n")
    with (copy / "tokenizer.json").open("a") as f:
        f.write(" ")
    bad = subprocess.run([clipcap_binary, "verify", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 2 and "tokenizer.json" in bad.stderr and "the manifest pins" in bad.stderr, bad.stderr
    main(["pin", str(copy)])
    assert not (copy / SIGNATURE).exists()
    assert subprocess.run([clipcap_binary, "verify", str(copy)], capture_output=True).returncode == 0
