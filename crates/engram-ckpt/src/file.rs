//! One safetensors file, memory-mapped and validated; tensors are borrowed views into it. A
//! file can also be held in memory (tensors handed over as buffers: the Python module's arrays).

use crate::checksum;
use crate::chunk::{self, CHUNK};
use crate::dtype::{DType, decode_f32};
use crate::error::{Error, Result};
use crate::header::{self, Header, TensorInfo};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes owned elsewhere and shared read-only (a NumPy array kept alive by the Python module).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One tensor held in memory: what [`SafetensorsFile::from_memory`] is built from.
pub struct MemTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, `numel × dtype size` of them.
    pub bytes: SharedBytes,
}

/// Where a file's tensor bytes live.
enum Backing {
    /// A read-only mapping of the whole file (header included).
    Map(Mmap),
    /// One buffer per tensor, in header order; there is no header image.
    Memory(Vec<SharedBytes>),
}

pub struct SafetensorsFile {
    path: PathBuf,
    /// Registers the file as an input of this process while it is open (none in memory).
    _input: Option<crate::commit::OpenInput>,
    backing: Backing,
    header: Header,
    by_name: HashMap<String, usize>,
}

impl SafetensorsFile {
    /// Opens and validates `path`. The data is not read: tensors are paged in on access.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = regular_file(path, "a .safetensors file")?;
        let file_len = meta.len();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let input = crate::commit::OpenInput::register(path, &meta);
        if file_len == 0 {
            return Err(Error::format(
                path,
                "file is empty (0 bytes); not a safetensors file",
            ));
        }
        // SAFETY: the map is read-only. Another process truncating the file while we read it
        // would fault; that is the accepted contract of every mmap-based safetensors reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mk = |e: header::HeaderError| match e.tensor {
            Some(t) => Error::tensor(path, &t, e.msg),
            None => Error::format(path, e.msg),
        };
        let header = header::parse_file_bytes(&mmap).map_err(mk)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            _input: Some(input),
            backing: Backing::Map(mmap),
            header,
            by_name,
        })
    }

    /// A file held in memory: `tensors` in the given order, laid out one after another as a
    /// written file would hold them, without copying their bytes. `name` stands for the path
    /// in error messages and reports. Every tensor is checked as a header entry is: a name
    /// given once (and not `__metadata__`), a shape whose size does not overflow, and exactly
    /// `numel × dtype size` bytes.
    pub fn from_memory(name: &Path, tensors: Vec<MemTensor>) -> Result<Self> {
        let mut infos = Vec::with_capacity(tensors.len());
        let mut buffers = Vec::with_capacity(tensors.len());
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut at = 0usize;
        for t in tensors {
            let terr = |msg: String| Error::tensor(name, &t.name, msg);
            if t.name == "__metadata__" {
                return Err(terr(
                    "'__metadata__' is reserved for the file's metadata".into(),
                ));
            }
            let expected = t
                .shape
                .iter()
                .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| terr(format!("shape {:?} overflows", t.shape)))?;
            let len = AsRef::<[u8]>::as_ref(&*t.bytes).len();
            if len != expected {
                return Err(terr(format!(
                    "holds {len} bytes but shape {:?} of {} needs {expected}",
                    t.shape, t.dtype
                )));
            }
            if by_name.insert(t.name.clone(), infos.len()).is_some() {
                return Err(terr("tensor name given twice".into()));
            }
            let end = at
                .checked_add(len)
                .ok_or_else(|| terr("tensors exceed the address space".into()))?;
            infos.push(TensorInfo {
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                start: at,
                end,
            });
            buffers.push(t.bytes);
            at = end;
        }
        Ok(SafetensorsFile {
            path: name.to_path_buf(),
            _input: None,
            backing: Backing::Memory(buffers),
            header: Header {
                tensors: infos,
                metadata: BTreeMap::new(),
                data_start: 0,
            },
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// The file's size; for a file in memory, its tensors' bytes (it has no header image).
    pub fn len_bytes(&self) -> u64 {
        match &self.backing {
            Backing::Map(m) => m.len() as u64,
            Backing::Memory(_) => self.header.tensors.last().map_or(0, |t| t.end as u64),
        }
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name.get(name).map(|&i| self.view(i))
    }

    /// Verifies the stored per-tensor checksums ([`crate::checksum`]); a file without them
    /// (written by another tool) passes. Every tensor must be listed, and every listed tensor
    /// present with the recorded name, dtype, shape and bytes.
    pub fn verify(&self) -> Result<()> {
        let Some(text) = self.metadata().get(checksum::KEY) else {
            return Ok(());
        };
        let want = checksum::decode(text).map_err(|e| Error::format(&self.path, e))?;
        checksum::verify_listed(
            &self.path,
            &want,
            self.tensors().iter().map(|t| t.name.as_str()),
            &|n| self.get(n).is_some(),
            &|name| {
                let v = self.get(name)?;
                // Each hashed piece's pages are given back: verifying keeps little resident.
                let es = v.dtype().size().max(1);
                let release = |a: usize, b: usize| v.release(a / es, b / es);
                Some(checksum::crc_releasing(
                    name,
                    v.dtype().name(),
                    v.shape(),
                    v.bytes,
                    &release,
                ))
            },
        )
    }

    pub fn view(&self, i: usize) -> TensorView<'_> {
        let info = &self.header.tensors[i];
        let base = self.header.data_start;
        let (bytes, map) = match &self.backing {
            Backing::Map(m) => (&m[base + info.start..base + info.end], Some(m)),
            Backing::Memory(b) => (AsRef::<[u8]>::as_ref(&*b[i]), None),
        };
        TensorView {
            info,
            bytes,
            path: &self.path,
            map,
        }
    }
}

