//! The GPU execution providers' options, as ONNX Runtime's key/value strings. They are built here, where
//! tests check them without a GPU, and `Runtime::session` hands them over with `with_arbitrary_config`.
//!
//! TensorRT builds an engine for a range of input shapes, an optimisation profile. Each graph declares
//! its range ([`Profile`]) from the bundle: batch 1 to `tensorrt_max_batch` (beams), the sequence axes
//! from empty to the prefix length plus the longest caption. So engines are built once, not once per
//! length, and with `tensorrt_cache` set they are kept on disk for the next start.

use serde::Deserialize;

use super::RuntimeOptions;

/// How the CUDA provider grows its memory arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arena {
    /// Doubles each time it grows: fewer allocations, up to twice the memory.
    NextPowerOfTwo,
    /// Grows by what was asked: the least memory.
    SameAsRequested,
}

/// One axis of an input in a TensorRT optimisation profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// 1 at least and for tuning, `tensorrt_max_batch` at most.
    Batch,
    Fixed(usize),
    Span {
        min: usize,
        opt: usize,
        max: usize,
    },
}

/// The shapes a graph's inputs take, for TensorRT's optimisation profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile(Vec<(String, Vec<Axis>)>);

impl Profile {
    pub fn input(mut self, name: &str, axes: &[Axis]) -> Self {
        self.0.push((name.to_owned(), axes.to_vec()));
        self
    }

    /// `name:AxBxC,...` for the `pick`ed end (0 min, 1 opt, 2 max), as TensorRT's provider reads it.
    fn shapes(&self, pick: usize, max_batch: usize) -> String {
        let dim = |axis: &Axis| match *axis {
            Axis::Batch => [1, 1, max_batch][pick],
            Axis::Fixed(n) => n,
            Axis::Span { min, opt, max } => [min, opt, max][pick],
        };
        let shape = |axes: &[Axis]| axes.iter().map(|a| dim(a).to_string()).collect::<Vec<_>>().join("x");
        self.0
            .iter()
            .map(|(name, axes)| format!("{name}:{}", shape(axes)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub type Options = Vec<(&'static str, String)>;

pub fn cuda(gpu: &RuntimeOptions) -> Options {
    let arena = match gpu.cuda_arena {
        Arena::NextPowerOfTwo => "kNextPowerOfTwo",
        Arena::SameAsRequested => "kSameAsRequested",
    };
    let mut options = vec![
        ("device_id", gpu.gpu_device.to_string()),
        ("arena_extend_strategy", arena.to_owned()),
    ];
    if gpu.gpu_memory_limit_mb > 0 {
        options.push(("gpu_mem_limit", (gpu.gpu_memory_limit_mb << 20).to_string()));
    }
    options
}

pub fn tensorrt(gpu: &RuntimeOptions, profile: &Profile) -> Options {
    let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
    let mut options = vec![
        ("device_id", gpu.gpu_device.to_string()),
        ("trt_fp16_enable", flag(gpu.tensorrt_fp16)),
    ];
    if !gpu.tensorrt_cache.as_os_str().is_empty() {
        let cache = gpu.tensorrt_cache.display().to_string();
        options.extend([
            ("trt_engine_cache_enable", flag(true)),
            ("trt_engine_cache_path", cache.clone()),
            ("trt_timing_cache_enable", flag(true)),
            ("trt_timing_cache_path", cache),
        ]);
    }
    if !profile.0.is_empty() {
        let b = gpu.tensorrt_max_batch;
        options.extend([
            ("trt_profile_min_shapes", profile.shapes(0, b)),
            ("trt_profile_opt_shapes", profile.shapes(1, b)),
            ("trt_profile_max_shapes", profile.shapes(2, b)),
        ]);
    }
    options
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn get<'a>(options: &'a Options, key: &str) -> Option<&'a str> {
        options.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn cuda_options_name_the_device_arena_and_limit() {
        let defaults = cuda(&RuntimeOptions::default());
        assert_eq!(
            defaults,
            vec![
                ("device_id", "0".to_owned()),
                ("arena_extend_strategy", "kNextPowerOfTwo".to_owned())
            ]
        );
        let gpu = RuntimeOptions {
            gpu_device: 1,
            gpu_memory_limit_mb: 2048,
            cuda_arena: Arena::SameAsRequested,
            ..RuntimeOptions::default()
        };
        let options = cuda(&gpu);
        assert_eq!(get(&options, "device_id"), Some("1"));
        assert_eq!(get(&options, "gpu_mem_limit"), Some("2147483648"));
        assert_eq!(get(&options, "arena_extend_strategy"), Some("kSameAsRequested"));
    }

    #[test]
    fn tensorrt_caches_engines_and_takes_the_graphs_profile() {
        let profile = Profile::default()
            .input(
                "prefix_embeds",
                &[
                    Axis::Batch,
                    Axis::Span {
                        min: 0,
                        opt: 10,
                        max: 10,
                    },
                    Axis::Fixed(768),
                ],
            )
            .input("input_ids", &[Axis::Batch, Axis::Span { min: 0, opt: 1, max: 1 }]);
        let gpu = RuntimeOptions {
            tensorrt_cache: PathBuf::from("/var/cache/clipcap/tensorrt"),
            tensorrt_max_batch: 5,
            ..RuntimeOptions::default()
        };
        let options = tensorrt(&gpu, &profile);
        assert_eq!(get(&options, "trt_fp16_enable"), Some("1"));
        assert_eq!(get(&options, "trt_engine_cache_enable"), Some("1"));
        assert_eq!(
            get(&options, "trt_engine_cache_path"),
            Some("/var/cache/clipcap/tensorrt")
        );
        assert_eq!(
            get(&options, "trt_timing_cache_path"),
            Some("/var/cache/clipcap/tensorrt")
        );
        assert_eq!(
            get(&options, "trt_profile_min_shapes"),
            Some("prefix_embeds:1x0x768,input_ids:1x0")
        );
        assert_eq!(
            get(&options, "trt_profile_opt_shapes"),
            Some("prefix_embeds:1x10x768,input_ids:1x1")
        );
        assert_eq!(
            get(&options, "trt_profile_max_shapes"),
            Some("prefix_embeds:5x10x768,input_ids:5x1")
        );
        // Without a cache folder nothing is written to disk, and without a profile none is passed.
        let bare = tensorrt(&RuntimeOptions::default(), &Profile::default());
        assert!(
            bare.iter().all(|(k, _)| !k.contains("cache") && !k.contains("profile")),
            "{bare:?}"
        );
    }
}
