//! Streaming, atomic GGUF writer (GGUF specification version 3, ggml `docs/gguf.md`; the
//! layout the `gguf` Python package's `GGUFWriter` produces: header, key-value pairs, tensor
//! infos with dimensions innermost first, padding, then each tensor's data at an offset that
//! is a multiple of the alignment, padded to it).
//!
//! The caller declares every tensor (name, type, shape outermost first) and the metadata up
//! front; the writer lays out the file, writes its header, and then accepts tensor data in any
//! order and from any thread (positional writes), so that the model is never in memory. The
//! file is written under a temporary name in the destination folder and renamed into place by
//! `finish`, after the per-tensor checksums ([`super::CHECKSUM_KEY`], fixed-width, so the
//! header keeps its length) are recorded: a killed run leaves no half-written file under the
//! final name, and any earlier file there untouched.

use super::{
    ALIGNMENT_KEY, CHECKSUM_KEY, DEFAULT_ALIGNMENT, GgmlType, MAGIC, MAX_DIMS, MAX_NAME_BYTES,
    VERSION, Value, put_str,
};
use crate::checksum;
use crate::error::{Error, Result};
use crate::writer::{keep_mode, lock_file, refuse_special_output, remove_dead_tmps, tmp_name};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A tensor to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub ty: GgmlType,
    /// Outermost first (written reversed, innermost first, as GGUF stores it).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, ty: GgmlType, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            ty,
            shape: shape.to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Slot {
    spec: TensorSpec,
    numel: usize,
    nbytes: usize,
    /// Offset within the data section.
    offset: u64,
    /// Elements written so far, checked at `finish`.
    written: AtomicU64,
}

pub struct GgufWriter {
    dest: PathBuf,
    tmp: PathBuf,
    file: File,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    /// The caller's metadata (the checksum key last, set by `finish`).
    metadata: Vec<(String, Value)>,
    data_start: u64,
    header_len: usize,
    /// Folders `create` made (deepest first), removed again if the write does not finish.
    created_dirs: Vec<PathBuf>,
    finished: bool,
}

/// The header bytes (without the padding before the data section).
fn header_bytes(slots: &[Slot], metadata: &[(String, Value)]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(slots.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut h, k);
        h.extend_from_slice(&v.ty().id().to_le_bytes());
        v.encode(&mut h);
    }
    for s in slots {
        put_str(&mut h, &s.spec.name);
        h.extend_from_slice(&(s.spec.shape.len() as u32).to_le_bytes());
        for d in s.spec.shape.iter().rev() {
            h.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        h.extend_from_slice(&s.spec.ty.id().to_le_bytes());
        h.extend_from_slice(&s.offset.to_le_bytes());
    }
    h
}

impl GgufWriter {
    /// Starts the file `out` holding `specs` (in this order) and `metadata` (in this order;
    /// any [`CHECKSUM_KEY`] given is replaced by the new checksums). The alignment is
    /// `general.alignment` where the metadata has it (a u32 power of two), else 32.
    pub fn create(
        out: &Path,
        specs: Vec<TensorSpec>,
        metadata: Vec<(String, Value)>,
    ) -> Result<GgufWriter> {
        let mut by_name = HashMap::new();
        let mut slots = Vec::with_capacity(specs.len());
        let mut keys = std::collections::HashSet::new();
        for (k, v) in &metadata {
            if k.is_empty() || k.len() > MAX_NAME_BYTES {
                return Err(Error::format(
                    out,
                    format!("metadata key of {} bytes (1 to {MAX_NAME_BYTES})", k.len()),
                ));
            }
            if !keys.insert(k.as_str()) {
                return Err(Error::format(
                    out,
                    format!("metadata key '{k}' given twice"),
                ));
            }
            if !v.well_formed(0) {
                return Err(Error::format(
                    out,
                    format!(
                        "metadata key '{k}': an array holds elements of another type, or nests too deep"
                    ),
                ));
            }
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT as u64,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(Error::format(
                    out,
                    format!("key '{ALIGNMENT_KEY}' is {v:?}; it must be a u32 power of two"),
                ));
            }
        };
        let mut at = 0u64;
        for (i, s) in specs.into_iter().enumerate() {
            let bad = |msg: String| Err(Error::tensor(out, &s.name, msg));
            if s.name.is_empty() || s.name.len() > MAX_NAME_BYTES {
                return bad(format!(
                    "name of {} bytes (1 to {MAX_NAME_BYTES})",
                    s.name.len()
                ));
            }
            if by_name.insert(s.name.clone(), i).is_some() {
                return bad("declared twice".into());
            }
            if s.shape.len() > MAX_DIMS {
                return bad(format!(
                    "has {} dimensions; GGUF allows at most {MAX_DIMS}",
                    s.shape.len()
                ));
            }
            if !s.ty.fits_shape(&s.shape) {
                return bad(format!(
                    "shape {:?} cannot be {}: its last dimension must be a multiple of {}",
                    s.shape,
                    s.ty,
                    super::quants::QK
                ));
            }
            let numel = s.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let Some((numel, nbytes)) = numel.and_then(|n| Some((n, s.ty.nbytes(n)?))) else {
                return bad(format!("shape {:?} overflows the byte count", s.shape));
            };
            slots.push(Slot {
                spec: s,
                numel,
                nbytes,
                offset: at,
                written: AtomicU64::new(0),
            });
            at = (at + nbytes as u64).next_multiple_of(alignment);
        }
        let mut metadata: Vec<(String, Value)> = metadata
            .into_iter()
            .filter(|(k, _)| k != CHECKSUM_KEY)
            .collect();
        let zeros: BTreeMap<String, u32> = slots.iter().map(|s| (s.spec.name.clone(), 0)).collect();
        metadata.push((
            CHECKSUM_KEY.to_string(),
            Value::String(checksum::encode(&zeros)),
        ));
        let header = header_bytes(&slots, &metadata);
        let data_start = (header.len() as u64).next_multiple_of(alignment);

