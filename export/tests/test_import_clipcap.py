"""`clipcap-export import-clipcap`: a checkpoint in the ClipCap release's format becomes a bundle that
the Rust runtime captions exactly as PyTorch does with the same weights."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import FIXTURES

from clipcap_export import graphs
from clipcap_export.bundle import read_manifest
from clipcap_export.cli import main
from clipcap_export.models import Source, build_models

IMAGES = [FIXTURES / "images" / n for n in ("astronaut.png", "rocket.jpg", "camera.png")]


def release_state_dict(seed: int) -> dict:
    """A state dict shaped like the release's coco_weights.pt (MLP mapper + fine-tuned GPT-2, K = 10),
    at the tiny width, including the causal-mask buffers old transformers versions saved."""
    models = build_models(Source.random("tiny", seed))
    state = {f"clip_project.{k}": v for k, v in models.clipcap.clip_project.state_dict().items()}
    state |= {f"gpt.{k}": v for k, v in models.gpt.state_dict().items()}
    n = models.gpt.config.n_positions
    for i in range(models.gpt.config.n_layer):
        state[f"gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "coco_weights.pt"
    torch.save(release_state_dict(seed=7), path)
    return path


def source_args(gpt2_files):
    return ["--random-init", "tiny", "--tokenizer-dir", str(gpt2_files)]


@pytest.fixture(scope="module")
def imported(checkpoint, gpt2_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    main(["import-clipcap", str(checkpoint), *source_args(gpt2_files), "--out", str(out)])
    return out


def test_bundle_carries_the_checkpoint_weights(imported, checkpoint):
    m = read_manifest(imported)
    assert m["mapper"]["prefix_length"] == 10
    assert m["provenance"]["mapper"] == str(checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    mapper = ort.InferenceSession(str(imported / "mapper.onnx"), providers=["CPUExecutionProvider"])
    got = mapper.run(None, {"image_embeds": embeds.numpy()})[0]
    h = torch.tanh(embeds @ state["clip_project.model.0.weight"].T + state["clip_project.model.0.bias"])
    want = (h @ state["clip_project.model.2.weight"].T + state["clip_project.model.2.bias"]).view(2, 10, 32)
    assert np.abs(got - want.numpy()).max() < 1e-5
    # The LM is the checkpoint's GPT-2, not the random one of --random-init: its token embedding matches.
    lm = ort.InferenceSession(str(imported / "lm.onnx"), providers=["CPUExecutionProvider"])
    feeds = graphs.lm_feeds(graphs.lm_input_names(2), np.zeros((1, 1, 32), np.float32), np.zeros((1, 0), np.int64),
                            [0], [np.zeros((1, 2, 0, 16), np.float32)] * 4)
    hidden = lm.run(["hidden_states"], feeds)[0][0, 0]
    wte = state["gpt.transformer.wte.weight"]
    logits = lm.run(["logits"], feeds)[0][0]
    assert np.abs(logits - (wte @ torch.from_numpy(hidden)).numpy()).max() < 1e-4


def test_rust_captions_the_imported_bundle_like_pytorch(imported, checkpoint, gpt2_files, clipcap_binary, rust_env):
    ref = subprocess.run([sys.executable, "-m", "clipcap_export.cli", "caption", "--json",
                          "--checkpoint", str(checkpoint), *source_args(gpt2_files), *map(str, IMAGES)],
                         check=True, capture_output=True, text=True)
    rust = subprocess.run([str(clipcap_binary), "caption", "--json", "--decoder", "greedy", "--bundle", str(imported),
                           *map(str, IMAGES)], check=True, capture_output=True, text=True, env=rust_env)
    want = [json.loads(line) for line in ref.stdout.splitlines()]
    got = [json.loads(line) for line in rust.stdout.splitlines()]
    assert len(got) == len(want) == len(IMAGES)
    for g, w in zip(got, want, strict=True):
        assert g["token_ids"] == w["token_ids"], g["image"]
        assert g["caption"] == w["caption"]


@pytest.mark.parametrize("damage, message", [
    (lambda s: {k: v for k, v in s.items() if not k.startswith("gpt.")}, "no gpt.* weights"),
    (lambda s: s | {"clip_project.model.0.weight": torch.zeros(160, 64)}, "expects 64-d CLIP embeddings"),
    (lambda s: s | {"gpt.transformer.wte.weight": torch.zeros(50257, 16)}, "gpt.transformer.wte.weight has shape"),
    (lambda s: s | {"decoder.weight": torch.zeros(1)}, "unexpected keys"),
    (lambda s: {k: v for k, v in s.items() if k != "gpt.transformer.ln_f.bias"}, "missing keys"),
])
def test_refuses_damaged_checkpoints(damage, message, gpt2_files, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save(damage(release_state_dict(seed=7)), path)
    with pytest.raises(SystemExit) as exit_:
        main(["import-clipcap", str(path), *source_args(gpt2_files), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err
    assert not (tmp_path / "out" / "manifest.toml").exists()


def test_refuses_a_file_that_is_not_a_checkpoint(gpt2_files, tmp_path, capsys):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(SystemExit):
        main(["import-clipcap", str(path), *source_args(gpt2_files), "--out", str(tmp_path / "out")])
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
