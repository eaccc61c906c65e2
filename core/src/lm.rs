//! The language-model session: a prefix pass, then one step at a time for a batch of sequences,
//! with the KV cache kept here so decoders never see it.
//!
//! A step is a list of (parent sequence, next token) pairs: sequence `i` of the new batch continues
//! sequence `parents[i]` of the old one. The identity (greedy, or every beam keeping its place) reuses
//! the cache tensors as they are; anything else (beams reordered, forked or dropped) gathers their
//! rows first. All sequences of a batch have the same length, so no attention mask is needed.
//!
//! Runs go through an IoBinding: the cache (`present.*`) is written to the memory of the device that
//! leads the session (the GPU's for CUDA and TensorRT) and bound, as it is, as the next step's past, so
//! it never crosses to the host between steps; only the logits and hidden states do. Reordering beams
//! gathers rows on the host (the graph has no gather input), one copy each way when beams move.

use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::Session;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor};

use crate::bundle::{Bundle, BundleError, Dim, LanguageModelSpec, TensorSpec, check_graph};
use crate::runtime::{Provider, Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("invalid step: {0}")]
    Step(#[from] StepError),
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
    past_names: Vec<String>,
    present_names: Vec<String>,
    /// Where the cache lives between steps (the leading provider's device).
    cache_memory: MemoryInfo<'static>,
    /// Where the logits and hidden states the decoders read go.
    host_memory: MemoryInfo<'static>,
}

/// The state of one generation: the cache and the last outputs of every live sequence.
pub struct LmState {
    batch: usize,
    /// Positions processed so far (prefix plus tokens), the same for every sequence.
    len: usize,
    /// `present.{i}.key`, `present.{i}.value` of the last run: [batch, heads, len, head_dim], in
    /// `cache_memory`.
    cache: Vec<DynTensor>,
    logits: Vec<f32>,
    /// Last-layer states of the positions the last run added: [batch, new, width].
    hidden: Vec<f32>,
    new: usize,
}

impl LmState {
    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    /// Next-token logits of sequence `seq` [vocab_size].
    pub fn logits(&self, seq: usize) -> &[f32] {
        let v = self.logits.len() / self.batch;
        &self.logits[seq * v..(seq + 1) * v]
    }

    /// Last-layer hidden state of sequence `seq` at its last position [width].
    pub fn hidden(&self, seq: usize) -> &[f32] {
        let added = self.added_hidden(seq);
        &added[added.len() - added.len() / self.new..]
    }

    /// Last-layer states of every position the last run added to `seq` [new, width]: the whole
    /// prefix after `start`, one position after a step.
    pub fn added_hidden(&self, seq: usize) -> &[f32] {
        let per_seq = self.hidden.len() / self.batch;
        &self.hidden[seq * per_seq..(seq + 1) * per_seq]
    }
}

impl LanguageModel {
    pub fn load(bundle: &Bundle, runtime: &Runtime) -> Result<Self, LmError> {
        let m = &bundle.manifest;
        let spec = m.language_model.clone();
        let path = bundle.file(&spec.file);
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
        check_graph(&path, &session, &inputs, &outputs)?;
        Ok(LanguageModel {
            session,
            spec,
            prefix_length: m.mapper.prefix_length,
            past_names,
            present_names,
            cache_memory: runtime.device_memory(provider)?,
            host_memory: runtime.device_memory(Provider::Cpu)?,
        })
    }

    pub fn spec(&self) -> &LanguageModelSpec {
        &self.spec
    }

