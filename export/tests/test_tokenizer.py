"""tokenizer.json built from OpenAI's files must tokenise exactly as GPT-2's own BPE does."""

import json
import subprocess

from clipcap_export.tokenizer import EOS, token_id

TEXTS = [
    "A white dog sitting on a bench next to a woman.",
    "two red circles on a blue background",
    "  leading and  double  spaces\tand tabs\n",
    "Numbers 1234567 and 3.14, punctuation!? (brackets) \"quotes\" 'apostrophes' don't",
    "Unicode: café naïve 東京 🙂 — em dash",
    "<|endoftext|> is special",
    "",
]


def test_matches_the_javascript_gpt2_encoder(tokenizer, gpt2_files):
    # gpt-3-encoder's Encoder.js is an independent implementation of GPT-2's BPE (a port of OpenAI's
    # encoder.py); it knows no special tokens, so the end-of-text text is left out.
    texts = [t for t in TEXTS if EOS not in t]
    script = f"const e = require({json.dumps(str(gpt2_files))}); " \
             f"console.log(JSON.stringify({json.dumps(texts)}.map(t => e.encode(t))))"
    want = json.loads(subprocess.run(["node", "-e", script], check=True, capture_output=True, text=True).stdout)
    for text, ids in zip(texts, want, strict=True):
        assert tokenizer.encode(text, add_special_tokens=False).ids == ids, text


def test_vocabulary_and_special_tokens(tokenizer):
    assert tokenizer.get_vocab_size(with_added_tokens=True) == 50257
    assert tokenizer.token_to_id(EOS) == 50256
    assert token_id(tokenizer, ".") == 13
    assert tokenizer.encode(EOS).ids == [50256]
    ids = tokenizer.encode(" A dog.").ids + [50256]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " A dog."


def test_round_trip(tokenizer):
    for text in TEXTS:
        if EOS not in text:
            assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_clip_tokenizer_matches_openai_clip():
    import clip

    from clipcap_export.tokenizer import clip_ids, clip_tokenizer

    texts = [t for t in TEXTS if t.strip()] + ["a " * 100, "A Dog.", "  two   RED circles!  "]
    want = clip.tokenize(texts, truncate=True).tolist()
    assert clip_ids(clip_tokenizer(), texts) == want
