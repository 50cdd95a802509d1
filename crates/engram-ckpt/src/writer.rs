//! Streaming, atomic checkpoint writer.
//!
//! The caller declares every output tensor (name, dtype, shape) up front; the writer lays out
//! the shards, writes each header, and then accepts tensor data in any order and from any
//! thread (`&self` methods; positional writes), so that the whole model is never in memory.
//! Everything is written to `.NAME.engram-tmp-PID` files in the destination folder and renamed
//! to its final name only by `finish`, shards first and the index last: a killed run leaves
//! earlier output untouched and no half-written file under a final name.

use crate::dtype::{DType, encode_f32};
use crate::error::{Error, Result};
use crate::header::{TensorInfo, serialize_header};
use crate::model::{INDEX_NAME, SINGLE_NAME};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Largest shard in bytes; `None` writes a single file.
    pub max_shard_bytes: Option<u64>,
    /// `__metadata__` of every output file (provenance).
    pub metadata: BTreeMap<String, String>,
}

struct Shard {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    data_start: u64,
}

struct Slot {
    shard: usize,
    /// Absolute file offset of the tensor's first byte.
    offset: u64,
    spec: TensorSpec,
    /// Elements written so far, to check completeness at `finish`.
    written: AtomicU64,
}

pub struct ModelWriter {
    dir: PathBuf,
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    index: Option<PathBuf>,
    /// A model folder (side files are copied) rather than a single named file.
    folder_output: bool,
    /// Folders `create` made (deepest first), removed again if the write does not finish.
    created_dirs: Vec<PathBuf>,
    finished: bool,
}

/// Where output goes: a path ending in `.safetensors` is one file; anything else is a model
/// folder (created if needed).
pub fn is_single_file_target(out: &Path) -> bool {
    out.extension().is_some_and(|e| e == "safetensors")
}

/// A temporary name beside `dest`, unique within this process too (two writers of one process
/// aiming at the same destination must not share, and truncate, one temporary file).
fn tmp_name(dest: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.engram-tmp-{}-{seq}", std::process::id()))
}

