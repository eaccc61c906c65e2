//! Which decoder to use, with which parameters: `name:key=value,...` from the command line or a
//! `[decoders.NAME]` table from the config, checked against what the plugin declares.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::RequestError;
use super::plugin::{DecoderInfo, ParamKind};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(s) => write!(f, "{s}"),
        }
    }
}

/// A decoder to instantiate: `label` names the instance in output (the config table's name, or the
/// command-line spec), `decoder` the plugin decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderRequest {
    pub label: String,
    pub decoder: String,
    pub params: BTreeMap<String, ParamValue>,
    /// Run the decoder in its own process (isolation/); `None` leaves it to the caller's default.
    pub isolate: Option<bool>,
}

impl DecoderRequest {
    /// `beam` or `beam:num_beams=5,length_penalty=1.0`.
    pub fn parse(spec: &str) -> Result<Self, RequestError> {
        let bad = |reason: String| RequestError::Spec {
            spec: spec.into(),
            reason,
        };
        let (decoder, args) = spec.split_once(':').unwrap_or((spec, ""));
        if decoder.is_empty() {
            return Err(bad("no decoder name".into()));
        }
        let mut params = BTreeMap::new();
        for item in args.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("{item:?} is not key=value")))?;
            params.insert(key.trim().to_string(), ParamValue::Text(value.trim().to_string()));
        }
        DecoderRequest {
            label: spec.to_string(),
            decoder: decoder.to_string(),
            params,
            isolate: None,
        }
        .with_isolate()
    }

    /// A `[decoders.NAME]` table; its `decoder` key names the plugin decoder (default: NAME).
    pub fn from_table(name: &str, table: &BTreeMap<String, ParamValue>) -> Result<Self, RequestError> {
        let mut params = table.clone();
        let decoder = match params.remove("decoder") {
            None => name.to_string(),
            Some(ParamValue::Text(d)) => d,
            Some(value) => {
                return Err(RequestError::Table {
                    table: name.into(),
                    value,
                });
            }
        };
        DecoderRequest {
            label: name.to_string(),
            decoder,
            params,
            isolate: None,
        }
        .with_isolate()
    }

    /// Moves the host's `isolate` key out of the parameters.
    fn with_isolate(mut self) -> Result<Self, RequestError> {
        let Some(value) = self.params.remove("isolate") else {
            return Ok(self);
        };
        self.isolate = Some(match &value {
            ParamValue::Bool(b) => *b,
            ParamValue::Text(t) if t == "true" => true,
            ParamValue::Text(t) if t == "false" => false,
            _ => {
                return Err(RequestError::BadValue {
                    decoder: self.decoder,
                    label: self.label,
                    param: "isolate".into(),
                    value,
                    reason: "expected true or false".into(),
                });
            }
        });
        Ok(self)
    }

    /// Values for the plugin's `create`, in its parameter order; unknown names, wrong types and
    /// out-of-range values are refused with the parameter named.
    pub fn values(&self, info: &DecoderInfo) -> Result<Vec<f64>, RequestError> {
        for key in self.params.keys() {
            if !info.params.iter().any(|p| &p.name == key) {
                let known: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
                let known = if known.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("it takes {}", known.join(", "))
                };
                return Err(RequestError::UnknownParam {
                    decoder: self.decoder.clone(),
                    label: self.label.clone(),
                    param: key.clone(),
                    known,
                });
            }
        }
        info.params
            .iter()
            .map(|p| {
                let Some(value) = self.params.get(&p.name) else {
                    return Ok(p.default);
                };
                let bad = |why: &str| RequestError::BadValue {
                    decoder: self.decoder.clone(),
                    label: self.label.clone(),
                    param: p.name.clone(),
                    value: value.clone(),
                    reason: why.into(),
                };
                let number = match (p.kind, value) {
                    (ParamKind::Bool, ParamValue::Bool(b)) => *b as u8 as f64,
                    (ParamKind::Bool, ParamValue::Text(t)) => match t.as_str() {
                        "true" | "1" => 1.0,
                        "false" | "0" => 0.0,
                        _ => return Err(bad("expected true or false")),
                    },
                    (ParamKind::Bool, _) => return Err(bad("expected true or false")),
                    (_, ParamValue::Int(i)) => *i as f64,
                    (_, ParamValue::Float(x)) => *x,
                    (_, ParamValue::Text(t)) => t.parse::<f64>().map_err(|_| bad("expected a number"))?,
                    (_, ParamValue::Bool(_)) => return Err(bad("expected a number")),
                };
                if p.kind == ParamKind::Int && number.fract() != 0.0 {
                    return Err(bad("expected an integer"));
                }
                if !(p.min..=p.max).contains(&number) {
                    return Err(bad(&format!("out of range [{}, {}]", p.min, p.max)));
                }
                Ok(number)
            })
            .collect()
    }
}
