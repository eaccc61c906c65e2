"""The research flows built from the parts: train, evaluate, then export (`run`); the prefix-length
study (`sweep`); and the offline demo world, trained end to end in minutes on a CPU (`demo`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tokenizers import Tokenizer

from . import attributes
from .bundle import Provenance, stop_tokens, write_bundle
from .data import EmbeddingSet, load_karpathy
from .evaluate import EvaluationError, evaluate, table
from .models import Source, load_checkpoint, load_clip
from .plots import figure
from .train import TrainConfig, train, trainable_parameters


class GateError(RuntimeError):
    pass


def train_evaluate_export(emb: EmbeddingSet, source: Source, cfg: TrainConfig, run: Path, tokenizer: Tokenizer,
                          bundle: Path | None, max_tokens: int, min_bleu4: float | None = None,
                          training_data: str = "", resume: bool = False, split: str = "test") -> dict:
    """Trains into `run`, evaluates on `split`, and exports a bundle with the scores unless the
    evaluation fails or BLEU-4 is below `min_bleu4`. Returns the run's summary."""
    began = time.time()
    checkpoint = train(emb, source, cfg, run, tokenizer, resume=resume, training_data=training_data)
    seconds = time.time() - began
    models = load_checkpoint(checkpoint, source)
    stops = set(stop_tokens(tokenizer))
    report = evaluate(models, emb, split, tokenizer, stops, max_tokens, run / "evaluation")
    summary = dict(checkpoint=str(checkpoint), prefix_length=cfg.prefix_length, train_seconds=round(seconds, 1),
                   trainable_parameters=trainable_parameters(models, cfg.freeze_gpt), **report)
    (run / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\n{split} split, {report['images']} images:\n" + table(report["scores"]))
    for note in report["notes"]:
        print(f"note: {note}")
    if "attributes" in report:
        print(attributes.markdown(report))
    bleu4 = report["scores"].get("BLEU-4")
    if bleu4 is None:
        raise EvaluationError("evaluation produced no BLEU-4; not exporting")
    if min_bleu4 is not None and bleu4 < min_bleu4:
        raise GateError(f"BLEU-4 {bleu4:.4f} is below --min-bleu4 {min_bleu4}; not exporting")
    if bundle is not None:
        provenance = Provenance(
            image_encoder=source.describe("clip"), language_model=source.describe("gpt2"), mapper=str(checkpoint),
            training_data=training_data or str(emb.folder),
            evaluation=dict(dataset=f"{training_data or emb.folder} ({split} split, {report['images']} images)",
                            scores={k.lower().replace("-", ""): round(v, 5) for k, v in report["scores"].items()},
                            **{part: {a: round(v, 4) for a, v in report[part]["accuracy"].items()}
                               for part in ("attributes", "zero_shot") if part in report}),
            training={k: v for k, v in asdict(cfg).items() if v is not None})
        write_bundle(models, tokenizer, bundle, provenance, max_tokens)
        print(f"bundle written to {bundle}")
    return summary


def sweep(emb: EmbeddingSet, source: Source, cfg: TrainConfig, lengths: list[int], out: Path, tokenizer: Tokenizer,
          max_tokens: int, training_data: str = "") -> list[dict]:
    """The prefix-length study: one training and evaluation per length, and the comparison."""
    rows = []
    for k in lengths:
        summary = train_evaluate_export(emb, source, replace(cfg, prefix_length=k), out / f"prefix-{k}", tokenizer,
                                        None, max_tokens, training_data=training_data)
        rows.append(summary)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    lines = ["| prefix length | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | CIDEr | training time "
             "| trainable params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['prefix_length']} | " + " | ".join(f"{100 * s[m]:.2f}" for m in
                     ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr")) +
                     f" | {r['train_seconds'] / 60:.1f} min | {r['trainable_parameters'] / 1e6:.2f}M |")
    text = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    _plot_sweep(rows, out / "sweep.png")
    return rows


def _plot_sweep(rows: list[dict], png: Path) -> None:
    lengths = [r["prefix_length"] for r in rows]
    with figure(png, (6, 4)) as ax:
        for m in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"):
            ax.plot(lengths, [100 * r["scores"][m] for r in rows], marker="o", label=m)
        ax.set(xlabel="prefix length", ylabel="score", title="Prefix-length study", xscale="log")
        ax.set_xticks(lengths, [str(k) for k in lengths])


@dataclass(frozen=True)
class DemoRecipe:
    """What `clipcap-export demo` trains: the world's size, the contrastive CLIP's training, ClipCap's."""

    world: dict
    clip_steps: int
    clip_lr: float
    clip_attribute_weight: float  # the auxiliary attribute loss (clip_train.py)
    clip_shift: int  # translation augmentation, in CLIP input pixels
    train: TrainConfig


# The demo: a world small and regular enough to learn on two CPU cores in about a quarter of an hour
# (`full`, what demo/bundle is), and a smaller one that CI trains end to end in about 7 minutes (`ci`).
DEMO_RECIPES = {
    "full": DemoRecipe(world=dict(train=8000, val=200, test=200), clip_steps=2000, clip_lr=2e-3,
                       clip_attribute_weight=3.0, clip_shift=3,
                       train=TrainConfig(prefix_length=10, normalize=True, lr=2e-3, warmup=100, batch_size=64,
                                         epochs=3, max_caption_tokens=24, dropout=0.0, captions_per_image=2)),
    "ci": DemoRecipe(world=dict(train=3000, val=100, test=200), clip_steps=800, clip_lr=2e-3,
                     clip_attribute_weight=3.0, clip_shift=3,
                     train=TrainConfig(prefix_length=10, normalize=True, lr=2e-3, warmup=50, batch_size=64,
                                       epochs=5, max_caption_tokens=24, dropout=0.0, captions_per_image=2)),
}
DEMO_MAX_TOKENS = 30


def demo(out: Path, tokenizer: Tokenizer, recipe: DemoRecipe = DEMO_RECIPES["full"], seed: int = 0) -> dict:
    """World -> contrastive CLIP -> embeddings -> ClipCap -> evaluation -> bundle, all under `out`."""
    from .clip_train import train_clip
    from .embed import embed
    from .world import generate

    world = recipe.world
    began = stage = time.time()
    seconds = {}

    def lap(name: str) -> None:
        nonlocal stage
        seconds[name] = round(time.time() - stage, 1)
        stage = time.time()

    split_file = generate(out / "world", **world, seed=seed)
    records = load_karpathy(split_file, out / "world")
    lap("world")
    clip = load_clip(Source.random("demo", seed))
    train_records = [r for r in records if r.split == "train"]
    clip_report = train_clip(clip, train_records, [r for r in records if r.split == "val"], steps=recipe.clip_steps,
                             lr=recipe.clip_lr, seed=seed, attribute_weight=recipe.clip_attribute_weight,
                             shift=recipe.clip_shift)
    print(f"CLIP: {clip_report}")
    clip.save_pretrained(out / "clip")
    (out / "clip" / "training.json").write_text(json.dumps(clip_report, indent=2), encoding="utf-8")
    lap("clip")
    source = Source(clip=str(out / "clip"), gpt2="random:demo", seed=seed)
    emb = embed(records, source, out / "embeddings", batch_size=256, workers=0)
    lap("embed")
    summary = train_evaluate_export(emb, source, recipe.train, out / "run", tokenizer, out / "bundle", DEMO_MAX_TOKENS,
                                    training_data="clipcap demo world (synthetic shapes, "
                                                  f"{world['train']}/{world['val']}/{world['test']} images)")
    lap("clipcap, evaluation, export")
    summary.update(clip=clip_report, seconds=seconds, total_seconds=round(time.time() - began, 1))
    (out / "demo.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
