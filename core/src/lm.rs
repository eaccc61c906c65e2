//! The language-model session: one ONNX Runtime call for a batch of rows, each row a sequence of
//! some caption. The KV cache is kept in [`Block`]s, the `present.*` tensors of a run, so decoders
//! never see it; batch.rs decides which rows go into which call.
//!
//! A call's rows come from blocks of earlier calls. When they are exactly the rows of one block, in
//! its order (greedy decoding, or every caption of the last call stepping again), the block's tensors
//! are bound as they are: with an IoBinding they stay in the memory of the device that leads the
//! session (the GPU's for CUDA and TensorRT) and never cross to the host. Anything else (beams
//! reordered, forked or dropped, captions joining or leaving) gathers the rows on the host first.
//!
//! Rows of different lengths share a call by padding each row's past on the left: `attention_mask`
//! hides the padding and `position_ids` gives each row its own positions (bundle format 2). A
//! format-1 graph has neither input, so its calls hold rows of one length: one caption's.
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::Session;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor};

use crate::bundle::{Bundle, BundleError, Dim, LanguageModelSpec, TensorSpec};
use crate::graph_io::{GraphIo, check_graph};
use crate::runtime::{Provider, Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("invalid step: {0}")]
    Step(#[from] StepError),
    #[error("the language model's batching thread has stopped")]
    Stopped,
    /// A call that served several captions failed; each of them gets the error.
    #[error(transparent)]
    Shared(std::sync::Arc<LmError>),
}

/// A request the language model refuses; the state stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("prefix has {got} values, expected {positions} x {width}")]
    Prefix { got: usize, positions: usize, width: usize },
    #[error("{parents} parents for {tokens} tokens")]
    Count { parents: usize, tokens: usize },
    #[error("parent {parent} does not exist (batch of {batch})")]
    Parent { parent: usize, batch: usize },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    #[error("sequence would exceed {0} positions")]
    Positions(usize),
    #[error("step budget of {0} exhausted")]
    Budget(usize),
    #[error("rows of different lengths in one call, which a bundle of format 1 cannot take")]
    Lengths,
}

impl From<ort::Error> for LmError {
    fn from(e: ort::Error) -> Self {
        LmError::Runtime(RuntimeError::Ort(e))
    }
}

pub struct LanguageModel {
    session: Session,
    spec: LanguageModelSpec,
    prefix_length: usize,
    /// Whether the graph takes `attention_mask` and `position_ids` (bundle format 2).
    masked: bool,
    /// The most positions a sequence has before its last step: the prefix and all but one token.
    capacity: usize,
    past_names: Vec<String>,
    present_names: Vec<String>,
    /// Where the cache lives between steps (the leading provider's device).
    cache_memory: MemoryInfo<'static>,
    /// Where the logits and hidden states the decoders read go.
    host_memory: MemoryInfo<'static>,
}

/// The KV cache a run wrote: `present.{i}.key`, `present.{i}.value`, each [rows, heads, positions,
/// head_dim], in the cache memory. A row shorter than `positions` has padding on the left.
pub struct Block {
    cache: Vec<DynTensor>,
    rows: usize,
    positions: usize,
}

/// Row `row` of `block`, whose last `len` positions are real.
#[derive(Clone, Copy)]
pub struct RowRef<'b> {
    pub block: &'b Block,
    pub row: usize,
    pub len: usize,
}

/// How wide the cache of a step's rows is made when it is gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Every row padded to the most positions a caption can have, in every step: a row's numbers are
    /// then computed the same whatever shares its call, so a caption's tokens never depend on it.
    /// Each step gathers the cache anew.
    Full,
    /// Rows padded to the longest row of the call: less to read, and a call like the last one binds
    /// its cache as it is; the last bits of a row's logits depend on the padding, so on a near tie a
    /// token may differ from the caption's alone.
    Longest,
}

/// What a run returns: next-token logits [rows, vocab], last-layer states of the new positions
/// [rows, new, width], and the cache with them.
pub struct RunOutput {
    pub logits: Vec<f32>,
    pub hidden: Vec<f32>,
    pub new: usize,
    pub block: Block,
}