        crate::commit::refuse_input(out)?;
        refuse_special_output(out)?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if dir.exists() && !dir.is_dir() {
            return Err(Error::format(
                &dir,
                "output folder exists and is not a folder",
            ));
        }
        if out.is_dir() {
            return Err(Error::format(
                out,
                "is a folder; a path ending in .gguf names the output file",
            ));
        }
        let created_dirs: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        remove_dead_tmps(&dir);
        let tmp = tmp_name(out);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        lock_file(&file);
        // From here on a failure drops the writer, whose Drop removes what it made.
        let w = GgufWriter {
            dest: out.to_path_buf(),
            tmp,
            file,
            slots,
            by_name,
            metadata,
            data_start,
            header_len: header.len(),
            created_dirs,
            finished: false,
        };
        w.file
            .set_len(data_start + at)
            .map_err(|e| Error::io(&w.tmp, e))?;
        w.file
            .write_all_at(&header, 0)
            .map_err(|e| Error::io(&w.tmp, e))?;
        Ok(w)
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn spec(&self, name: &str) -> Option<&TensorSpec> {
        self.by_name.get(name).map(|&i| &self.slots[i].spec)
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.by_name
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| Error::Invalid(format!("tensor '{name}' was not declared for output")))
    }

    /// Writes the encoded bytes of elements starting at `elem` (a multiple of the type's
    /// block size; `bytes` whole blocks).
    pub fn write_bytes_at(&self, name: &str, elem: usize, bytes: &[u8]) -> Result<()> {
        let slot = self.slot(name)?;
        let ty = slot.spec.ty;
        let (bs, bb) = (ty.block_size(), ty.block_bytes());
        let n = bytes.len() / bb * bs;
        let fits = bytes.len().is_multiple_of(bb)
            && elem.is_multiple_of(bs)
            && elem.checked_add(n).is_some_and(|e| e <= slot.numel);
        if !fits {
            return Err(Error::Invalid(format!(
                "write of {} bytes at element {elem} does not fit tensor '{name}' ({} x {ty})",
                bytes.len(),
                slot.numel
            )));
        }
        let at = self.data_start + slot.offset + (elem / bs * bb) as u64;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io(&self.tmp, e))?;
        slot.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Encodes `vals` in the tensor's type and writes them at element `elem` (for block types
    /// a multiple of 32, and `vals` whole blocks). A value a block type cannot hold is an
    /// error naming the tensor and element.
    pub fn write_f32_at(&self, name: &str, elem: usize, vals: &[f32]) -> Result<()> {
        let slot = self.slot(name)?;
        let ty = slot.spec.ty;
        let Some(nb) = ty.nbytes(vals.len()) else {
            return Err(Error::Invalid(format!(
                "write of {} values to tensor '{name}' ({ty}) is not whole blocks",
                vals.len()
            )));
        };
        let mut buf = vec![0u8; nb];
        super::encode_f32(ty, vals, &mut buf).map_err(|u| {
            Error::tensor(
                &self.dest,
                name,
                format!(
                    "value {} at element {} cannot be stored in {ty}",
                    u.value,
                    elem + u.index
                ),
            )
        })?;
        self.write_bytes_at(name, elem, &buf)
    }

    pub fn write_f32(&self, name: &str, vals: &[f32]) -> Result<()> {
        self.write_f32_at(name, 0, vals)
    }

    /// Completes the file: checks every tensor was written, records the checksums, syncs,
    /// and renames it into place. Returns the destination.
    pub fn finish(mut self) -> Result<PathBuf> {
        for s in &self.slots {
            let w = s.written.load(Ordering::Relaxed);
            if w != s.numel as u64 {
                return Err(Error::Invalid(format!(
                    "tensor '{}' incomplete: {w} of {} elements written",
                    s.spec.name, s.numel
                )));
            }
        }
        // SAFETY: a read-only map of our own temporary file, which nobody else writes.
        let map = unsafe { memmap2::Mmap::map(&self.file) }.map_err(|e| Error::io(&self.tmp, e))?;
        // Each tensor's pages are given back as it is hashed (a large output stays cold).
        let crcs: BTreeMap<String, u32> = self
            .slots
            .iter()
            .map(|s| {
                let at = (self.data_start + s.offset) as usize;
                let crc = checksum::crc_of_mapped(
                    &map,
                    at,
                    s.nbytes,
                    &s.spec.name,
                    s.spec.ty.name(),
                    &s.spec.shape,
                );
                (s.spec.name.clone(), crc)
            })
            .collect();
        drop(map);
        if let Some(last) = self.metadata.last_mut() {
            last.1 = Value::String(checksum::encode(&crcs));
        }
        let header = header_bytes(&self.slots, &self.metadata);
        if header.len() != self.header_len {
            return Err(Error::Invalid(format!(
                "{}: header length changed when checksums were recorded",
                self.tmp.display()
            )));
        }
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        keep_mode(&self.file, &self.dest);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.finished = true;
        Ok(self.dest.clone())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
            for d in &self.created_dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
