//! The GPU execution providers' options, as ONNX Runtime's key/value strings. They are built here, where
//! tests check them without a GPU, and `Runtime::session` hands them over with `with_arbitrary_config`.
//!
//! TensorRT builds an engine for a range of input shapes, an optimisation profile. It is derived from
//! the inputs each loader declares and checks ([`TensorSpec`]): the batch from 1 to
//! `tensorrt_max_batch` (beams), each [`Dim::Range`] (the LM's sequence axes: from empty to the
//! prefix length plus the longest caption) over its range. So engines are built once, not once per
//! length, and with `tensorrt_cache` set they are kept on disk for the next start.

use serde::Deserialize;

use super::RuntimeOptions;
use crate::bundle::{Dim, TensorSpec};

/// How the CUDA provider grows its memory arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arena {
    /// Doubles each time it grows: fewer allocations, up to twice the memory.
    NextPowerOfTwo,
    /// Grows by what was asked: the least memory.
    SameAsRequested,
}

/// `name:AxBxC,...` of `inputs` at the `pick`ed end of their ranges (0 min, 1 opt, 2 max), as
/// TensorRT's provider reads a profile.
fn shapes(inputs: &[TensorSpec], pick: usize, max_batch: usize) -> String {
    let size = |dim: &Dim| match *dim {
        Dim::Dynamic => [1, 1, max_batch][pick],
        Dim::Fixed(n) => n,
        Dim::Range { min, opt, max } => [min, opt, max][pick],
    };
    let shape = |dims: &[Dim]| dims.iter().map(|d| size(d).to_string()).collect::<Vec<_>>().join("x");
    inputs
        .iter()
        .map(|input| format!("{}:{}", input.name, shape(&input.dims)))
        .collect::<Vec<_>>()
        .join(",")
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

pub fn tensorrt(gpu: &RuntimeOptions, inputs: &[TensorSpec]) -> Options {
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
    if !inputs.is_empty() {
        let b = gpu.tensorrt_max_batch;
        options.extend([
            ("trt_profile_min_shapes", shapes(inputs, 0, b)),
            ("trt_profile_opt_shapes", shapes(inputs, 1, b)),
            ("trt_profile_max_shapes", shapes(inputs, 2, b)),
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
        let inputs = [
            TensorSpec::f32(
                "prefix_embeds",
                vec![
                    Dim::Dynamic,
                    Dim::Range {
                        min: 0,
                        opt: 10,
                        max: 10,
                    },
                    Dim::Fixed(768),
                ],
            ),
            TensorSpec::i64("input_ids", vec![Dim::Dynamic, Dim::Range { min: 0, opt: 1, max: 1 }]),
        ];
        let gpu = RuntimeOptions {
            tensorrt_cache: PathBuf::from("/var/cache/clipcap/tensorrt"),
            tensorrt_max_batch: 5,
            ..RuntimeOptions::default()
        };
        let options = tensorrt(&gpu, &inputs);
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
        let bare = tensorrt(&RuntimeOptions::default(), &[]);
        assert!(
            bare.iter().all(|(k, _)| !k.contains("cache") && !k.contains("profile")),
            "{bare:?}"
        );
    }
}