impl Block {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl LanguageModel {
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Self, LmError> {
        let m = &bundle.manifest;
        let spec = m.language_model.clone();
        let path = bundle.file(&spec.file);
        let masked = m.batches_captions();
        let (h, dh) = (spec.heads, spec.head_dim());
        // The sequence axes the runtime feeds: the prefix pass (the prefix, no ids, no past) and the
        // steps (one id a row, a past up to the prefix and the longest caption).
        let (k, longest) = (m.mapper.prefix_length, m.mapper.prefix_length + m.tokenizer.max_tokens);
        let past = Dim::Range {
            min: 0,
            opt: (k + longest) / 2,
            max: longest,
        };
        let kv = |name: String, len: Dim| TensorSpec::f32(name, vec![Dim::Dynamic, Dim::Fixed(h), len, Dim::Fixed(dh)]);
        let past_names: Vec<String> = (0..spec.layers)
            .flat_map(|i| [format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")])
            .collect();
        let present_names: Vec<String> = (0..spec.layers)
            .flat_map(|i| [format!("present.{i}.key"), format!("present.{i}.value")])
            .collect();
        let new = Dim::Range { min: 1, opt: 1, max: k };
        let mut inputs = vec![
            TensorSpec::f32(
                "prefix_embeds",
                vec![
                    Dim::Dynamic,
                    Dim::Range { min: 0, opt: k, max: k },
                    Dim::Fixed(spec.width),
                ],
            ),
            TensorSpec::i64("input_ids", vec![Dim::Dynamic, Dim::Range { min: 0, opt: 1, max: 1 }]),
        ];
        if masked {
            inputs.push(TensorSpec::i64(
                "attention_mask",
                vec![
                    Dim::Dynamic,
                    Dim::Range {
                        min: 1,
                        opt: (k + longest) / 2,
                        max: longest,
                    },
                ],
            ));
            inputs.push(TensorSpec::i64("position_ids", vec![Dim::Dynamic, new]));
        }
        inputs.extend(past_names.iter().map(|name| kv(name.clone(), past)));
        let mut outputs = vec![
            TensorSpec::f32("logits", vec![Dim::Dynamic, Dim::Fixed(spec.vocab_size)]),
            TensorSpec::f32(
                "hidden_states",
                vec![Dim::Dynamic, Dim::Dynamic, Dim::Fixed(spec.width)],
            ),
        ];
        outputs.extend(present_names.iter().map(|name| kv(name.clone(), Dim::Dynamic)));
        let (session, provider) = runtime.session(&path, &inputs)?;
        check_graph(&path, &GraphIo::of(&session), &inputs, &outputs)?;
        Ok(LanguageModel {
            session,
            spec,
            prefix_length: m.mapper.prefix_length,
            masked,
            capacity: longest - 1,
            past_names,
            present_names,
            cache_memory: runtime.device_memory(provider)?,
            host_memory: runtime.device_memory(Provider::Cpu)?,
        })
    }

    pub fn spec(&self) -> &LanguageModelSpec {
        &self.spec
    }

    pub fn prefix_length(&self) -> usize {
        self.prefix_length
    }

    /// Whether rows of different lengths (so of different captions) may share a call.
    pub fn batches_captions(&self) -> bool {
        self.masked
    }

    /// The prefix pass for `rows` images: `prefixes` is [rows, prefix_length, width], flattened.
    pub fn prefill(&mut self, prefixes: Vec<f32>, rows: usize) -> Result<RunOutput, LmError> {
        let (k, d) = (self.prefix_length, self.spec.width);
        if prefixes.len() != rows * k * d {
            return Err(StepError::Prefix {
                got: prefixes.len(),
                positions: k,
                width: d,
            }
            .into());
        }
        let past_shape = [rows, self.spec.heads, 0, self.spec.head_dim()];
        let past = (0..self.past_names.len())
            .map(|_| Ok(Tensor::from_array((past_shape, Vec::<f32>::new()))?.upcast()))
            .collect::<Result<Vec<DynTensor>, ort::Error>>()?;
        self.run(
            Tensor::from_array(([rows, k, d], prefixes))?,
            Tensor::from_array(([rows, 0], Vec::<i64>::new()))?,
            &past,
            &vec![0; rows],
            0,
            k,
        )
    }

    /// One token for each row: new row `i` is `rows[i]` followed by `tokens[i]`. The caller has
    /// checked tokens and lengths against the model (batch.rs); on a graph without a mask, every row
    /// must have the same length, and `padding` does not apply.
    pub fn step(&mut self, rows: &[RowRef], tokens: &[u32], padding: Padding) -> Result<RunOutput, LmError> {
        let n = rows.len();
        let lens: Vec<usize> = rows.iter().map(|r| r.len).collect();
        let mut longest = lens.iter().copied().max().unwrap_or(0);
        if !self.masked && lens.iter().any(|&l| l != longest) {
            return Err(StepError::Lengths.into());
        }
        let full = self.masked && padding == Padding::Full;
        if full {
            longest = longest.max(self.capacity);
        }
        let first = rows[0].block;
        let whole_block = !full
            && first.rows == n
            && rows
                .iter()
                .enumerate()
                .all(|(i, r)| std::ptr::eq(r.block, first) && r.row == i);
        // The state is replaced only after a successful run, so a failed step leaves it usable.
        let gathered: Vec<DynTensor>;
        let (past, positions) = if whole_block {
            (&first.cache, first.positions)
        } else {
            gathered = (0..self.present_names.len())
                .map(|layer| gather(rows, layer, longest, &self.spec))
                .collect::<Result<_, _>>()?;
            (&gathered, longest)
        };
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        self.run(
            Tensor::from_array(([n, 0, self.spec.width], Vec::<f32>::new()))?,
            Tensor::from_array(([n, 1], ids))?,
            past,
            &lens,
            positions,
            1,
        )
    }

    fn run(
        &mut self,
        // Owned, not views of the caller's data: ort's IoBinding copies a borrowed input through a
        // second binding, which deadlocks on ort's own lock (ort 2.0.0-rc.15).
        prefix: Tensor<f32>,
        ids: Tensor<i64>,
        past: &[DynTensor],
        lens: &[usize],
        past_positions: usize,
        new: usize,
    ) -> Result<RunOutput, LmError> {
        let batch = lens.len();
        let mut binding = self.session.create_binding()?;
        binding.bind_input("prefix_embeds", &prefix)?;
        binding.bind_input("input_ids", &ids)?;
        let (mask, positions);
        if self.masked {
            let total = past_positions + new;
            let mut m = vec![0i64; batch * total];
            let mut p = Vec::with_capacity(batch * new);
            for (row, &len) in lens.iter().enumerate() {
                m[row * total + past_positions - len..(row + 1) * total].fill(1);
                p.extend((len..len + new).map(|x| x as i64));
            }
            mask = Tensor::from_array(([batch, total], m))?;
            positions = Tensor::from_array(([batch, new], p))?;
            binding.bind_input("attention_mask", &mask)?;
            binding.bind_input("position_ids", &positions)?;
        }
        for (name, value) in self.past_names.iter().zip(past) {
            binding.bind_input(name.as_str(), value)?;
        }
        binding.bind_output_to_device("logits", &self.host_memory)?;
        binding.bind_output_to_device("hidden_states", &self.host_memory)?;
        for name in &self.present_names {
            binding.bind_output_to_device(name.as_str(), &self.cache_memory)?;
        }
        let mut out = self.session.run_binding(&binding)?;
        let (v, d) = (self.spec.vocab_size, self.spec.width);
        let total = past_positions + new;
        let logits = extract(&out["logits"], &[batch, v], "logits")?.to_vec();
        let hidden = extract(&out["hidden_states"], &[batch, new, d], "hidden_states")?.to_vec();
        let kv_shape = [batch, self.spec.heads, total, self.spec.head_dim()];
        let mut cache = Vec::with_capacity(self.present_names.len());
        for name in &self.present_names {
            let value = out
                .remove(name.as_str())
                .ok_or_else(|| RuntimeError::MissingOutput(name.clone()))?
                .downcast::<DynTensorValueType>()?;
            // Only the shape is checked here: the values may be in GPU memory.
            check_shape(value.shape(), &kv_shape, name)?;
            cache.push(value);
        }
        Ok(RunOutput {
            logits,
            hidden,
            new,
            block: Block {
                cache,
                rows: batch,
                positions: total,
            },
        })
    }
}

/// The data of an f32 output, refused unless its shape is `shape`: the graph declared dynamic axes,
/// so only the values it returns prove what it computed.
fn extract<'a>(value: &'a DynValue, shape: &[usize], name: &str) -> Result<&'a [f32], LmError> {
    let (got, data) = value.try_extract_tensor::<f32>()?;
    check_shape(got, shape, name)?;
    Ok(data)
}

fn check_shape(got: &[i64], shape: &[usize], name: &str) -> Result<(), LmError> {
    if got.len() != shape.len() || got.iter().zip(shape).any(|(&g, &s)| g as usize != s) {
        return Err(RuntimeError::Output {
            tensor: name.into(),
            shape: got.to_vec(),
            expected: format!("{shape:?}"),
        }
        .into());
    }
    Ok(())
}

/// Cache tensor `layer` of a new batch on the host: row `i` is the last `rows[i].len` positions of
/// `rows[i]`, padded on the left to `positions`. Source blocks may be on a GPU.
fn gather(rows: &[RowRef], layer: usize, positions: usize, spec: &LanguageModelSpec) -> Result<DynTensor, LmError> {
    let (heads, dh) = (spec.heads, spec.head_dim());
    let mut out = vec![0f32; rows.len() * heads * positions * dh];
    let mut on_host: Vec<(*const Block, DynTensor)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let t = &r.block.cache[layer];
        let t = if t.memory_info().is_cpu_accessible() {
            t
        } else {
            let key: *const Block = r.block;
            if !on_host.iter().any(|(b, _)| *b == key) {
                on_host.push((key, t.to(AllocationDevice::CPU, 0)?));
            }
            &on_host.iter().find(|(b, _)| *b == key).expect("copied above").1
        };
        let (_, data) = t.try_extract_tensor::<f32>()?;
        let from = r.block.positions;
        for h in 0..heads {
            let src = ((r.row * heads + h) * from + from - r.len) * dh;
            let dst = ((i * heads + h) * positions + positions - r.len) * dh;
            out[dst..dst + r.len * dh].copy_from_slice(&data[src..src + r.len * dh]);
        }
    }
    Ok(Tensor::from_array(([rows.len(), heads, positions, dh], out))?.upcast())
}
