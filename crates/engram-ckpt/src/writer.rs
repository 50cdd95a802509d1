//! Streaming, atomic checkpoint writer.
//!
//! The caller declares every output tensor (name, dtype, shape) up front; the writer lays out
//! the shards, writes each header, and then accepts tensor data in any order and from any
//! thread (`&self` methods; positional writes), so that the whole model is never in memory.
//! Everything is written to `.NAME.engram-tmp-PID` files in the destination folder and renamed
//! to its final name only by `finish`, shards first and the index last: a killed run leaves
//! earlier output untouched and no half-written file under a final name.

use crate::checksum;
use crate::commit::Staged;
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
    /// Where the data is written: a temporary name beside a single-file destination, or the
    /// final name inside a staged folder.
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    data_start: u64,
    /// The shard's tensors in data order (indices into the slots).
    members: Vec<usize>,
    header: Vec<TensorInfo>,
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
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    index: Option<PathBuf>,
    /// A model folder, built beside its destination and switched in by `finish`; `None` for
    /// a single named file.
    staged: Option<Staged>,
    /// Each shard's metadata (the options' plus its checksums, placeholders until `finish`).
    metadata: Vec<BTreeMap<String, String>>,
    /// Metadata values set after `create` ([`ModelWriter::set_metadata`]).
    late: std::sync::Mutex<BTreeMap<String, String>>,
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
pub(crate) fn tmp_name(dest: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.engram-tmp-{}-{seq}", std::process::id()))
}

/// Removes temporary files that killed engram processes left in `dir`: names made by
/// [`tmp_name`] that no live process holds locked (a writer locks its temporary files; a
/// process ID alone misleads across PID namespaces). Best effort.
pub(crate) fn remove_dead_tmps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with('.') && name.contains(".engram-tmp-");
        if ours
            && e.file_type().is_ok_and(|t| t.is_file())
            && crate::commit::try_lock(&e.path()).is_some()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `model-00001-of-00003.safetensors`: the shard names this writer (and Hugging Face) uses.
