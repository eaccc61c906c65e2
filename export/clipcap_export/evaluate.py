"""Captioning a split and scoring it with the COCO caption metrics (pycocoevalcap): BLEU-1..4, METEOR,
ROUGE-L, CIDEr, and SPICE when its Stanford CoreNLP models are installed; on the demo world also
attribute by attribute, with CLIP's zero-shot view of the same attributes (attributes.py).

Generation here is batched greedy decoding with GPT-2's KV cache, for throughput on 5000 test images;
it follows the same rule as `reference.greedy` (first maximal logit, stop after a stop token), which is
kept separate and uncached because it is the parity reference for the Rust runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from . import attributes
from .attributes import caption_accuracy, zero_shot
from .clip_train import text_features
from .data import EmbeddingSet
from .models import Models, pick_device

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


class EvaluationError(RuntimeError):
    pass


@torch.no_grad()
def generate(models: Models, embeds: torch.Tensor, stop_tokens: set[int], max_tokens: int,
             batch_size: int = 64) -> list[list[int]]:
    """Greedy captions of a batch of CLIP embeddings, each cut after its first stop token."""
    gpt = models.gpt
    device = next(gpt.parameters()).device
    max_tokens = min(max_tokens, gpt.config.n_positions - models.clipcap.prefix_length)
    out: list[list[int]] = []
    for start in range(0, len(embeds), batch_size):
        e = embeds[start:start + batch_size].to(device)
        result = gpt(inputs_embeds=models.clipcap.prefix(e), use_cache=True)
        tokens = torch.zeros(len(e), 0, dtype=torch.long, device=device)
        done = torch.zeros(len(e), dtype=torch.bool, device=device)
        stops = torch.tensor(sorted(stop_tokens), device=device)
        for _ in range(max_tokens):
            nxt = result.logits[:, -1].argmax(-1)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= torch.isin(nxt, stops)
            if done.all():
                break
            result = gpt(input_ids=nxt[:, None], past_key_values=result.past_key_values, use_cache=True)
        for row in tokens.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop_tokens), len(row))
            out.append(row[:cut])
    return out


def spice_available() -> tuple[bool, str]:
    """SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first use; offline it cannot."""
    import pycocoevalcap.spice as spice

    lib = Path(spice.__file__).parent / "lib"
    jars = list(lib.glob("stanford-corenlp-3.6.0*.jar"))
    if len(jars) >= 2:
        return True, ""
    return False, (f"SPICE not computed: Stanford CoreNLP 3.6.0 is not in {lib} (pycocoevalcap's "
                   "get_stanford_models() downloads it; that needs internet access)")


def score(references: dict[int, list[str]], captions: dict[int, str]) -> tuple[dict[str, float], list[str]]:
    """COCO caption metrics of `captions` against `references`, with pycocoevalcap (PTB tokenisation,
    METEOR and SPICE run on Java). Returns the scores and notes on what could not be computed."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise EvaluationError("pycocoevalcap needs Java (PTB tokenizer, METEOR): install default-jre-headless")
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tok.tokenize({i: [{"caption": captions[i]}] for i in references})
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    notes = []
    ok, why = spice_available()
    if ok:
        from pycocoevalcap.spice.spice import Spice

        scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
    else:
        notes.append(why)
    return scores, notes


def evaluate(models: Models, emb: EmbeddingSet, split: str, tokenizer: Tokenizer, stop_tokens: set[int],
             max_tokens: int, out: Path | None = None) -> dict:
    """Captions split `split` of `emb`, scores it, and (with `out`) writes captions.json, report.json and
    report.md there."""
    rows = emb.split(split)
    if not rows:
        raise EvaluationError(f"{emb.folder}: no images in split {split!r}")
    device = pick_device()
    models.clipcap.to(device)
    embeds = torch.from_numpy(np.asarray(emb.embeddings[rows]))
    token_lists = []
    for start in tqdm(range(0, len(rows), 512), desc=f"caption {split}", unit="×512"):
        token_lists += generate(models, embeds[start:start + 512], stop_tokens, max_tokens)
    models.clipcap.to("cpu")
    records = [emb.records[r] for r in rows]
    captions = {r.image_id: tokenizer.decode(t, skip_special_tokens=True).strip()
                for r, t in zip(records, token_lists, strict=True)}
    references = {r.image_id: r.captions for r in records}
    scores, notes = score(references, captions)
    report = dict(split=split, images=len(rows), embeddings=str(emb.folder), scores=scores, notes=notes)
    if all(r.attributes for r in records):  # the demo world: what each caption got right, and what CLIP sees
        truths = [r.attributes for r in records]
        report["attributes"] = caption_accuracy(truths, [captions[r.image_id] for r in records])
        report["zero_shot"] = zero_shot(truths, np.asarray(emb.embeddings[rows]),
                                        lambda texts: text_features(models.clip, texts))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        samples = [dict(image_id=r.image_id, image=str(r.path), caption=captions[r.image_id], references=r.captions)
                   for r in records]
        (out / "captions.json").write_text(json.dumps(samples, indent=1), encoding="utf-8")
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "report.md").write_text(markdown(report, samples[:10]), encoding="utf-8")
    return report


def table(scores: dict[str, float]) -> str:
    """One Markdown table row of scores, in percent as papers print them."""
    names = [m for m in METRICS if m in scores]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n| " + \
        " | ".join(f"{100 * scores[m]:.2f}" for m in names) + " |\n"


def markdown(report: dict, samples: list[dict]) -> str:
    lines = [f"# Caption evaluation: {report['split']} split, {report['images']} images\n", table(report["scores"])]
    lines += [f"Note: {n}\n" for n in report["notes"]]
    if "attributes" in report:
        lines += ["\n## Attribute by attribute\n", attributes.markdown(report)]
    lines.append("\n## Samples\n")
    lines += [f"- `{s['image']}`: **{s['caption']}** (reference: {s['references'][0]})" for s in samples]
    return "\n".join(lines) + "\n"
