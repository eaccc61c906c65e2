//! The commands of the command line, one module each (or each group): their arguments, and what they
//! run. Each loads only what it needs: the configuration (with `--config`) for those that caption,
//! serve or subscribe; none for `score` and the hidden `decoder-host`.

pub mod bench;
pub mod caption;
pub mod decoder_host;
pub mod eval;
pub mod plugins;
pub mod report;
pub mod score;
pub mod serve;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clipcap::config::Config;
use clipcap::decoders::DecoderFactory;
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::DecoderInstance;
use clipcap_core::runtime::Runtime;

/// Exit status when some images could not be captioned; the others still were.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit status when nothing could run (bad configuration, bundle, decoder or ONNX Runtime).
pub const EXIT_SETUP: u8 = 2;

/// Success, or `EXIT_SOME_FAILED` when `failed`.
fn status(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(EXIT_SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The decoders and seed of the commands that caption (`caption`, `bench`, `eval`).
#[derive(clap::Args)]
pub struct DecoderArgs {
    /// Decoder: a [decoders.NAME] of the config or NAME:key=value,... (e.g. beam:num_beams=5).
    /// Repeat to compare decoders on the same images (`bench`: the first is the baseline of the
    /// ratios). Default: decoding.decoder of the config.
    #[arg(long = "decoder", value_name = "DECODER")]
    decoders: Vec<String>,
    /// Seed of the decoders' random stream. Default: decoding.seed.
    #[arg(long)]
    seed: Option<u64>,
}

impl DecoderArgs {
    /// The named decoders (or the config's default decoder when none is named), and the seed.
    fn create(&self, config: &Config, factory: &DecoderFactory) -> anyhow::Result<(Vec<DecoderInstance>, u64)> {
        let default = [config.decoding.decoder.clone()];
        let names = if self.decoders.is_empty() {
            &default[..]
        } else {
            &self.decoders
        };
        let decoders = names
            .iter()
            .map(|n| create(factory, n))
            .collect::<anyhow::Result<_>>()?;
        Ok((decoders, self.seed(config)))
    }

    /// `lanes` sets of the decoders, one for each thread of `--concurrency`, and the seed.
    fn create_lanes(
        &self,
        config: &Config,
        factory: &DecoderFactory,
        lanes: usize,
    ) -> anyhow::Result<(Vec<Vec<DecoderInstance>>, u64)> {
        let sets = (0..lanes)
            .map(|_| Ok(self.create(config, factory)?.0))
            .collect::<anyhow::Result<_>>()?;
        Ok((sets, self.seed(config)))
    }

    fn seed(&self, config: &Config) -> u64 {
        self.seed.unwrap_or(config.decoding.seed)
    }
}

fn create(factory: &DecoderFactory, name: &str) -> anyhow::Result<DecoderInstance> {
    factory.create(name).with_context(|| format!("decoder {name:?}"))
}

/// The decoder factory of `config`, over the plugins its `[plugins]` loads.
fn factory(config: &Config) -> DecoderFactory {
    let plugins = clipcap_core::decoding::Plugins::load(&config.plugin_options());
    DecoderFactory::new(config, std::sync::Arc::new(plugins))
}

/// The bundle in `dir` (verified when security.require_signed) and its captioner.
fn load_captioner(config: &Config, dir: &Path) -> anyhow::Result<(Bundle, Captioner)> {
    let bundle = config.security.open_bundle(dir)?;
    let runtime = Runtime::init(&config.runtime)?;
    let captioner = Captioner::load(&bundle, &runtime, config.captioning.batching())?;
    Ok((bundle, captioner))
}

/// Prints a comparison table (Markdown, or JSON with `--json`) and writes its files into `--out`.
fn emit(table: &impl clipcap::table::Table, json: bool, out: Option<PathBuf>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(table)?);
    } else {
        print!("{}", table.markdown());
    }
    if let Some(out) = out {
        table.write(&out)?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}