/// The metadata of `path` if it is a regular file (following symlinks); a folder, FIFO,
/// socket or device is refused before anything opens it (opening a FIFO would block).
pub fn regular_file(path: &Path, expected: &str) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(
            path,
            format!("is {}, expected {expected}", kind_of(&meta)),
        ));
    }
    Ok(meta)
}

/// "a folder", "a FIFO", ... for error messages.
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// A borrowed tensor: its header entry and its raw little-endian bytes.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
    pub path: &'a Path,
    /// The read-only file mapping `bytes` lies in (for [`TensorView::release`]); none for a
    /// tensor held in memory.
    map: Option<&'a Mmap>,
}

impl<'a> TensorView<'a> {
    pub fn name(&self) -> &'a str {
        &self.info.name
    }
    pub fn dtype(&self) -> DType {
        self.info.dtype
    }
    pub fn shape(&self) -> &'a [usize] {
        &self.info.shape
    }
    pub fn numel(&self) -> usize {
        self.info.numel()
    }

    /// Elements `[start, start + n)` decoded to f32, in a new vector.
    pub fn read_f32_vec(&self, start: usize, n: usize) -> Result<Vec<f32>> {
        let s = self.dtype().size();
        match start.checked_add(n).filter(|&e| e <= self.numel()) {
            Some(end) => Ok(crate::dtype::decode_f32_vec(
                self.dtype(),
                &self.bytes[start * s..end * s],
            )),
            None => {
                // The same error as `read_f32_into`.
                let mut none = vec![0f32; n];
                self.read_f32_into(start, &mut none)?;
                Ok(none)
            }
        }
    }

    /// Decodes elements `[start, start + out.len())` into `out` as f32.
    pub fn read_f32_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= self.numel())
            .ok_or_else(|| {
                Error::tensor(
                    self.path,
                    self.name(),
                    format!(
                        "read of elements {start}..{} beyond its {} elements",
                        start.saturating_add(out.len()),
                        self.numel()
                    ),
                )
            })?;
        let s = self.dtype().size();
        decode_f32(self.dtype(), &self.bytes[start * s..end * s], out);
        Ok(())
    }

    /// Tells the kernel that elements `[start, end)` will not be read again soon: the pages
    /// wholly inside that range are unmapped from this process (they stay in the page cache,
    /// and a later read faults them back in with the same contents). Streaming passes call it
    /// after each chunk so that resident memory stays bounded by a few chunks rather than
    /// growing to the size of the file. A hint only: failures are ignored; a tensor held in
    /// memory is left as it is.
    pub fn release(&self, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let Some(map) = self.map else {
            return;
        };
        let s = self.dtype().size();
        let end = end.min(self.numel());
        if start >= end {
            return;
        }
        let base = self.bytes.as_ptr() as usize - map.as_ptr() as usize;
        // Only whole pages inside the range: a neighbouring tensor's bytes are left mapped.
        let lo = (base + start * s).next_multiple_of(PAGE);
        let hi = (base + end * s) / PAGE * PAGE;
        if hi > lo {
            // SAFETY: `map` is a read-only, shared (MAP_SHARED, PROT_READ) file mapping that we
            // never write through. MADV_DONTNEED on such a mapping only drops page-table
            // entries; any later access, through any outstanding borrow, faults in the same
            // file contents, so no reference ever observes changed or zeroed bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
        }
    }

    /// The whole tensor as f32 (one allocation of numel floats).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.numel()];
        self.read_f32_into(0, &mut v)?;
        Ok(v)
    }

    /// Counts NaN and infinite values, reading in chunks so as not to allocate the tensor.
    pub fn count_non_finite(&self) -> Result<(usize, usize)> {
        let (mut nan, mut inf) = (0, 0);
        if !self.dtype().is_float() {
            return Ok((0, 0));
        }
        let mut buf = vec![0f32; CHUNK.min(self.numel())];
        for r in chunk::ranges(self.numel()) {
            let v = &mut buf[..r.len()];
            self.read_f32_into(r.start, v)?;
            // Exponent all ones = NaN or infinity: a branch-free count that vectorizes; the
            // two kinds are told apart only in the rare chunk that has any.
            if crate::stats::non_finite(v) > 0 {
                for x in v.iter() {
                    nan += x.is_nan() as usize;
                    inf += x.is_infinite() as usize;
                }
            }
            self.release(r.start, r.end);
        }
        Ok((nan, inf))
    }

    /// An error if any value is NaN or infinite, naming the tensor and the counts.
    pub fn check_finite(&self) -> Result<()> {
        let (nan, inf) = self.count_non_finite()?;
        if nan + inf > 0 {
            return Err(Error::tensor(
                self.path,
                self.name(),
                format!("holds {nan} NaN and {inf} infinite values"),
            ));
        }
        Ok(())
    }
}