pub(crate) fn is_shard_name(name: &str) -> bool {
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
        let single = is_single_file_target(out);
        let (dir, staged, created_dirs) = if single {
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
            let created: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            remove_dead_tmps(&dir);
            (dir, None, created)
        } else {
            let st = Staged::new(out)?;
            (st.path().to_path_buf(), Some(st), Vec::new())
        };
        let (groups, index) = if single {
            (vec![(out.to_path_buf(), (0..specs.len()).collect())], None)
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
                    (dir.join(name), g)
                })
                .collect();
            (named, (n > 1).then(|| dir.join(INDEX_NAME)))
        };
        // From here on a failure drops a partly built writer: its Drop removes what we made.
        let mut w = ModelWriter {
            shards: Vec::new(),
            slots: Vec::new(),
            by_name,
            index,
            staged,
            metadata: Vec::new(),
            late: Default::default(),
            created_dirs,
            finished: false,
        };

        let mut slots: Vec<Option<Slot>> = specs.iter().map(|_| None).collect();
        for (si, (dest, members)) in groups.into_iter().enumerate() {
            let mut infos = Vec::with_capacity(members.len());
            let mut at = 0usize;
            let mut crcs = BTreeMap::new();
            for &i in &members {
                let s = &specs[i];
                infos.push(TensorInfo {
                    name: s.name.clone(),
                    dtype: s.dtype,
                    shape: s.shape.clone(),
                    start: at,
                    end: at + s.nbytes(),
                });
                crcs.insert(s.name.clone(), 0u32);
                at += s.nbytes();
            }
            let mut md = opts.metadata.clone();
            md.insert(checksum::KEY.into(), checksum::encode(&crcs));
            md.insert(checksum::OUTPUT_KEY.into(), checksum::output_placeholder());
            let header = serialize_header(&infos, &md);
            let tmp = if single {
                tmp_name(&dest)
            } else {
                dest.clone()
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            lock_file(&file);
            w.shards.push(Shard {
                tmp: tmp.clone(),
                dest,
                file,
                data_start: header.len() as u64,
                members: members.clone(),
                header: infos.clone(),
            });
            w.metadata.push(md);
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

    /// Overwrites elements already written (not counted again towards completeness): element
    /// `start + positions[j]` of float tensor `name` becomes `vals[j]`, converted to the
    /// declared dtype. `positions` must ascend. A merge that finds some values only after
    /// writing the rest fixes them here.
    pub fn patch_f32(
        &self,
        name: &str,
        start: usize,
        positions: &[u32],
        vals: &[f32],
    ) -> Result<()> {
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            return Ok(());
        };
        let slot = self.slot(name)?;
        let dt = slot.spec.dtype;
        let size = dt.size();
        let end = start.checked_add(last as usize + 1);
        if !dt.is_float()
            || positions.len() != vals.len()
            || end.is_none_or(|e| e > slot.spec.numel())
            || positions.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Error::Invalid(format!(
                "patch of {} values from element {start} does not fit tensor '{name}' ({} x {dt})",
                vals.len(),
                slot.spec.numel()
            )));
        }
        let shard = &self.shards[slot.shard];
        // Through a writable map of the span's pages: only the pages holding a position are
        // touched, where reading the span back and writing it again would copy all of it.
        const PAGE: u64 = 4096;
        let at = slot.offset + ((start + first as usize) * size) as u64;
        let end = slot.offset + ((start + last as usize + 1) * size) as u64;
        let from = at / PAGE * PAGE;
        // SAFETY: a shared map of our own temporary file (locked by `create`), which no other
        // process writes and no reader maps while the writer lives; the range lies inside the
        // file (the tensor's bytes were laid out by `create`).
        let mut map = unsafe {
            memmap2::MmapOptions::new()
                .offset(from)
                .len((end - from) as usize)
                .map_mut(&shard.file)
        }
        .map_err(|e| Error::io(&shard.tmp, e))?;
        let skip = (at - from) as usize;
        for (&p, &v) in positions.iter().zip(vals) {
            let o = skip + (p - first) as usize * size;
            encode_f32(dt, &[v], &mut map[o..o + size]);
        }
        Ok(())
    }

    pub fn write_f32(&self, name: &str, vals: &[f32]) -> Result<()> {
        self.write_f32_at(name, 0, vals)
    }

    /// Completes the output: checks every tensor was written, records each tensor's checksum
    /// in its shard's header, syncs, and commits. A single file is renamed into place. A folder
    /// gets its index and copies of `side_files` inside the staged folder, which then replaces
    /// the destination in one switch: weight files of an earlier model there (standard names:
    /// `model.safetensors`, `model-NNNNN-of-NNNNN.safetensors`, the index) go with the old
    /// folder, other files stay. Returns the paths written (at their destination).
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
        self.seal()?;
        let mut names = Vec::new();
        for sh in &self.shards {
            if sh.tmp != sh.dest {
                keep_mode(&sh.file, &sh.dest);
                std::fs::rename(&sh.tmp, &sh.dest).map_err(|e| Error::io(&sh.dest, e))?;
            }
            names.push(sh.dest.clone());
        }
        let Some(staged) = self.staged.take() else {
            self.finished = true;
            return Ok(names);
        };
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
            }
            let doc = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            write_atomic(index, &text)?;
            names.push(index.clone());
        }
        for f in side_files {
            let Some(name) = f.file_name() else { continue };
            if users_own(staged.dest(), name) {
                continue;
            }
            names.push(copy_side_file(f, &staged.path().join(name))?);
        }
        let dest = staged.dest().to_path_buf();
        staged.commit(&crate::commit::is_model_file)?;
        self.finished = true;
        Ok(names
            .iter()
            .filter_map(|p| p.file_name().map(|n| dest.join(n)))
            .collect())
    }

    /// The checksums of shard `sh`'s tensors, from the written file.
    fn shard_crcs(&self, sh: &Shard) -> Result<BTreeMap<String, u32>> {
        // SAFETY: a read-only map of our own temporary file, which nobody else writes.
        let map = unsafe { memmap2::Mmap::map(&sh.file) }.map_err(|e| Error::io(&sh.tmp, e))?;
        let mut crcs = BTreeMap::new();
        for (&i, info) in sh.members.iter().zip(&sh.header) {
            let s = &self.slots[i];
            let at = s.offset as usize;
            crcs.insert(
                info.name.clone(),
                checksum::crc_of_mapped(
                    &map,
                    at,
                    s.spec.nbytes(),
                    &info.name,
                    info.dtype.name(),
                    &info.shape,
                ),
            );
        }
        Ok(crcs)
    }

    /// Records every shard's checksums, the output's identity and the late metadata in the
    /// headers (the same length as the placeholders written by `create`), then syncs.
    fn seal(&self) -> Result<()> {
        let crcs = self
            .shards
            .iter()
            .map(|sh| self.shard_crcs(sh))
            .collect::<Result<Vec<_>>>()?;
        let id = checksum::output_id(crcs.iter().flatten(), self.shards.len());
        let late = self.late.lock().map(|g| g.clone()).unwrap_or_default();
        for ((si, sh), crcs) in self.shards.iter().enumerate().zip(&crcs) {
            let mut md = self.metadata[si].clone();
            md.insert(checksum::KEY.into(), checksum::encode(crcs));
            md.insert(checksum::OUTPUT_KEY.into(), id.clone());
            md.extend(late.clone());
            let header = serialize_header(&sh.header, &md);
            if header.len() as u64 != sh.data_start {
                return Err(Error::Invalid(format!(
                    "{}: header length changed when checksums were recorded",
                    sh.tmp.display()
                )));
            }
            sh.file
                .write_all_at(&header, 0)
                .map_err(|e| Error::io(&sh.tmp, e))?;
            sh.file.sync_all().map_err(|e| Error::io(&sh.tmp, e))?;
        }
        Ok(())
    }

    /// Sets a metadata value known only after `create` (e.g. another file's identity). The
    /// key must have been given to `create` with a placeholder value of the same length.
    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        let fits = self
            .metadata
            .first()
            .and_then(|m| m.get(key))
            .is_some_and(|p| p.len() == value.len());
        if !fits {
            return Err(Error::Invalid(format!(
                "metadata '{key}' set late needs a placeholder of {} bytes at create",
                value.len()
            )));
        }
        if let Ok(mut g) = self.late.lock() {
            g.insert(key.to_string(), value.to_string());
        }
        Ok(())
    }
}

