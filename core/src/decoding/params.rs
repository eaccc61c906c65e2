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
    /// `beam` or `beam:num_beams=5,length_penalty=1.0`, each parameter once. The label is the spec
    /// in one canonical form (keys sorted, numbers as Rust prints them), so that `beam:num_beams=5.0`
    /// and `beam: num_beams = 5` are one decoder in metrics, logs and history.
    pub fn parse(spec: &str) -> Result<Self, RequestError> {
        let bad = |reason: String| RequestError::Spec {
            spec: spec.into(),
            reason,
        };
        let (decoder, args) = match spec.split_once(':') {
            Some((decoder, args)) => (decoder.trim(), Some(args)),
            None => (spec.trim(), None),
        };
        if decoder.is_empty() {
            return Err(bad("no decoder name".into()));
        }
        let mut params = BTreeMap::new();
        for item in args.into_iter().flat_map(|args| args.split(',')) {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| match item.trim() {
                    "" => bad("an empty parameter (a stray comma or colon)".into()),
                    _ => bad(format!("{item:?} is not key=value")),
                })?;
            if params
                .insert(key.to_string(), ParamValue::Text(canonical(value)))
                .is_some()
            {
                return Err(bad(format!("parameter `{key}` is given twice")));
            }
        }
        let mut label = decoder.to_string();
        for (i, (key, value)) in params.iter().enumerate() {
            label.push(if i == 0 { ':' } else { ',' });
            label.push_str(&format!("{key}={value}"));
        }
        DecoderRequest {
            label,
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

/// A finite number as Rust prints it (`5.0` and `5` alike as `5`); anything else as given.
fn canonical(value: &str) -> String {
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() => number.to_string(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_has_one_canonical_label() {
        for spec in [
            "beam:num_beams=5.0,length_penalty=1",
            "beam: length_penalty = 1.00 ,num_beams=5",
        ] {
            let request = DecoderRequest::parse(spec).unwrap();
            assert_eq!(request.label, "beam:length_penalty=1,num_beams=5", "{spec}");
            assert_eq!(request.decoder, "beam");
        }
        assert_eq!(DecoderRequest::parse("greedy").unwrap().label, "greedy");
        let isolated = DecoderRequest::parse("greedy:isolate=true").unwrap();
        assert_eq!(
            (isolated.label.as_str(), isolated.isolate),
            ("greedy:isolate=true", Some(true))
        );
    }

    #[test]
    fn malformed_specs_are_refused_with_the_reason() {
        for (spec, reason) in [
            ("beam:num_beams=5,num_beams=6", "parameter `num_beams` is given twice"),
            ("beam:num_beams=5,num_beams=5.0", "given twice"),
            ("beam:,,,", "an empty parameter"),
            ("beam:", "an empty parameter"),
            ("beam:num_beams=5,", "an empty parameter"),
            ("beam:num_beams", "\"num_beams\" is not key=value"),
            ("beam:=5", "\"=5\" is not key=value"),
            ("beam:num_beams=", "is not key=value"),
            (":num_beams=5", "no decoder name"),
        ] {
            let error = DecoderRequest::parse(spec).unwrap_err().to_string();
            assert!(error.contains(reason), "{spec}: {error}");
        }
    }
}
