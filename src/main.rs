//! The `clipcap` command line: parses the arguments and runs the commands of the library (src/lib.rs);
//! `serve` is the daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clipcap_core::bundle::Bundle;
use clipcap_core::captioner::Captioner;
use clipcap_core::decoding::{DecoderInstance, HostArgs, Plugins, decoder_host};
use clipcap_core::imageio;
use clipcap_core::runtime::Runtime;

use clipcap::config::Config;
use clipcap::{bench, eval, report, service};

#[derive(Parser)]
#[command(
    name = "clipcap",
    version,
    about = "Image captioning with CLIP, a mapping network and GPT-2"
)]
struct Cli {
    /// Configuration file (TOML; see config.toml for every key). Environment variables
    /// CLIPCAP__SECTION__KEY override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The decoders and seed of the commands that caption (`caption`, `bench`, `eval`).
#[derive(clap::Args)]
struct DecoderArgs {
    /// Decoder: a [decoders.NAME] of the config or NAME:key=value,... (e.g. beam:num_beams=5).
    /// Repeat to compare decoders on the same images (`bench`: the first is the baseline of the
    /// ratios). Default: decoding.decoder of the config.
    #[arg(long = "decoder", value_name = "DECODER")]
    decoders: Vec<String>,
    /// Seed of the decoders' random stream. Default: decoding.seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Caption image files, one line per image and decoder.
    Caption {
        /// Model bundle folder (docs/bundle.md).
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        #[command(flatten)]
        decoding: DecoderArgs,
        /// Decoder used for an image when the chosen one fails on it. Default: decoding.fallback.
        #[arg(long, value_name = "DECODER")]
        fallback: Option<String>,
        /// JSON lines: image, decoder, caption, token_ids, steps, per-stage milliseconds (or image and error).
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Time each stage and each decoder on the same images, in one process.
    Bench {
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        #[command(flatten)]
        decoding: DecoderArgs,
        /// Measured rounds over the images, after one warm-up round.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Compare decoders (and bundles) on a folder of images: metrics, CLIPScore, diversity, latency,
    /// and paired-bootstrap intervals; Markdown on stdout, and with --out also CSV, JSON and a plot.
    Eval {
        /// Model bundle folder; repeat to compare bundles (the prefix-length study).
        #[arg(long = "bundle", value_name = "DIR", required = true)]
        bundles: Vec<PathBuf>,
        /// Folder of the images.
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        /// COCO annotations (images with file_name, and captions) for the reference-based metrics;
        /// without them, the reference-free columns only.
        #[arg(long, value_name = "FILE")]
        annotations: Option<PathBuf>,
        #[command(flatten)]
        decoding: DecoderArgs,
        /// Folder for eval.md, eval.csv, eval.json and eval.svg.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Bootstrap resamples for the intervals.
        #[arg(long, default_value_t = 1000)]
        draws: usize,
        #[arg(long)]
        json: bool,
    },
    /// The decoder comparison of daemons' caption logs (captioning.compare), reference-free, with the
    /// people's votes (captioning.votes) as pairwise win rates.
    Report {
        /// Caption logs (service.caption_log), one per device or run.
        #[arg(required_unless_present = "mqtt", value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// Instead of logs: subscribe to this broker (mqtt:// or mqtts://; the credentials and
        /// certificates of [publish] in the config) and report what the fleet publishes.
        #[arg(long, value_name = "URL", conflicts_with = "logs")]
        mqtt: Option<String>,
        /// With --mqtt: the topic filter of the devices' records.
        #[arg(long, value_name = "FILTER", default_value = "clipcap/+/captions", requires = "mqtt")]
        topic: String,
        /// With --mqtt: how long to collect before reporting (e.g. 30s, 10m, 2h).
        #[arg(long, value_name = "DURATION", default_value = "60s", requires = "mqtt")]
        listen: humantime::Duration,
        /// Folder for report.md, report.csv, report.json and report.svg.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        draws: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Score captions against references as pycocoevalcap does (BLEU-1..4, ROUGE-L, CIDEr-D); no model.
    Score {
        /// COCO results file: [{"image_id": ..., "caption": ...}, ...], one caption per image.
        #[arg(long, value_name = "FILE")]
        results: PathBuf,
        /// COCO annotations file: {"annotations": [{"image_id": ..., "caption": ...}, ...], ...}.
        #[arg(long, value_name = "FILE")]
        annotations: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The captioning daemon: camera or folder in, captions out over HTTP (docs/api.md).
    Serve {
        /// Model bundle folder; default: service.bundle of the config.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
    },
    /// Check a configuration, and the bundle, plugins and decoders it names, without starting.
    CheckConfig {
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
    },
    /// Decoder plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// The process an isolated decoder runs in (plugins.isolate); clipcap starts it itself, with its
    /// socket and shared memory on descriptors 3 and 4.
    #[command(hide = true)]
    DecoderHost {
        plugin: PathBuf,
        decoder: String,
        #[arg(long)]
        label: String,
        #[arg(long)]
        memory_mb: u64,
        #[arg(long)]
        allow_insecure: bool,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Every decoder found (plugin, version, ABI, parameters) and every library refused, with why.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Exit status when some images could not be captioned; the others still were.
const EXIT_SOME_FAILED: u8 = 1;
/// Exit status when nothing could run (bad configuration, bundle, decoder or ONNX Runtime).
const EXIT_SETUP: u8 = 2;

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli, started) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = ["warn", "info", "debug"][verbose.min(2) as usize];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let plugins = || Plugins::load(&config.plugins.options());
    match cli.command {
        Command::DecoderHost {
            plugin,
            decoder,
            label,
            memory_mb,
            allow_insecure,
        } => {
            let args = HostArgs {
                plugin,
                decoder,
                label,
                allow_insecure,
                memory_mb,
            };
            decoder_host(&args).map_err(|e| anyhow::anyhow!("decoder-host {}: {e}", args.label))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { bundle } => {
            service::run(config.clone(), &bundle_path(&config, bundle)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { bundle } => {
            let bundle = bundle_path(&config, bundle)?;
            let loaded = service::load(&config, &bundle, &config.plugins.options())?;
            Captioner::load(&loaded.bundle, &Runtime::init(&config.runtime)?)?;
            let d = &loaded.decoders;
            // Each decoder as it will run: isolated ones have started their process to get here.
            let named = |d: &DecoderInstance| {
                let place = if d.isolated() { "own process" } else { "in process" };
                format!("{} ({place})", d.label())
            };
            let fallback = d
                .fallback
                .as_ref()
                .map(|f| format!(", fallback {}", named(f)))
                .unwrap_or_default();
            let compared: Vec<String> = d.compare.iter().map(named).collect();
            let compared = if compared.is_empty() {
                String::new()
            } else {
                format!(", compared {}", compared.join(", "))
            };
            println!(
                "configuration ok: bundle {}, decoder {}{fallback}{compared}; {} decoders available",
                bundle.display(),
                named(&d.default),
                loaded.plugins.decoders().len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Caption {
            bundle,
            decoding,
            fallback,
            json,
            images,
        } => {
            let plugins = plugins();
            let (mut decoders, seed) = decoding.create(&config, &plugins)?;
            let fallback = fallback.unwrap_or_else(|| config.decoding.fallback.clone());
            let mut fallback = (!fallback.is_empty())
                .then(|| create(&config, &plugins, &fallback))
                .transpose()?;
            let mut captioner = load_captioner(&config, &bundle)?;
            let failed = caption(&mut captioner, &mut decoders, fallback.as_mut(), seed, json, &images)?;
            Ok(if failed {
                ExitCode::from(EXIT_SOME_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bench {
            bundle,
            decoding,
            runs,
            json,
            images,
        } => {
            let (mut decoders, seed) = decoding.create(&config, &plugins())?;
            let mut captioner = load_captioner(&config, &bundle)?;
            let prepared = images
                .iter()
                .map(|p| Ok(captioner.prepare(&imageio::load_file(p)?)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opened = Bundle::open(&bundle)?;
            let lm_file = opened.file(&opened.manifest.language_model.file);
            let setup = bench::Setup {
                images: &prepared,
                runs,
                seed,
                started,
                threads: match config.runtime.intra_threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                },
                lm_weight_bytes: std::fs::metadata(&lm_file)
                    .with_context(|| lm_file.display().to_string())?
                    .len(),
            };
            let report = bench::run(&mut captioner, &mut decoders, &setup)?;
            print_bench(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            bundles,
            images,
            annotations,
            decoding,
            out,
            draws,
            json,
        } => {
            let (mut decoders, seed) = decoding.create(&config, &plugins())?;
            let images = eval::images(&images, annotations.as_deref())?;
            let runtime = Runtime::init(&config.runtime)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("Ctrl-C handler")?;
            let progress = indicatif::ProgressBar::new((bundles.len() * images.len() * decoders.len()) as u64)
                .with_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} captions, ETA {eta}")
                        .expect("a valid template"),
                );
            let plan = eval::Plan {
                bundles: &bundles,
                images: &images,
                decoders: &mut decoders,
                runtime: &runtime,
                seed,
                draws,
            };
            let report = eval::run(plan, &stop, &progress)?;
            progress.finish_and_clear();
            emit(&report, json, out)?;
            Ok(if report.interrupted {
                ExitCode::from(EXIT_SOME_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Report {
            logs,
            mqtt,
            topic,
            listen,
            out,
            draws,
            seed,
            json,
        } => {
            let logs = match mqtt {
                Some(url) => {
                    let broker = clipcap::config::PublishConfig {
                        url,
                        ..config.publish.clone()
                    };
                    report::subscribe(&broker, &topic, listen.into())?
                }
                None => report::read(&logs)?,
            };
            emit(&report::report(&logs, draws, seed), json, out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            results,
            annotations,
            json,
        } => {
            score(&results, &annotations, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins {
            command: PluginsCommand::List { json },
        } => {
            list_plugins(&plugins(), json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Why METEOR and SPICE are not among the scores.
const NOT_SCORED: &str = "METEOR and SPICE are not computed here (they need Java and model downloads); \
                          `clipcap-export evaluate` computes them with pycocoevalcap";

/// Prints a comparison table (Markdown, or JSON with `--json`) and writes its files into `--out`.
fn emit(table: &impl eval::Table, json: bool, out: Option<PathBuf>) -> anyhow::Result<()> {
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

fn score(results: &std::path::Path, annotations: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use clipcap_core::metrics::{self, coco};
    let coco::Paired {
        ids,
        captions,
        references,
    } = coco::pair(
        coco::read_results(results)?,
        results,
        coco::read_annotations(annotations)?,
        annotations,
    )?;
    let raw: Vec<&str> = captions.iter().map(String::as_str).collect();
    let (captions, references) = metrics::tokenize(&raw, &references);
    let scores = metrics::per_image(&captions, &references).all();
    let cider_note = (ids.len() == 1).then_some(
        "CIDEr-D takes its document frequencies from the evaluated images; with one image it is 0 by definition",
    );
    if json {
        let mut out = serde_json::to_value(&scores)?;
        out["images"] = ids.len().into();
        out["notes"] = serde_json::json!([NOT_SCORED].iter().chain(&cider_note).collect::<Vec<_>>());
        println!("{out}");
        return Ok(());
    }
    println!("{} images", ids.len());
    println!("| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|---|");
    let b = scores.bleu;
    println!(
        "| {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
        b[0], b[1], b[2], b[3], scores.rouge_l, scores.cider_d
    );
    for note in [NOT_SCORED].iter().chain(&cider_note) {
        println!("note: {note}");
    }
    Ok(())
}

/// `--bundle`, else service.bundle of the config.
fn bundle_path(config: &Config, flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bundle = flag.unwrap_or_else(|| config.service.bundle.clone());
    anyhow::ensure!(
        !bundle.as_os_str().is_empty(),
        "no bundle: pass --bundle or set service.bundle in the config"
    );
    Ok(bundle)
}

fn load_captioner(config: &Config, bundle: &std::path::Path) -> anyhow::Result<Captioner> {
    let bundle = Bundle::open(bundle)?;
    let runtime = Runtime::init(&config.runtime)?;
    Ok(Captioner::load(&bundle, &runtime)?)
}

/// Captions every image with every decoder; true when some failed.
fn caption(
    captioner: &mut Captioner,
    decoders: &mut [DecoderInstance],
    mut fallback: Option<&mut DecoderInstance>,
    seed: u64,
    json: bool,
    images: &[PathBuf],
) -> anyhow::Result<bool> {
    let mut failed = false;
    for path in images {
        let prepared = imageio::load_file(path)
            .map_err(anyhow::Error::from)
            .and_then(|img| Ok(captioner.prepare(&img)?));
        for decoder in decoders.iter_mut() {
            let result = prepared
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|p| Ok(captioner.decode(p, decoder, fallback.as_deref_mut(), seed)?));
            match result {
                Ok(c) if json => {
                    let mut line = serde_json::to_value(&c)?;
                    line["image"] = serde_json::json!(path);
                    println!("{line}");
                }
                // One line per caption, even when a model emits line breaks.
                Ok(c) => println!(
                    "{} [{}]: {}",
                    path.display(),
                    c.decoder,
                    c.caption.replace(['\n', '\r'], " ")
                ),
                Err(e) => {
                    failed = true;
                    eprintln!("error: {e:#}");
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"image": path, "decoder": decoder.label(), "error": format!("{e:#}")})
                        );
                    }
                }
            }
        }
    }
    Ok(failed)
}

fn print_bench(report: &bench::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "{:<30} {:>9} {:>10} {:>7} {:>6} {:>11} {:>7} {:>13} {:>6} {:>9} {:>9} {:>7}",
        "decoder (medians)",
        "encode",
        "decode",
        "x base",
        "steps",
        "model/step",
        "x bound",
        "decoder/step",
        "share",
        "p50",
        "p95",
        "capt/s"
    );
    for r in &report.decoders {
        println!(
            "{:<30} {:>7.1}ms {:>8.1}ms {:>7.2} {:>6.0} {:>9.2}ms {:>7.2} {:>11.3}ms {:>5.1}% {:>7.1}ms {:>7.1}ms {:>7.2}",
            r.decoder,
            r.encode_ms,
            r.decode_ms,
            r.decode_ratio,
            r.steps,
            r.model_ms_per_step,
            r.bound_ratio,
            r.decoder_ms_per_step,
            100.0 * r.decoder_ms_per_step / (r.model_ms_per_step + r.decoder_ms_per_step),
            r.p50_ms,
            r.p95_ms,
            r.captions_per_s,
        );
    }
    let m = &report.machine;
    println!(
        "memory bound: {:.1} MB of LM weights / {:.1} GB/s read ({} threads) = {:.2} ms a step; \
         first caption {:.0} ms after start; peak RSS {:.0} MB",
        m.lm_weight_bytes as f64 / 1e6,
        m.read_gb_per_s,
        m.threads,
        m.step_bound_ms,
        m.first_caption_ms,
        m.peak_rss_mb
    );
    Ok(())
}

impl DecoderArgs {
    /// The named decoders (or the config's default decoder when none is named), and the seed.
    fn create(&self, config: &Config, plugins: &Plugins) -> anyhow::Result<(Vec<DecoderInstance>, u64)> {
        let default = [config.decoding.decoder.clone()];
        let names = if self.decoders.is_empty() {
            &default[..]
        } else {
            &self.decoders
        };
        let decoders = names
            .iter()
            .map(|n| create(config, plugins, n))
            .collect::<anyhow::Result<_>>()?;
        Ok((decoders, self.seed.unwrap_or(config.decoding.seed)))
    }
}

fn create(config: &Config, plugins: &Plugins, name: &str) -> anyhow::Result<DecoderInstance> {
    config
        .create_decoder(plugins, name)
        .with_context(|| format!("decoder {name:?}"))
}

fn list_plugins(plugins: &Plugins, json: bool) {
    if json {
        println!("{}", serde_json::to_string(plugins).expect("plugins serialise"));
        return;
    }
    for d in plugins.decoders() {
        println!(
            "{}  ({} {}, ABI {}, {})",
            d.name,
            d.plugin,
            d.plugin_version,
            d.abi_version,
            d.path.display()
        );
        println!("    {}", d.description);
        for p in &d.params {
            println!(
                "    {} ({}, default {}, range [{}, {}]): {}",
                p.name,
                p.kind.name(),
                p.default,
                p.min,
                p.max,
                p.description
            );
        }
    }
    for r in plugins.refused() {
        println!("refused {r}");
    }
    if plugins.decoders().is_empty() {
        println!("no decoders found; check plugins.directories in the config");
    }
}