/// Standard weight-file names of a model folder, which an output folder's commit does not
/// carry over from the folder it replaces.
pub fn is_weight_name(name: &str) -> bool {
    name == SINGLE_NAME || name == INDEX_NAME || is_shard_name(name)
}

/// Whether the existing output folder `dest` holds a file `name` of the user's own: not one of
/// a model's files (a README.md the user wrote, say). Such a file is kept rather than replaced
/// by the input's side file of the same name.
pub fn users_own(dest: &Path, name: &std::ffi::OsStr) -> bool {
    let model_file = name.to_str().is_some_and(crate::commit::is_model_file);
    !model_file && std::fs::symlink_metadata(dest.join(name)).is_ok()
}

/// Copies a side file (config, tokenizer) to `dest`, refusing anything but a regular file
/// (checked again here: it may have been replaced since the model was opened).
pub fn copy_side_file(src: &Path, dest: &Path) -> Result<PathBuf> {
    crate::file::regular_file(src, "a regular side file")?;
    let data = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    write_atomic(dest, &data)?;
    Ok(dest.to_path_buf())
}

impl Drop for ModelWriter {
    fn drop(&mut self) {
        // An unfinished staged folder is removed by the Staged's own Drop.
        if !self.finished && self.staged.is_none() {
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

/// An output file may replace only a regular file (or a symlink to one, which is replaced
/// itself): a FIFO, socket or device at the destination, or a symlink to one, is an error.
pub(crate) fn refuse_special_output(dest: &Path) -> Result<()> {
    let Ok(m) = std::fs::symlink_metadata(dest) else {
        return Ok(());
    };
    let target = if m.file_type().is_symlink() {
        std::fs::metadata(dest).ok()
    } else {
        Some(m)
    };
    match target {
        Some(t) if !t.is_file() => Err(Error::format(
            dest,
            format!(
                "output is {}; engram replaces only regular files",
                crate::file::kind_of(&t)
            ),
        )),
        _ => Ok(()),
    }
}

/// Locks a temporary file for this process's lifetime (see [`remove_dead_tmps`]).
pub(crate) fn lock_file(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the lock goes with the file's last descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
}

/// Gives a replacement file the permissions of the file it replaces (a private file stays
/// private). Best effort: a new destination keeps the default mode.
pub(crate) fn keep_mode(f: &File, dest: &Path) {
    if let Ok(m) = std::fs::metadata(dest) {
        let _ = f.set_permissions(m.permissions());
    }
}

/// Writes a small file atomically: temporary file in the same folder, fsync, rename. Refuses
/// a destination that is an input of this run.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    crate::commit::refuse_input(dest)?;
    refuse_special_output(dest)?;
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_name(dest);
    let res = (|| {
        let f = File::create(&tmp)?;
        lock_file(&f);
        keep_mode(&f, dest);
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
