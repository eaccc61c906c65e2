"""Lower precisions of a bundle's graphs. `fp16` (for GPUs) halves every graph; `int8` and `int4`
(for CPUs) quantise the two large graphs, each the way that measured fastest on a CPU:
- the language model at int8, and the image encoder at either precision: int8 weights (one scale a
  tensor) and activations (dynamic quantisation: each MatMul becomes MatMulInteger, its input
  quantised per tensor as it runs, which ONNX Runtime fuses into DynamicQuantizeMatMul). Standard
  ONNX operators, which every runtime clipcap supports runs (ONNX Runtime 1.19 has no 8-bit
  MatMulNBits). On the full-size LM a greedy step took 0.69x the time of 8-bit MatMulNBits (blocks of
  32) and a 5-beam step 0.65x; weights with one scale a column were slower (0.90x). The encoder
  multiplies 50 tokens by each weight, so integer arithmetic is what pays there: MatMulNBits was
  slower than fp32 at 8 bits (1.13x) and barely faster at 4 (0.87x), dynamic int8 0.65x;
- the language model at int4, weight-only: every projection and the LM head become ONNX Runtime's
  MatMulNBits (4-bit weights in blocks of 32 along the input axis, symmetric, each block with its
  own scale; `accuracy_level` 4 lets the CPU kernel multiply in int8). A step reads each weight once
  for one token, so fewer weight bytes is what makes it faster. Blocks of 64 or 128 were faster
  still (0.7x to 0.75x) but cost CIDEr-D on the demo set (BENCHMARKS.md).

The exported graph computes projections with Gemm, which the quantisers do not take, and the LM head
as Gemm(transB=1) over the token embedding (so the fp32 graph stores it once). Before quantising,
each Gemm becomes MatMul (+ Add for its bias), the head's over a transposed copy of the embedding,
which is then quantised: the fp32 embedding stays for the input lookup (a few rows a step).
"""

import logging
from pathlib import Path

import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization import matmul_nbits_quantizer as nbits
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

# The quantiser logs every node it looks at, at INFO (its import sets up the root logger so).
logging.getLogger(nbits.__name__).setLevel(logging.WARNING)

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4
PRECISIONS = ["fp16", "int8", "int4"]


def gemms_as_matmuls(model: onnx.ModelProto) -> int:
    """Rewrites every Gemm(A, B[, C]) of `model` with constant B as MatMul (+ Add); returns how many."""
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in weights:
            nodes.append(node)
            continue
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            raise ValueError(f"{node.name}: a Gemm with alpha, beta or transA cannot become a MatMul here")
        a, b = node.input[0], node.input[1]
        if attrs.get("transB", 0):
            transposed = f"{b}.transposed"
            if transposed not in weights:
                weights[transposed] = numpy_helper.from_array(numpy_helper.to_array(weights[b]).T.copy(), transposed)
                graph.initializer.append(weights[transposed])
            b = transposed
        biased = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}.matmul" if biased else node.output[0]
        nodes.append(helper.make_node("MatMul", [a, b], [product], name=f"{node.name}.MatMul"))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.Add"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _drop_unused_weights(graph: onnx.GraphProto) -> set[str]:
    """Removes the initializers no node reads (the fp32 weights a quantiser replaced); returns the rest."""
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return {i.name for i in kept}


def _count_quantized(path: Path, graph: onnx.GraphProto, op: str, weights: set[str]) -> int:
    """How many `op` nodes `graph` has; an error if none, or if a MatMul of a weight is left in fp32."""
    quantized = sum(node.op_type == op for node in graph.node)
    constant_matmuls = sum(node.op_type == "MatMul" and node.input[1] in weights for node in graph.node)
    if quantized == 0 or constant_matmuls:
        raise RuntimeError(f"{path}: {quantized} {op}, {constant_matmuls} weight MatMuls left in fp32")
    return quantized


def quantize_lm_int4(path: Path) -> int:
    """Quantises the language model at `path` in place to int4 weights; returns its MatMulNBits count."""
    model = onnx.load(str(path))
    gemms_as_matmuls(model)
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                                accuracy_level=ACCURACY_LEVEL, bits=4)
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    graph = quantizer.model.model.graph
    count = _count_quantized(path, graph, "MatMulNBits", _drop_unused_weights(graph))
    onnx.save(quantizer.model.model, str(path))
    return count


def quantize_dynamic_int8(path: Path) -> int:
    """Quantises the graph at `path` in place (int8 weights and activations, dynamic); returns its
    MatMulInteger count."""
    model = onnx.load(str(path))
    gemms_as_matmuls(model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs each tensor at INFO, and advice at WARNING
    try:
        quantize_dynamic(model, path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    model = onnx.load(str(path))
    count = _count_quantized(path, model.graph, "MatMulInteger", _drop_unused_weights(model.graph))
    onnx.save(model, str(path))
    return count


def halve(path: Path) -> int:
    """Converts the graph at `path` to fp16 in place, its inputs and outputs kept fp32 (the bundle's
    contract); returns how many weights became fp16."""
    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, disable_shape_infer=True)
    # The converter appends the casts of the inputs after the nodes that read them; ONNX requires
    # each node after those it reads from (TensorRT's parser reads them in order).
    OnnxModel.graph_topological_sort(model.graph)
    # It also gives its casts value_info with the inputs' symbolic axes, on which ONNX Runtime's
    # memory planner reused a buffer of another length (the LM's prefix pass failed); without them
    # ONNX Runtime infers the shapes itself.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def quantize_graphs(graphs: dict[str, Path], precision: str) -> dict:
    """Brings the bundle's `graphs` (name -> file: lm, image_encoder, mapper, text_encoder) to
    `precision` in place; returns what the manifest records."""
    if precision == "fp16":
        halved = {name: halve(path) for name, path in graphs.items()}
        return {"weights": "fp16", "method": "float16", "graphs": list(halved), "initializers": sum(halved.values())}
    dynamic = {"weights": "int8", "activations": "int8, dynamic, per tensor", "method": "MatMulInteger"}
    lm = dynamic | {"matmuls": quantize_dynamic_int8(graphs["lm"])} if precision == "int8" else \
        {"weights": "int4", "method": "MatMulNBits", "block_size": BLOCK_SIZE, "accuracy_level": ACCURACY_LEVEL,
         "matmuls": quantize_lm_int4(graphs["lm"])}
    return lm | {"graphs": ["lm", "image_encoder"],
                 "image_encoder": dynamic | {"matmuls": quantize_dynamic_int8(graphs["image_encoder"])}}
