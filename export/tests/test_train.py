"""Training: the loss scores exactly the caption tokens, several processes (DDP, gloo on CPU) compute
what one process computes, and a resumed run continues where an interrupted one stopped."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcap_export.data import EmbeddingSet, Record, write_index
from clipcap_export.models import Source, build_models, load_checkpoint
from clipcap_export.train import CaptionLoss, TrainConfig, collate, train

CAPTIONS = ["a red circle on a blue background.", "wow! two squares!",
            "three green triangles against a white background.",
            "a picture of a yellow square at the top on a black background.", "one!"]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    """8 images with 5 captions each and random 32-d embeddings (the tiny CLIP's size)."""
    folder = tmp_path_factory.mktemp("emb")
    records = [Record(i, Path(f"/nonexistent/{i}.png"), "train", [f"{c} {i}" for c in CAPTIONS]) for i in range(8)]
    write_index(folder, records, "random:tiny", 224)
    np.save(folder / "embeddings.npy", np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32))
    return folder


def test_loss_scores_caption_tokens_only_and_keeps_exclamation_marks(tokenizer):
    models = build_models(Source.random("tiny"))
    loss = CaptionLoss(models)
    ids = [tokenizer.encode(c).ids for c in ("wow! two squares!", "a red circle.")]
    assert 0 in ids[0], "GPT-2's '!' is token 0, the id the original implementation padded with"
    embeds = torch.randn(2, 32)
    batch = collate([(embeds[i], torch.tensor(t)) for i, t in enumerate(ids)])
    ce, n = loss(*batch)
    assert int(n) == sum(len(t) for t in ids), "every real token, '!' included, is scored; padding is not"
    # Each caption alone gives the same sum: padding changes neither attention nor loss.
    alone = sum(loss(*collate([(embeds[i], torch.tensor(t))]))[0].item() for i, t in enumerate(ids))
    assert abs(float(ce) - alone) < 1e-3 * alone


def test_loss_and_gradients_equal_pytorchs_cross_entropy_over_the_lm_head():
    """The chunked vocabulary-wide loss (train.py) against the plain one it replaces: 150 tokens, so
    several chunks and a partial last one; the head is tied to the token embeddings."""
    models = build_models(Source.random("tiny"))
    gpt = models.gpt
    tokens = torch.randint(0, gpt.config.vocab_size, (10, 15), generator=torch.Generator().manual_seed(0))
    batch = collate([(torch.randn(32), t) for t in tokens])

    def loss_and_gradients(plain: bool):
        gpt.zero_grad(set_to_none=True)
        models.clipcap.clip_project.zero_grad(set_to_none=True)
        if plain:
            embeds, ids, mask = batch
            prefix = models.clipcap.prefix(embeds)
            k = prefix.shape[1]
            hidden = gpt.transformer(inputs_embeds=torch.cat([prefix, gpt.transformer.wte(ids)], 1)).last_hidden_state
            ce = torch.nn.functional.cross_entropy(gpt.lm_head(hidden[:, k - 1:-1].reshape(-1, hidden.shape[-1])),
                                                   ids.reshape(-1), reduction="sum")
        else:
            ce, _ = CaptionLoss(models)(*batch)
        ce.backward()
        return ce.item(), {n: p.grad.clone() for n, p in models.clipcap.named_parameters() if p.grad is not None}

    plain, chunked = loss_and_gradients(True), loss_and_gradients(False)
    assert abs(chunked[0] - plain[0]) < 1e-5 * plain[0]
    assert chunked[1].keys() == plain[1].keys() and "gpt.transformer.wte.weight" in plain[1]
    for name, grad in plain[1].items():
        # float32 sums in another order: differences of a millionth of the gradient's largest element
        torch.testing.assert_close(chunked[1][name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)


def _train_args(embeddings, gpt2_files, out, extra=()):
    return ["train", "--embeddings", str(embeddings), "--gpt2", "random:tiny", "--tokenizer-dir", str(gpt2_files),
            "--out", str(out), "--batch-size", "8", "--epochs", "1", "--no-shuffle", "--dropout", "0",
            "--lr", "1e-3", "--warmup", "0", *extra]


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def _torchrun(args: list[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nnodes=1", "--nproc_per_node=2", f"--master_port={port}", *args], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_two_processes_compute_the_gradient_of_one(tmp_path):
    import ddp_gradients

    _torchrun([str(Path(ddp_gradients.__file__)), str(tmp_path / "grads.pt")])
    two = torch.load(tmp_path / "grads.pt", weights_only=True)
    one = ddp_gradients.gradients(ddp_gradients.batch(), world=1)
    assert one.keys() == two.keys()
    scale = max(float(g.abs().max()) for g in one.values())
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert scale > 1e-3 and diff < 1e-6 * scale, f"gradients differ by {diff} (largest gradient {scale})"


def test_training_runs_under_torchrun(embeddings, gpt2_files, tmp_path):
    # Same data and start as one process: the updates agree, up to Adam amplifying float noise in
    # near-zero gradients into whole learning-rate steps (so weights are compared by direction).
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "clipcap_export.cli", *_train_args(embeddings, gpt2_files, one)], check=True)
    _torchrun(["-m", "clipcap_export.cli", *_train_args(embeddings, gpt2_files, two)])
    start = build_models(Source.random("tiny")).clipcap.state_dict()
    a, b = _weights(one / "checkpoint-001.pt"), _weights(two / "checkpoint-001.pt")
    da = torch.cat([(a[k] - start[k]).flatten() for k in a])
    db = torch.cat([(b[k] - start[k]).flatten() for k in a])
    assert float(da.abs().max()) > 1e-3, "training changed the weights"
    assert float(torch.nn.functional.cosine_similarity(da, db, dim=0)) > 0.999
    assert len((two / "loss.csv").read_text().splitlines()) == 1 + 5  # header + 40 pairs / 8 per step


def test_resume_continues_an_interrupted_run(embeddings, gpt2_files, tmp_path, tokenizer):
    emb = EmbeddingSet(embeddings)
    cfg = TrainConfig(batch_size=8, epochs=2, shuffle=True, dropout=0.0, lr=1e-3, warmup=2)
    source = Source(clip="random:tiny", gpt2="random:tiny")
    straight = train(emb, source, cfg, tmp_path / "straight", tokenizer)
    interrupted = tmp_path / "interrupted"
    train(emb, source, cfg, interrupted, tokenizer)
    (interrupted / "checkpoint-002.pt").unlink()  # as if stopped during epoch 2
    resumed = train(emb, source, cfg, interrupted, tokenizer, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    steps = [line.split(",")[0] for line in (interrupted / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, 11)], "the log has each step once"
    assert (interrupted / "loss.png").stat().st_size > 1000
    models = load_checkpoint(resumed, Source())
    assert models.clipcap.prefix_length == 10 and not models.normalize_embedding