/// Removes temporary files that killed engram processes left in `dir`: names made by
/// [`tmp_name`] whose process no longer exists (no `/proc/PID`). Best effort.
fn remove_dead_tmps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((_, rest)) = name.rsplit_once(".engram-tmp-") else {
            continue;
        };
        let dead = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists());
        if dead && name.starts_with('.') {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `model-00001-of-00003.safetensors`: the shard names this writer (and Hugging Face) uses.
fn is_shard_name(name: &str) -> bool {
    let Some(mid) = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((a, b)) = mid.split_once("-of-") else {
        return false;
    };
    [a, b]
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

impl ModelWriter {
    pub fn create(out: &Path, specs: Vec<TensorSpec>, opts: &WriteOptions) -> Result<ModelWriter> {
        let mut by_name = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            if by_name.insert(s.name.clone(), i).is_some() {
                return Err(Error::Invalid(format!(
                    "output tensor '{}' declared twice",
                    s.name
                )));
            }
        }
        let (dir, groups, index) = if is_single_file_target(out) {
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            (
                dir,
                vec![(out.to_path_buf(), (0..specs.len()).collect())],
                None,
            )
        } else {
            let groups = plan_shards(&specs, opts.max_shard_bytes);
            let n = groups.len();
            let named: Vec<(PathBuf, Vec<usize>)> = groups
                .into_iter()
                .enumerate()
                .map(|(i, g)| {
                    let name = if n == 1 {
                        SINGLE_NAME.to_string()
                    } else {
                        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
                    };
                    (out.join(name), g)
                })
                .collect();
            let index = (n > 1).then(|| out.join(INDEX_NAME));
            (out.to_path_buf(), named, index)
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::format(
                &dir,
                "output folder exists and is not a folder",
            ));
        }
        let created_dirs: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        remove_dead_tmps(&dir);
        // From here on a failure drops a partly built writer: its Drop removes what we made.
        let mut w = ModelWriter {
            dir,
            shards: Vec::new(),
            slots: Vec::new(),
            by_name,
            index,
            folder_output: !is_single_file_target(out),
            created_dirs,
            finished: false,
        };

        let mut slots: Vec<Option<Slot>> = specs.iter().map(|_| None).collect();
        for (si, (dest, members)) in groups.into_iter().enumerate() {
            let mut infos = Vec::with_capacity(members.len());
            let mut at = 0usize;
            for &i in &members {
                let s = &specs[i];
                infos.push(TensorInfo {
                    name: s.name.clone(),
                    dtype: s.dtype,
                    shape: s.shape.clone(),
                    start: at,
                    end: at + s.nbytes(),
                });
                at += s.nbytes();
            }
            let header = serialize_header(&infos, &opts.metadata);
            let tmp = tmp_name(&dest);
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            w.shards.push(Shard {
                tmp: tmp.clone(),
                dest,
                file,
                data_start: header.len() as u64,
            });
            let file = &w.shards[si].file;
            let total = header.len() as u64 + at as u64;
            file.set_len(total).map_err(|e| Error::io(&tmp, e))?;
            file.write_all_at(&header, 0)
                .map_err(|e| Error::io(&tmp, e))?;
            for (&i, info) in members.iter().zip(&infos) {
                slots[i] = Some(Slot {
                    shard: si,
                    offset: header.len() as u64 + info.start as u64,
                    spec: specs[i].clone(),
                    written: AtomicU64::new(0),
                });
            }
        }
        w.slots = slots.into_iter().flatten().collect();
        Ok(w)
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.by_name
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| Error::Invalid(format!("tensor '{name}' was not declared for output")))
    }

    pub fn spec(&self, name: &str) -> Option<&TensorSpec> {
        self.by_name.get(name).map(|&i| &self.slots[i].spec)
    }

    /// Writes raw little-endian bytes of the declared dtype for elements starting at `elem`.
    pub fn write_bytes_at(&self, name: &str, elem: usize, bytes: &[u8]) -> Result<()> {
        let slot = self.slot(name)?;
        let size = slot.spec.dtype.size();
        let n = bytes.len() / size;
        if bytes.len() != n * size || elem.checked_add(n).is_none_or(|e| e > slot.spec.numel()) {
            return Err(Error::Invalid(format!(
                "write of {} bytes at element {elem} does not fit tensor '{name}' ({} x {})",
                bytes.len(),
                slot.spec.numel(),
                slot.spec.dtype
            )));
        }
        let shard = &self.shards[slot.shard];
        shard
            .file
            .write_all_at(bytes, slot.offset + (elem * size) as u64)
            .map_err(|e| Error::io(&shard.tmp, e))?;
        slot.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the whole tensor from its raw bytes (copying a tensor of the same dtype).
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_bytes_at(name, 0, bytes)
    }

    /// Converts `vals` to the declared float dtype and writes them at element `elem`.
    pub fn write_f32_at(&self, name: &str, elem: usize, vals: &[f32]) -> Result<()> {
        let slot = self.slot(name)?;
        let dt = slot.spec.dtype;
        if !dt.is_float() {
            return Err(Error::Invalid(format!(
                "tensor '{name}' is declared {dt}; only float tensors take f32 values"
            )));
        }
        let mut buf = vec![0u8; vals.len() * dt.size()];
        encode_f32(dt, vals, &mut buf);
        self.write_bytes_at(name, elem, &buf)
    }

    pub fn write_f32(&self, name: &str, vals: &[f32]) -> Result<()> {
        self.write_f32_at(name, 0, vals)
    }

    /// Completes the output: checks every tensor was written, syncs, renames the shards into
    /// place, then writes the index, then copies `side_files` (for folder outputs).
    /// In a folder output, weight files of an earlier model left in the folder under the
    /// standard names (`model.safetensors`, `model-NNNNN-of-NNNNN.safetensors`, the index) that
    /// this output does not replace are removed, last: otherwise a stale index would make the
    /// folder open as the old model. Returns the paths written.
    pub fn finish(mut self, side_files: &[PathBuf]) -> Result<Vec<PathBuf>> {
        for s in &self.slots {
            let w = s.written.load(Ordering::Relaxed);
            if w != s.spec.numel() as u64 {
                return Err(Error::Invalid(format!(
                    "tensor '{}' incomplete: {w} of {} elements written",
                    s.spec.name,
                    s.spec.numel()
                )));
            }
        }
        let mut written = Vec::new();
        for sh in &self.shards {
            sh.file.sync_all().map_err(|e| Error::io(&sh.tmp, e))?;
        }
        for sh in &self.shards {
            std::fs::rename(&sh.tmp, &sh.dest).map_err(|e| Error::io(&sh.dest, e))?;
            written.push(sh.dest.clone());
        }
        if let Some(index) = &self.index {
            let mut weight_map = serde_json::Map::new();
            let mut total = 0u64;
            for s in &self.slots {
                let shard = &self.shards[s.shard];
                let fname = shard
                    .dest
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                weight_map.insert(s.spec.name.clone(), fname.into());
                total += s.spec.nbytes() as u64;
                debug_assert!(s.offset >= shard.data_start);
            }
            let doc = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            write_atomic(index, &text)?;
            written.push(index.clone());
        }
        if self.folder_output {
            self.remove_stale_weights(&written)?;
            for f in side_files {
                let Some(name) = f.file_name() else { continue };
                let dest = self.dir.join(name);
                let data = std::fs::read(f).map_err(|e| Error::io(f, e))?;
                write_atomic(&dest, &data)?;
                written.push(dest);
            }
        }
        self.finished = true;
        Ok(written)
    }
}

impl ModelWriter {
    /// Removes earlier weight files (standard names only) that this output did not write.
    /// A stale index goes first, so that at every moment the folder opens as one model.
    fn remove_stale_weights(&self, written: &[PathBuf]) -> Result<()> {
        let mut stale = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = self.dir.join(name);
            let ours = written.iter().any(|w| w.file_name() == Some(name.as_ref()));
            if ours || !e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
                continue;
            }
            if name == INDEX_NAME {
                stale.insert(0, path);
            } else if name == SINGLE_NAME || is_shard_name(name) {
                stale.push(path);
            }
        }
        for p in stale {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

impl Drop for ModelWriter {
    fn drop(&mut self) {
        if !self.finished {
            for sh in &self.shards {
                let _ = std::fs::remove_file(&sh.tmp);
            }
            // Folders this writer made, if they are empty again (never anyone else's files).
            for d in &self.created_dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Groups tensors (in declaration order) into shards of at most `max` bytes each; a tensor
/// larger than `max` gets a shard of its own.
pub fn plan_shards(specs: &[TensorSpec], max: Option<u64>) -> Vec<Vec<usize>> {
    let Some(max) = max else {
        return vec![(0..specs.len()).collect()];
    };
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let b = s.nbytes() as u64;
        let cur = groups.last_mut().expect("at least one group");
        if !cur.is_empty() && size + b > max {
            groups.push(vec![i]);
            size = b;
        } else {
            cur.push(i);
            size += b;
        }
    }
    groups
}

/// Writes a small file atomically: temporary file in the same folder, fsync, rename.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_name(dest);
    let res = (|| {
        let f = File::create(&tmp)?;
        f.write_all_at(data, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(dest, e));
    }
    Ok(())
}
