//! The shared memory (a memfd) through which an isolated decoder reads logits and hidden states:
//! the daemon writes rows into it, the decoder's process maps it read-only and gets pointers into
//! it, so a row crosses the process boundary without a copy on the decoder's side.
//!
//! The arena only grows, and only when a step makes the batch larger than it has room for; the
//! decoder's process maps it again then, when the ABI has invalidated every row pointer anyway.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, memfd_create};

/// The daemon's side: read-write.
pub struct ArenaWriter {
    file: File,
    map: Option<MmapMut>,
}

impl ArenaWriter {
    /// A new, empty arena, and a read-only descriptor of it for the decoder's process.
    pub fn new() -> io::Result<(ArenaWriter, OwnedFd)> {
        let file = File::from(memfd_create("clipcap-decoder-arena", MemfdFlags::CLOEXEC)?);
        // A new open file description, read-only: the decoder's process can map it, never write it.
        let reader = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        Ok((ArenaWriter { file, map: None }, reader.into()))
    }

    pub fn bytes(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Room for at least `floats` floats; returns the size in bytes.
    pub fn reserve(&mut self, floats: usize) -> io::Result<u64> {
        let needed = (floats * size_of::<f32>()) as u64;
        if needed > self.bytes() {
            let bytes = needed.next_power_of_two();
            self.map = None;
            self.file.set_len(bytes)?;
            // SAFETY: the memfd is this arena's alone: only the decoder's process shares it, through a
            // read-only descriptor, so nothing changes the mapping behind this `MmapMut`.
            self.map = Some(unsafe { MmapOptions::new().len(bytes as usize).map_mut(&self.file) }?);
        }
        Ok(self.bytes())
    }

    /// Writes `row` at `offset` floats; the caller has reserved room for it.
    pub fn write(&mut self, offset: usize, row: &[f32]) {
        let map = self.map.as_mut().expect("room reserved before writing");
        let bytes = offset * size_of::<f32>();
        let src: &[u8] = as_bytes(row);
        map[bytes..bytes + src.len()].copy_from_slice(src);
    }
}

fn as_bytes(row: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes, u8 has no alignment requirement, and the length covers
    // exactly the floats of `row`.
    unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), std::mem::size_of_val(row)) }
}

/// The decoder process's side: read-only.
pub struct ArenaReader {
    file: File,
    map: Option<Mmap>,
}

impl ArenaReader {
    pub fn new(file: File) -> ArenaReader {
        ArenaReader { file, map: None }
    }

    /// Maps the arena again when the daemon says it has grown to `bytes`.
    pub fn resize(&mut self, bytes: u64) -> io::Result<()> {
        if self.map.as_ref().map_or(0, |m| m.len() as u64) != bytes {
            self.map = None;
            if bytes > 0 {
                // SAFETY: the daemon writes the arena only while this process waits for its reply, and
                // then only rows that are new (the ABI invalidated what was there) or rewritten with
                // the same values; this process's descriptor is read-only.
                self.map = Some(unsafe { MmapOptions::new().len(bytes as usize).map(&self.file) }?);
            }
        }
        Ok(())
    }

    /// The floats at `offset`, `len` long, if the arena has them.
    pub fn row(&self, offset: u64, len: u64) -> Option<&[f32]> {
        let map = self.map.as_ref()?;
        let (start, end) = (offset as usize * 4, (offset + len) as usize * 4);
        let bytes = map.get(start..end)?;
        // SAFETY: the mapping is page-aligned and `start` a multiple of 4, so the floats are aligned;
        // any 4 bytes are a valid f32; the slice lives as long as `&self`, which holds the mapping.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), len as usize) })
    }
}
