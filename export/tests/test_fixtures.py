"""The committed fixtures (tests/fixtures, used by the Rust tests) are what regenerate.sh produces now:
a change to the models, the export or the reference captioner cannot leave them silently stale."""

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import torch
from conftest import FIXTURES

from clipcap_export.bundle import stop_tokens
from clipcap_export.models import Source, build_models
from clipcap_export.reference import caption_image, load_image, parse_decoder, preprocess
from clipcap_export.tokenizer import clip_tokenizer


def test_reference_outputs_are_current(tokenizer):
    # Greedy on every image, and the first image of each other decoder (all of them would take minutes).
    models = build_models(Source.random("tiny", 0))
    context = dict(stop_tokens=set(stop_tokens(tokenizer)), max_tokens=67, gpt2_tokenizer=tokenizer,
                   clip_tokenizer=clip_tokenizer())
    lines = (FIXTURES / "reference" / "greedy.jsonl").read_text().splitlines()
    assert len(lines) >= 5
    lines += [(FIXTURES / "reference" / f"{name}.jsonl").read_text().splitlines()[0]
              for name in ("beam", "contrastive", "magic")]
    for line in lines:
        ref = json.loads(line)
        path = FIXTURES.parent.parent / ref["image"]
        cap = caption_image(models, path, parse_decoder(ref["decoder"]), **context)
        assert cap.token_ids == ref["token_ids"], path
        assert np.allclose(cap.image_embeds.numpy(), ref["image_embeds"], atol=1e-6)
        pixels = np.load(FIXTURES / "reference" / f"{path.name}.npy")
        assert np.array_equal(preprocess(load_image(path), models.image_size).numpy(), pixels)


def test_bundle_holds_the_seeded_weights():
    models = build_models(Source.random("tiny", 0))
    session = ort.InferenceSession(str(FIXTURES / "tiny-bundle" / "mapper.onnx"), providers=["CPUExecutionProvider"])
    embeds = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = models.clipcap.clip_project(embeds).numpy()
    assert np.abs(session.run(None, {"image_embeds": embeds.numpy()})[0] - want).max() < 1e-5


def test_yuyv_references_are_opencvs():
    spec = importlib.util.spec_from_file_location("yuyv", FIXTURES / "yuyv.py")
    yuyv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(yuyv)
    for name, frame in yuyv.frames().items():
        assert (FIXTURES / "yuyv" / f"{name}.yuyv").read_bytes() == frame.tobytes(), name
        assert (FIXTURES / "yuyv" / f"{name}.rgb").read_bytes() == yuyv.to_rgb(frame).tobytes(), name
