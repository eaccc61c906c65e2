"""The fp32 and fp16 bundles' graphs against what TensorRT's ONNX parser accepts, as
onnx/onnx-tensorrt's docs/operators.md states it for TensorRT 10.15 (opset 9 to 24): every operator
supported, every tensor it reads of a type that operator takes, Squeeze/Unsqueeze axes constant, and
the graph valid ONNX (nodes in topological order: the parser reads them in order).
No TensorRT runs here; this keeps an export change from quietly leaving what the Jetson guide
promises. The int8/int4 bundles are for CPUs: TensorRT has no MatMulNBits, MatMulInteger or
DynamicQuantizeLinear."""

import onnx
import pytest
from conftest import FIXTURES
from onnx import TensorProto as T

from clipcap_export.bundle import quantize_bundle

TINY = FIXTURES / "tiny-bundle"

FLOAT = {T.FLOAT, T.FLOAT16, T.BFLOAT16}
NUMBER = FLOAT | {T.INT32, T.INT64}
ANY = NUMBER | {T.BOOL}
# Operators from TensorRT 10.15's table with the types it lists for each. An export that needs
# another operator adds it here after checking the table.
TENSORRT_OPS = {
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "LessOrEqual", "Greater", "ArgMax",
                     "Range", "Neg", "Max", "Min"], NUMBER),
    **dict.fromkeys(["Concat", "Expand", "Flatten", "Gather", "Identity", "Reshape", "Shape", "Slice", "Split",
                     "Squeeze", "Unsqueeze", "Transpose", "Where", "Tile", "Trilu", "ConstantOfShape",
                     "Constant"], ANY),
    **dict.fromkeys(["Conv", "Gemm", "MatMul", "Sigmoid", "Tanh", "Softmax", "LayerNormalization", "Erf", "Sqrt",
                     "Exp", "Reciprocal"], FLOAT),
    "Cast": ANY,
    "Not": {T.BOOL},
    "And": {T.BOOL},  # the LM's causal mask and attention_mask (format 2)
}


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {i.name: i.data_type for i in inferred.initializer}
    for v in [*inferred.input, *inferred.value_info, *inferred.output]:
        types[v.name] = v.type.tensor_type.elem_type
    return types


def refusals(path) -> list[str]:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)  # a valid graph, nodes in topological order among the rest
    types = types_of(model)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
            found.append(f"{node.name}: {node.domain or 'ai.onnx'}.{node.op_type} is not supported")
            continue
        allowed = TENSORRT_OPS[node.op_type]
        for name in filter(None, node.input):
            if types.get(name, 0) not in allowed and node.op_type != "Cast":
                found.append(f"{node.name}: {node.op_type} reads {name} as {T.DataType.Name(types.get(name, 0))}")
        if node.op_type in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] not in constants:
            found.append(f"{node.name}: {node.op_type} axes {node.input[1]} are not constant")
    return found


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_graph_is_one_tensorrt_parses(tmp_path, precision):
    folder = TINY
    if precision == "fp16":
        folder = tmp_path / "fp16"
        quantize_bundle(TINY, "fp16", out=folder)
    graphs = sorted(folder.glob("*.onnx"))
    assert [g.name for g in graphs] == ["image_encoder.onnx", "lm.onnx", "mapper.onnx", "text_encoder.onnx"]
    for graph in graphs:
        assert refusals(graph) == [], graph.name


def test_the_check_sees_what_tensorrt_refuses(tmp_path):
    # int4: the language model's MatMulNBits, the image encoder's MatMulInteger.
    int4 = tmp_path / "int4"
    quantize_bundle(TINY, "int4", out=int4)
    found = refusals(int4 / "lm.onnx") + refusals(int4 / "image_encoder.onnx")
    assert any("com.microsoft.MatMulNBits is not supported" in f for f in found), found
    assert any("MatMulInteger is not supported" in f for f in found), found
