"""Writing a model bundle: the folder the daemon loads (schema: docs/bundle.md).

The manifest is written last, after every graph has passed its ONNX Runtime check, so a folder with a
manifest is a finished bundle; a failed export leaves none. It pins every file it names (`[files]`:
size and SHA-256), so that a signature of the manifest (minisign, docs/fleet.md) vouches for them all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from tokenizers import Tokenizer

from . import __version__
from .graphs import export_graphs
from .models import Models
from .quantize import quantize_graphs
from .tokenizer import CLIP_BOS, CLIP_CONTEXT, CLIP_EOS, EOS, clip_tokenizer, special_id, token_id

FORMAT_VERSION = 2
MANIFEST = "manifest.toml"
SIGNATURE = MANIFEST + ".minisig"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_TOKENS = 67  # ClipCap's entry_length


@dataclass
class Provenance:
    image_encoder: str
    language_model: str
    mapper: str
    training_data: str
    notes: str = ""
    # {"dataset": str, "scores": {name: value}}, and on the demo world "attributes" and "zero_shot":
    # {attribute: accuracy} of the captions and of CLIP's zero-shot probe (attributes.py)
    evaluation: dict | None = None
    training: dict | None = None  # the training settings
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def stop_tokens(tok: Tokenizer) -> list[int]:
    return [token_id(tok, "."), special_id(tok, EOS)]


def write_bundle(models: Models, tok: Tokenizer, out: Path, provenance: Provenance, max_tokens: int = MAX_TOKENS,
                 text_encoder: bool = True, quantize: str | None = None) -> dict:
    """Exports `models` into the bundle folder `out`; `text_encoder` adds CLIP's text tower and tokenizer;
    `quantize` ("int8", "int4") makes the language model's weights that precision and the image
    encoder int8, or ("fp16") every graph fp16 (quantize.py), after every graph was checked against
    PyTorch in fp32."""
    gpt = models.gpt.config
    if tok.get_vocab_size(with_added_tokens=True) != gpt.vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, GPT-2 {gpt.vocab_size}")
    if models.clipcap.prefix_length + max_tokens > gpt.n_positions:
        raise ValueError(f"prefix {models.clipcap.prefix_length} + {max_tokens} tokens exceed GPT-2's "
                         f"{gpt.n_positions} positions")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    clip_tok = clip_tokenizer() if text_encoder else None
    text = (CLIP_CONTEXT, special_id(clip_tok, CLIP_BOS), special_id(clip_tok, CLIP_EOS)) if clip_tok else None
    report = export_graphs(models, out, models.image_size, text)
    tok.save(str(out / "tokenizer.json"), pretty=False)

    prov = {"created": provenance.created, "tool": f"clipcap-export {__version__}",
            "image_encoder": provenance.image_encoder, "language_model": provenance.language_model,
            "mapper": provenance.mapper, "training_data": provenance.training_data}
    if provenance.notes:
        prov["notes"] = provenance.notes
    if provenance.evaluation:
        prov["evaluation"] = provenance.evaluation
    if provenance.training:
        prov["training"] = provenance.training
    prov["export_check"] = {k: v for k, v in vars(report).items() if v is not None}
    manifest = {
        "format_version": FORMAT_VERSION,
        "provenance": prov,
        "preprocess": {"size": models.image_size, "resize": "shorter-side", "filter": "bicubic", "crop": "center",
                       "mean": CLIP_MEAN, "std": CLIP_STD},
        "image_encoder": {"file": "image_encoder.onnx", "embedding_dim": models.embedding_dim,
                          "normalize": models.normalize_embedding},
        "mapper": {"file": "mapper.onnx", "kind": models.clipcap.clip_project.kind,
                   "prefix_length": models.clipcap.prefix_length},
        "language_model": {"file": "lm.onnx", "kind": "gpt2", "width": gpt.n_embd, "layers": gpt.n_layer,
                           "heads": gpt.n_head, "vocab_size": gpt.vocab_size, "max_positions": gpt.n_positions},
        "tokenizer": {"file": "tokenizer.json", "eos_token": special_id(tok, EOS), "stop_tokens": stop_tokens(tok),
                      "max_tokens": max_tokens},
    }
    if clip_tok:
        clip_tok.save(str(out / "clip_tokenizer.json"), pretty=False)
        manifest["text_encoder"] = {"file": "text_encoder.onnx", "tokenizer": "clip_tokenizer.json",
                                    "context_length": CLIP_CONTEXT, "embedding_dim": models.embedding_dim,
                                    "logit_scale": models.logit_scale}
    if quantize:  # before the manifest is written: a bundle with a manifest is complete
        prov["quantization"] = quantize_graphs(graph_files(out, manifest), quantize)
    write_manifest(out, manifest)
    return manifest


def named_files(manifest: dict) -> list[str]:
    """Every file the manifest names (docs/bundle.md)."""
    files = [manifest[s]["file"] for s in ("image_encoder", "mapper", "language_model", "tokenizer")]
    if "text_encoder" in manifest:
        files += [manifest["text_encoder"]["file"], manifest["text_encoder"]["tokenizer"]]
    return files


def pin(path: Path) -> dict:
    """A file's size and SHA-256, as `[files]` records them."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(bundle: Path, manifest: dict) -> None:
    """Pins the files `manifest` names as they are now, and writes it. A signature of an earlier
    manifest is removed: it vouches for other contents, and the daemon would refuse it as tampered."""
    manifest["files"] = {name: pin(bundle / name) for name in named_files(manifest)}
    (bundle / SIGNATURE).unlink(missing_ok=True)
    (bundle / MANIFEST).write_text(tomli_w.dumps(manifest), encoding="utf-8")


# The manifest section of each graph, by the name quantize.py and provenance.quantization use.
GRAPH_SECTIONS = {"lm": "language_model", "image_encoder": "image_encoder", "mapper": "mapper",
                  "text_encoder": "text_encoder"}


def graph_files(bundle: Path, manifest: dict) -> dict[str, Path]:
    """The bundle's graph files, by name (`text_encoder` only when the bundle has one)."""
    return {name: bundle / manifest[section]["file"] for name, section in GRAPH_SECTIONS.items() if section in manifest}


def quantize_bundle(bundle: Path, precision: str, out: Path) -> dict:
    """A copy of `bundle` at `out` (replaced if it exists) at `precision` ("fp16", "int8", "int4";
    quantize.py); the manifest, recording it, is written last."""
    manifest = read_manifest(bundle)
    if "quantization" in manifest["provenance"]:
        raise ValueError(f"{bundle}: already quantised ({manifest['provenance']['quantization']['weights']})")
    if out.resolve() == bundle.resolve():
        raise ValueError(f"{out}: the copy must go elsewhere than the bundle")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns(MANIFEST, SIGNATURE))
    manifest["provenance"]["quantization"] = quantize_graphs(graph_files(out, manifest), precision)
    write_manifest(out, manifest)
    return manifest


def read_manifest(bundle: Path) -> dict:
    return tomllib.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
