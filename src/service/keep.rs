//! captioning.keep_compared_frames: the JPEG of each compared frame, kept in a folder so that
//! `clipcap report` can show what the decoders saw. The folder is capped in size: past the cap the
//! oldest frames are removed. Off by default: these are pictures of whatever the camera sees
//! (docs/privacy.md).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use clipcap_core::imageio;
use image::RgbImage;

/// JPEG quality of a kept frame: a thumbnail-sized file that still shows what the caption is about.
const QUALITY: u8 = 85;

pub struct Keeper {
    dir: PathBuf,
    cap: u64,
    /// The bytes kept, and the files oldest first with their sizes.
    kept: Mutex<(u64, VecDeque<(PathBuf, u64)>)>,
}

impl Keeper {
    /// The folder `dir` (created if need be), holding at most `cap_mb` megabytes of frames; the
    /// frames already there count, oldest first.
    pub fn open(dir: &Path, cap_mb: u64) -> anyhow::Result<Keeper> {
        let named = || format!("captioning.keep_compared_frames {}", dir.display());
        std::fs::create_dir_all(dir).with_context(named)?;
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(dir)
            .with_context(named)?
            .filter_map(|e| {
                let e = e.ok()?;
                let meta = e.metadata().ok()?;
                let path = e.path();
                let frame = meta.is_file() && path.extension().is_some_and(|x| x == "jpg");
                Some((meta.modified().ok()?, path, meta.len())).filter(|_| frame)
            })
            .collect();
        files.sort();
        let total = files.iter().map(|f| f.2).sum();
        let keeper = Keeper {
            dir: dir.to_path_buf(),
            cap: cap_mb.saturating_mul(1_000_000),
            kept: Mutex::new((total, files.into_iter().map(|(_, p, n)| (p, n)).collect())),
        };
        keeper.trim();
        Ok(keeper)
    }

    /// Writes `image` as `RUN-ID.jpg` (the caption's run and id, unique across runs), then removes
    /// the oldest frames past the cap; returns the file's path.
    pub fn keep(&self, run: u64, id: u64, image: &RgbImage) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{run}-{id}.jpg"));
        let jpeg = imageio::encode_jpeg(image, QUALITY)?;
        // Written whole, then renamed: `clipcap report` never reads half a frame.
        let partial = path.with_extension("jpg.partial");
        std::fs::write(&partial, &jpeg)
            .and_then(|()| std::fs::rename(&partial, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&partial);
            })
            .with_context(|| path.display().to_string())?;
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.0 += jpeg.len() as u64;
        kept.1.push_back((path.clone(), jpeg.len() as u64));
        drop(kept);
        self.trim();
        Ok(path)
    }

    /// Removes the oldest frames while the folder is over its cap, the newest always kept.
    fn trim(&self) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        while kept.0 > self.cap && kept.1.len() > 1 {
            let Some((oldest, size)) = kept.1.pop_front() else {
                break;
            };
            kept.0 -= size;
            if let Err(e) = std::fs::remove_file(&oldest)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("{}: cannot remove a kept frame: {e}", oldest.display());
            }
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_past_the_cap_are_removed_oldest_first_and_counted_at_start() {
        let dir = std::env::temp_dir().join(format!("clipcap-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Noise does not compress: each frame is about 100 kB, so a 1 MB cap holds about ten.
        let mut state = 1u32;
        let noise = RgbImage::from_fn(256, 256, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        let keeper = Keeper::open(&dir, 1).unwrap();
        let paths: Vec<PathBuf> = (1..=30).map(|id| keeper.keep(7, id, &noise).unwrap()).collect();
        assert!(keeper.bytes() <= 1_000_000, "{}", keeper.bytes());
        assert!(paths[29].is_file() && !paths[0].exists());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!((5..=12).contains(&left.len()), "{} files left", left.len());
        assert_eq!(image::open(&paths[29]).unwrap().to_rgb8().dimensions(), (256, 256));
        // A new run counts what is there.
        assert_eq!(Keeper::open(&dir, 1).unwrap().bytes(), keeper.bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