    /// Runs the prefix pass for one image: `prefix` is [prefix_length, width], flattened.
    pub fn start(&mut self, prefix: &[f32]) -> Result<LmState, LmError> {
        let (k, d) = (self.prefix_length, self.spec.width);
        if prefix.len() != k * d {
            return Err(StepError::Prefix {
                got: prefix.len(),
                positions: k,
                width: d,
            }
            .into());
        }
        let past_shape = [1, self.spec.heads, 0, self.spec.head_dim()];
        let past = (0..self.past_names.len())
            .map(|_| Ok(Tensor::from_array((past_shape, Vec::<f32>::new()))?.upcast()))
            .collect::<Result<Vec<DynTensor>, ort::Error>>()?;
        self.run(
            Tensor::from_array(([1, k, d], prefix.to_vec()))?,
            Tensor::from_array(([1, 0], Vec::<i64>::new()))?,
            &past,
            1,
            0,
            k,
        )
    }

    /// Advances `state`: sequence `i` of the new batch is old sequence `parents[i]` followed by `tokens[i]`.
    pub fn step(&mut self, state: &mut LmState, parents: &[usize], tokens: &[u32]) -> Result<(), LmError> {
        let n = parents.len();
        if n == 0 || n != tokens.len() {
            return Err(StepError::Count {
                parents: n,
                tokens: tokens.len(),
            }
            .into());
        }
        if let Some(&parent) = parents.iter().find(|&&p| p >= state.batch) {
            return Err(StepError::Parent {
                parent,
                batch: state.batch,
            }
            .into());
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= self.spec.vocab_size) {
            return Err(StepError::Token {
                token,
                vocab: self.spec.vocab_size,
            }
            .into());
        }
        if state.len + 1 > self.spec.max_positions {
            return Err(StepError::Positions(self.spec.max_positions).into());
        }
        // The state is replaced only after a successful run, so a failed step leaves it usable.
        let identity = n == state.batch && parents.iter().enumerate().all(|(i, &p)| i == p);
        let gathered: Vec<DynTensor> = if identity {
            Vec::new()
        } else {
            state
                .cache
                .iter()
                .map(|t| gather_rows(t, parents))
                .collect::<Result<_, _>>()?
        };
        let past = if identity { &state.cache } else { &gathered };
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let next = self.run(
            Tensor::from_array(([n, 0, self.spec.width], Vec::<f32>::new()))?,
            Tensor::from_array(([n, 1], ids))?,
            past,
            n,
            state.len,
            1,
        )?;
        *state = next;
        Ok(())
    }

    fn run(
        &mut self,
        // Owned, not views of the caller's data: ort's IoBinding copies a borrowed input through a
        // second binding, which deadlocks on ort's own lock (ort 2.0.0-rc.15).
        prefix: Tensor<f32>,
        ids: Tensor<i64>,
        past: &[DynTensor],
        batch: usize,
        past_len: usize,
        new: usize,
    ) -> Result<LmState, LmError> {
        let mut binding = self.session.create_binding()?;
        binding.bind_input("prefix_embeds", &prefix)?;
        binding.bind_input("input_ids", &ids)?;
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
        let len = past_len + new;
        let logits = extract(&out["logits"], &[batch, v], "logits")?.to_vec();
        let hidden = extract(&out["hidden_states"], &[batch, new, d], "hidden_states")?.to_vec();
        let kv_shape = [batch, self.spec.heads, len, self.spec.head_dim()];
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
        Ok(LmState {
            batch,
            len,
            cache,
            logits,
            hidden,
            new,
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

/// A new host tensor whose row `i` (first axis) is row `rows[i]` of `t`, which may be on a GPU.
fn gather_rows(t: &DynTensor, rows: &[usize]) -> Result<DynTensor, LmError> {
    let on_host;
    let t = if t.memory_info().is_cpu_accessible() {
        t
    } else {
        on_host = t.to(AllocationDevice::CPU, 0)?;
        &on_host
    };
    let (shape, data) = t.try_extract_tensor::<f32>()?;
    let row = data.len() / shape[0] as usize;
    let mut out = Vec::with_capacity(row * rows.len());
    for &r in rows {
        out.extend_from_slice(&data[r * row..(r + 1) * row]);
    }
    let mut new_shape: Vec<i64> = shape.to_vec();
    new_shape[0] = rows.len() as i64;
    Ok(Tensor::from_array((new_shape, out))?.upcast())
}
