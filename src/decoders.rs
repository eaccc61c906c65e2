//! Decoders as the configuration names them: a `[decoders.NAME]` table, or a `name:key=value,...`
//! spec, created from the loaded plugins, in their own process when `[plugins]` says so. The commands
//! that caption and the daemon (its configured decoders, and those uploads name) make them here.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use clipcap_core::decoding::{DecoderInstance, DecoderRequest, ParamValue, Plugins, RequestError};

/// The parameter that sets how many rows each step of a caption runs (beam search's).
const BEAMS: &str = "num_beams";

/// An upload's decoder that is not made.
#[derive(Debug, thiserror::Error)]
pub enum UploadDecoderError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("decoder {label}: {beams} beams are more than the {max} uploads may ask for (service.upload_max_beams)")]
    Beams { label: String, beams: f64, max: u32 },
}

/// Makes decoders by name.
pub struct DecoderFactory {
    plugins: Arc<Plugins>,
    tables: BTreeMap<String, BTreeMap<String, ParamValue>>,
    /// plugins.isolate: decoders that do not say otherwise run in their own process.
    isolate: bool,
    /// plugins.isolate_compare: the same for the decoders of captioning.compare.
    isolate_compare: bool,
}

impl DecoderFactory {
    pub fn new(config: &Config, plugins: Arc<Plugins>) -> DecoderFactory {
        DecoderFactory {
            plugins,
            tables: config.decoders.clone(),
            isolate: config.plugins.isolate,
            isolate_compare: config.plugins.isolate_compare,
        }
    }

    /// The decoder `name` stands for; in its own process if it says `isolate = true`, or says nothing
    /// and plugins.isolate is true.
    pub fn create(&self, name: &str) -> Result<DecoderInstance, RequestError> {
        self.plugins.create(&self.request(name)?, self.isolate)
    }

    /// As `create`, for an upload: refused when its beams (its `num_beams` parameter, given or the
    /// decoder's default) are more than `max_beams`, each beam a row of every model step.
    pub fn create_for_upload(&self, name: &str, max_beams: u32) -> Result<DecoderInstance, UploadDecoderError> {
        let request = self.request(name)?;
        let info = self.plugins.decoders().iter().find(|d| d.name == request.decoder);
        if let Some(info) = info
            && let Some(at) = info.params.iter().position(|p| p.name == BEAMS)
        {
            let beams = request.values(info)?[at];
            if beams > f64::from(max_beams) {
                return Err(UploadDecoderError::Beams {
                    label: request.label,
                    beams,
                    max: max_beams,
                });
            }
        }
        Ok(self.plugins.create(&request, self.isolate)?)
    }

    /// As `create`, for captioning.compare: isolated by default (plugins.isolate_compare).
    pub fn create_compared(&self, name: &str) -> Result<DecoderInstance, RequestError> {
        self.plugins.create(&self.request(name)?, self.isolate_compare)
    }

    /// The request `name` stands for: a `[decoders.NAME]` table, else a `name:key=value,...` spec.
    fn request(&self, name: &str) -> Result<DecoderRequest, RequestError> {
        match self.tables.get(name) {
            Some(table) => DecoderRequest::from_table(name, table),
            None => DecoderRequest::parse(name),
        }
    }

    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// The names of the `[decoders.NAME]` tables.
    pub fn configured(&self) -> impl Iterator<Item = &String> {
        self.tables.keys()
    }
}

/// The daemon's configured decoders, created (and so checked) before it starts.
pub struct Decoders {
    pub default: DecoderInstance,
    pub fallback: Option<DecoderInstance>,
    pub compare: Vec<DecoderInstance>,
}

impl Decoders {
    /// decoding.decoder, decoding.fallback and (with `compare`; uploads are never compared)
    /// captioning.compare, each error naming its key.
    pub fn create(factory: &DecoderFactory, config: &Config, compare: bool) -> anyhow::Result<Decoders> {
        let create = |key: &str, name: &str| -> anyhow::Result<DecoderInstance> {
            factory.create(name).with_context(|| format!("{key} = {name:?}"))
        };
        let fallback = &config.decoding.fallback;
        Ok(Decoders {
            default: create("decoding.decoder", &config.decoding.decoder)?,
            fallback: (!fallback.is_empty())
                .then(|| create("decoding.fallback", fallback))
                .transpose()?,
            compare: config
                .captioning
                .compare
                .iter()
                .filter(|_| compare)
                .map(|n| {
                    factory
                        .create_compared(n)
                        .with_context(|| format!("captioning.compare = {n:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Every configured decoder's label: these always have their own metric series.
    pub fn labels(&self) -> Vec<String> {
        std::iter::once(&self.default)
            .chain(&self.fallback)
            .chain(&self.compare)
            .map(|d| d.label().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_tables_become_requests() {
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[decoders.beam5]\ndecoder = \"beam\"\nnum_beams = 5\n[decoders.sample]\ntop_p = 0.9\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let no_plugins = clipcap_core::decoding::PluginOptions {
            directories: Vec::new(),
            ..config.plugin_options()
        };
        let factory = DecoderFactory::new(&config, Arc::new(Plugins::load(&no_plugins)));
        let beam5 = factory.request("beam5").unwrap();
        assert_eq!((beam5.label.as_str(), beam5.decoder.as_str()), ("beam5", "beam"));
        assert_eq!(beam5.params["num_beams"], ParamValue::Int(5));
        assert_eq!(
            factory.request("sample").unwrap().params["top_p"],
            ParamValue::Float(0.9)
        );
        let spec = factory.request("beam:num_beams=3").unwrap();
        assert_eq!(
            (spec.decoder.as_str(), &spec.params["num_beams"]),
            ("beam", &ParamValue::Text("3".into()))
        );
        assert_eq!(factory.configured().collect::<Vec<_>>(), ["beam5", "sample"]);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("clipcap-decoders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
