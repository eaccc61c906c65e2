//! A graph's declared inputs and outputs, from a session or straight from the ONNX file, and their
//! check against the format (`check_graph`), so that a graph created only when first needed (the CLIP
//! text encoder) is still checked at start.
//!
//! Reading the file decodes only `ModelProto.graph.{input, output}` (onnx.proto's field numbers) with
//! `prost`; every other field, the weights included, is skipped by length without being read, and the
//! file is memory-mapped, so a 250 MB graph costs a few pages.

use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::bundle::{BundleError, Dim, TensorSpec};

/// One declared input or output: its element type (None: not a tensor, or a type the format never
/// uses) and its axes (-1 where dynamic).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name: String,
    pub ty: Option<TensorElementType>,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphIo {
    pub inputs: Vec<Declared>,
    pub outputs: Vec<Declared>,
}

impl GraphIo {
    /// What a session's graph declares (initializers are not inputs).
    pub fn of(session: &Session) -> GraphIo {
        let declared = |name: &str, dtype: &ValueType| match dtype {
            ValueType::Tensor { ty, shape, .. } => Declared {
                name: name.to_string(),
                ty: Some(*ty),
                shape: shape.to_vec(),
            },
            _ => Declared {
                name: name.to_string(),
                ty: None,
                shape: Vec::new(),
            },
        };
        GraphIo {
            inputs: session.inputs().iter().map(|o| declared(o.name(), o.dtype())).collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| declared(o.name(), o.dtype()))
                .collect(),
        }
    }

    /// What the ONNX file at `path` declares, read without loading its weights. Graph inputs that are
    /// also initializers (older exporters list weights as inputs) are not inputs, as for a session.
    pub fn read(path: &Path) -> Result<GraphIo, BundleError> {
        let bad = |message: String| BundleError::Graph {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|error| BundleError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the mapping is read only while this function runs; a bundle's files are not
        // written while it loads (a writer truncating it could fault this read, as it could ONNX
        // Runtime's own read of the file).
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| BundleError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let model =
            <proto::Model as prost::Message>::decode(&bytes[..]).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
        let graph = model
            .graph
            .ok_or_else(|| bad("not an ONNX model: it has no graph".into()))?;
        let weights: Vec<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
        Ok(GraphIo {
            inputs: graph
                .input
                .iter()
                .filter(|v| !weights.contains(&v.name.as_str()))
                .map(proto::ValueInfo::declared)
                .collect(),
            outputs: graph.output.iter().map(proto::ValueInfo::declared).collect(),
        })
    }
}

/// Refuses a graph whose declared inputs or outputs differ from the format: a missing tensor, another
/// element type, rank or width, a fixed axis where the format needs a dynamic one, or an input the
/// runtime would not feed.
pub fn check_graph(
    path: &Path,
    io: &GraphIo,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> Result<(), BundleError> {
    let tensor_err = |tensor: &str, message: String| BundleError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    for declared in &io.inputs {
        if !inputs.iter().any(|s| s.name == declared.name) {
            return Err(tensor_err(
                &declared.name,
                "the graph requires this input, which the bundle format does not define".into(),
            ));
        }
    }
    for (role, specs, declared) in [("input", inputs, &io.inputs), ("output", outputs, &io.outputs)] {
        for spec in specs {
            let Some(outlet) = declared.iter().find(|o| o.name == spec.name) else {
                return Err(tensor_err(&spec.name, format!("missing {role}")));
            };
            let Some(ty) = outlet.ty else {
                return Err(tensor_err(
                    &spec.name,
                    format!("{role} is not a tensor of a type the format uses"),
                ));
            };
            if ty != spec.ty {
                return Err(tensor_err(
                    &spec.name,
                    format!("{role} has element type {ty}, expected {}", spec.ty),
                ));
            }
            let shape = &outlet.shape;
            if shape.len() != spec.dims.len() {
                return Err(tensor_err(
                    &spec.name,
                    format!("{role} has rank {}, expected {}", shape.len(), spec.dims.len()),
                ));
            }
            for (axis, (&got, want)) in shape.iter().zip(&spec.dims).enumerate() {
                match want {
                    Dim::Dynamic | Dim::Range { .. } if got >= 0 => {
                        return Err(tensor_err(
                            &spec.name,
                            format!("{role} axis {axis} is fixed to {got}, it must be dynamic"),
                        ));
                    }
                    Dim::Fixed(n) if got >= 0 && got as usize != *n => {
                        return Err(tensor_err(
                            &spec.name,
                            format!("{role} axis {axis} is {got}, the manifest says {n}"),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The parts of onnx.proto read here, with its field numbers.
mod proto {
    use ort::value::TensorElementType;

    use super::Declared;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        /// Only the names are decoded; the data fields are skipped.
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Named>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfo>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfo>,
    }

    /// TensorProto's name (field 8).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Named {
        #[prost(string, tag = "8")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<Type>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Type {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorType>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorType {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<Shape>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Shape {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// A fixed size (dim_value) or a named dynamic axis (dim_param); neither is dynamic too.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
    }

    impl ValueInfo {
        pub fn declared(&self) -> Declared {
            let tensor = self.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
            Declared {
                name: self.name.clone(),
                ty: tensor.and_then(|t| element_type(t.elem_type)),
                shape: tensor
                    .and_then(|t| t.shape.as_ref())
                    .map(|s| s.dim.iter().map(|d| d.dim_value.unwrap_or(-1)).collect())
                    .unwrap_or_default(),
            }
        }
    }

    /// TensorProto.DataType's numbers for the element types the bundle format uses.
    fn element_type(number: i32) -> Option<TensorElementType> {
        Some(match number {
            1 => TensorElementType::Float32,
            6 => TensorElementType::Int32,
            7 => TensorElementType::Int64,
            9 => TensorElementType::Bool,
            10 => TensorElementType::Float16,
            _ => return None,
        })
    }
}
