"""Bundles of format 1 upgraded to format 2 in place (docs/bundle.md, Versioning).

Format 2 adds two inputs to lm.onnx, `attention_mask` and `position_ids`, so that captions of
different lengths share one batch. A format-1 graph already computes the positions (a Range from the
past length) and the causal mask (one `Not` of a `LessOrEqual`), so the upgrade rewires those two
places instead of re-exporting: the weights stay bit for bit what they were, whatever produced them
(trained, imported, quantised, fp16). The upgraded graph is then checked against the original: equal
rows batched as before, and rows of different lengths padded on the left against each row alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from .bundle import FORMAT_VERSION, MANIFEST, read_manifest, write_manifest
from .graphs import ExportCheckError, _compare, lm_feeds, lm_input_names, pad_left

MASK, POSITIONS = "attention_mask", "position_ids"


class UpgradeError(ValueError):
    pass


def _rewire(model: onnx.ModelProto, path: Path) -> None:
    """Adds the two inputs to a format-1 graph: positions from `position_ids`, the causal mask
    narrowed by `attention_mask`."""
    graph = model.graph
    wpe = [n for n in graph.node if n.op_type == "Gather" and n.input[0].endswith("wpe.weight")]
    masks = [n for n in graph.node if n.op_type == "Not"]
    if len(wpe) != 1 or len(masks) != 1:
        raise UpgradeError(f"{path}: not a format-1 lm.onnx written by clipcap-export (found {len(wpe)} position "
                           f"lookups and {len(masks)} mask negations, expected one of each)")
    wpe[0].input[1] = POSITIONS
    causal = masks[0].input[0]  # [new, total]: key k visible from new position q
    def axes(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor("", TensorProto.INT64, [2], values))

    nodes = [
        axes("upgrade.axes_01", [0, 1]),
        axes("upgrade.axes_12", [1, 2]),
        helper.make_node("Unsqueeze", [causal, "upgrade.axes_01"], ["upgrade.causal"]),
        helper.make_node("Cast", [MASK], ["upgrade.mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["upgrade.mask_bool", "upgrade.axes_12"], ["upgrade.keys"]),
        helper.make_node("And", ["upgrade.causal", "upgrade.keys"], ["upgrade.visible"]),
    ]
    masks[0].input[0] = "upgrade.visible"
    at = list(graph.node).index(masks[0])
    for i, node in enumerate(nodes):
        graph.node.insert(at + i, node)
    # The shapes the exporter inferred no longer hold (positions now have a batch axis), and format 1
    # named input_ids' length like the new positions' (it is shorter by the prefix).
    del graph.value_info[:]
    ids = next(i for i in graph.input if i.name == "input_ids")
    ids.type.tensor_type.shape.dim[1].dim_param = "ids_len"
    new_inputs = [helper.make_tensor_value_info(MASK, TensorProto.INT64, ["batch", "total_len"]),
                  helper.make_tensor_value_info(POSITIONS, TensorProto.INT64, ["batch", "new_len"])]
    for i, value in enumerate(new_inputs):
        graph.input.insert(2 + i, value)


def _check(old: Path, new: Path, layers: int, heads: int, width: int, vocab: int) -> float:
    """max |upgraded - original| over a batch of equal rows and a left-padded batch of unequal ones."""
    names = lm_input_names(layers)
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (old, new))
    head_dim = width // heads
    rng = np.random.default_rng(5)

    def old_run(prefix: np.ndarray, ids: np.ndarray, past: list[np.ndarray]) -> list[np.ndarray]:
        return before.run(None, {names[0]: prefix, names[1]: ids} | dict(zip(names[4:], past, strict=True)))

    def empty(batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, heads, 0, head_dim), np.float32) for _ in names[4:]]

    lengths, prefix_len, steps = [0, 2, 5], 4, 3
    prefixes = rng.standard_normal((len(lengths), prefix_len, width), dtype=np.float32)
    tokens = rng.integers(0, vocab, (len(lengths), max(lengths) + steps), dtype=np.int64)
    no_ids = np.zeros((len(lengths), 0), np.int64)
    worst = 0.0
    # Equal rows: the prefix pass of every row at once.
    got = after.run(None, lm_feeds(names, prefixes, no_ids, [0] * len(lengths), empty(len(lengths))))
    for g, w in zip(got, old_run(prefixes, no_ids, empty(len(lengths))), strict=True):
        worst = _compare(f"{new.name} (equal rows)", g, torch.from_numpy(w), worst)
    # Unequal rows, each cache built alone by the original graph, then stepped together.
    caches = [old_run(prefixes[r:r + 1], tokens[r:r + 1, :n], empty(1)) for r, n in enumerate(lengths)]
    past = pad_left([c[2:] for c in caches])
    real = [prefix_len + n for n in lengths]
    for step in range(steps):
        ids = np.stack([tokens[r, n + step:n + step + 1] for r, n in enumerate(lengths)])
        got = after.run(None, lm_feeds(names, prefixes[:, :0], ids, real, past))
        for r, c in enumerate(caches):
            caches[r] = old_run(prefixes[r:r + 1, :0], ids[r:r + 1], c[2:])
            for output in (0, 1):
                worst = _compare(f"{new.name} (padded row {r}, step {step})", got[output][r:r + 1],
                                 torch.from_numpy(caches[r][output]), worst)
        past, real = got[2:], [n + 1 for n in real]
    return worst


def upgrade_bundle(bundle: Path) -> float | None:
    """Upgrades `bundle` to the current format in place; returns max |upgraded - original|, or None
    when it already is current. The manifest is rewritten last, after the check."""
    manifest = read_manifest(bundle)
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return None
    if version != 1:
        raise UpgradeError(f"{bundle / MANIFEST}: format_version {version} cannot be upgraded (1 can)")
    lm = manifest["language_model"]
    path = bundle / lm["file"]
    model = onnx.load(str(path))
    _rewire(model, path)
    with tempfile.TemporaryDirectory(dir=bundle) as tmp:
        upgraded = Path(tmp) / path.name
        onnx.save(model, str(upgraded))
        try:
            worst = _check(path, upgraded, lm["layers"], lm["heads"], lm["width"], lm["vocab_size"])
        except ExportCheckError as e:
            raise UpgradeError(f"{path}: the upgraded graph differs from the original: {e}") from e
        shutil.move(upgraded, path)
    manifest["format_version"] = FORMAT_VERSION
    write_manifest(bundle, manifest)
    return worst
