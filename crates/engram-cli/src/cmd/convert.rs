//! `engram convert IN -o OUT`: changes the dtype of the float tensors (`--dtype`; integer and
//! boolean tensors are copied unchanged) and the sharding (`--shard-size`; without it the
//! output is one file, so a sharded model becomes a single file). Streams tensor by tensor in
//! chunks of `CHUNK` values, in parallel over (tensor, chunk), into the atomic `ModelWriter`:
//! memory stays at a few chunks per thread whatever the model size, and a failed or killed
//! run leaves any earlier OUT untouched. Tensors whose dtype does not change are copied byte
//! for byte. The input's `__metadata__` is kept, with engram's provenance added.
//!
//! GGUF (`docs/gguf.md`): an input or output path ending in `.gguf` is a GGUF file, read and
//! written by `engram_ckpt::gguf` in the same streaming way. GGUF output takes `--dtype` f32,
//! f16, bf16, q8_0 or q4_0; with a block type, tensors that cannot be blocked (fewer than two
//! dimensions, or a last dimension not a multiple of 32) stay F32 as llama.cpp keeps them, and
//! the command says how many. GGUF input becomes f32 safetensors unless `--dtype` says
//! otherwise; its scalar metadata goes into `__metadata__` as text, its arrays are dropped
//! (said on stderr).

use super::Ctx;
use super::args::{opt_bytes, opt_float_dtype};
use super::util;
use anyhow::{Result, bail};
use engram_ckpt::chunk::{self, CHUNK};
use engram_ckpt::dtype::encode_f32;
use engram_ckpt::gguf::{self, GgmlType, GgufFile, GgufWriter, is_gguf_path};
use engram_ckpt::writer::is_single_file_target;
use engram_ckpt::{DType, Error, Model, ModelWriter, TensorSpec, WriteOptions};
use engram_weights::output::fits;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model to convert (file, folder or index).
    pub input: PathBuf,
    /// Output: a path ending in .safetensors is one file; anything else a model folder
    /// (with side files such as config.json carried along).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Float dtype of the output (f32, f16, bf16, f64, f8_e4m3, f8_e5m2); default unchanged
    /// (f32 from a GGUF input). A .gguf output takes f32, f16, bf16, q8_0 or q4_0.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Shard the output folder at this size (e.g. 2GB, 500MB), with an index.
    #[arg(long, value_name = "SIZE")]
    pub shard_size: Option<String>,
    /// Refuse NaN or infinite values in the input; nothing is written then. (A finite value
    /// beyond the output dtype's range is always an error.)
    #[arg(long)]
    pub check_finite: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if is_gguf_path(&a.input) || is_gguf_path(&a.out) {
        return run_gguf(ctx, a);
    }
    refuse_block_dtype(a.dtype.as_deref())?;
    let started = Instant::now();
    let dtype = opt_float_dtype(a.dtype.as_deref())?;
    let shard = opt_bytes(a.shard_size.as_deref())?;
    let single = is_single_file_target(&a.out);
    if shard.is_some() && single {
        bail!(
            "--shard-size needs an output folder, but {} names a single .safetensors file",
            a.out.display()
        );
    }
    if single && a.out.is_dir() {
        bail!(
            "{}: is a folder; a path ending in .safetensors names the output file",
            a.out.display()
        );
    }
    let model = super::models::open(&a.input)?;

    let specs: Vec<TensorSpec> = model
        .tensors()
        .map(|t| {
            let dt = match dtype {
                Some(d) if t.dtype().is_float() => d,
                _ => t.dtype(),
            };
            TensorSpec::new(t.name(), dt, t.shape())
        })
        .collect();
    let mut metadata = model.metadata();
    metadata.extend(engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({
            "source": a.input.display().to_string(),
            "dtype": dtype.map(|d| d.name()),
            "shard_size": shard,
        }),
    ));
    let opts = WriteOptions {
        max_shard_bytes: shard,
        metadata,
    };
    let writer = ModelWriter::create(&a.out, specs.clone(), &opts)?;

    let items = chunk::items(model.tensors().map(|t| t.numel()));
    let pb = super::progress::bar(ctx, model.data_bytes(), "convert");
    let res = items.par_iter().try_for_each_init(
        || (vec![0f32; CHUNK], Vec::<u8>::new()),
        |(vals, out), &(ti, start, k)| -> Result<(), Error> {
            let t = model.tensor_at(ti);
            let to = specs[ti].dtype;
            let s = t.dtype().size();
            if to == t.dtype() && !(a.check_finite && to.is_float()) {
                writer.write_bytes_at(t.name(), start, &t.bytes[start * s..(start + k) * s])?;
            } else {
                let v = &mut vals[..k];
                t.read_f32_into(start, v)?;
                if a.check_finite
                    && let Some(at) = v.iter().position(|x| !x.is_finite())
                {
                    return Err(Error::tensor(
                        t.path,
                        t.name(),
                        format!(
                            "holds a non-finite value ({}) at element {}",
                            v[at],
                            start + at
                        ),
                    ));
                }
                // A finite value that the output cannot hold (f16 beyond 65504 would become
                // infinite, f8 would saturate) is an error, whatever --check-finite says.
                if let Some(at) = v.iter().position(|&x| x.is_finite() && !fits(to, x)) {
                    return Err(Error::tensor(
                        t.path,
                        t.name(),
                        format!(
                            "value {} at element {} is beyond the range of {to}",
                            v[at],
                            start + at
                        ),
                    ));
                }
                out.resize(k * to.size(), 0);
                encode_f32(to, v, out);
                writer.write_bytes_at(t.name(), start, out)?;
            }
            t.release(start, start + k);
            pb.inc((k * s) as u64);
            Ok(())
        },
    );
    pb.finish_and_clear();
    res?;
    let written = writer.finish(model.side_files())?;
    if !ctx.quiet {
        let out_bytes: u64 = written
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "wrote {} ({} tensors, {} files, {}) in {:.1}s",
            a.out.display(),
            specs.len(),
            written.len(),
            util::bytes(out_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `--dtype q8_0` or `q4_0` with a safetensors output: an error saying where they belong.
fn refuse_block_dtype(dtype: Option<&str>) -> Result<()> {
    if let Some(d) = dtype
        && GgmlType::parse(d).is_some_and(GgmlType::is_quantized)
    {
        bail!("--dtype {d} is a GGUF block type: it needs an output path ending in .gguf");
    }
    Ok(())
}

/// The input of a conversion involving GGUF: a safetensors model or a GGUF file.
enum Input {
    St(Model),
    Gguf(GgufFile),
}

/// What a tensor is stored as, in the input or the output.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    St(DType),
    Gguf(GgmlType),
}

impl Input {
    fn open(path: &Path) -> Result<Input> {
        if is_gguf_path(path) {
            let f = GgufFile::open(path)?;
            f.verify()?;
            Ok(Input::Gguf(f))
        } else {
            Ok(Input::St(super::models::open(path)?))
        }
    }

    fn len(&self) -> usize {
        match self {
            Input::St(m) => m.len(),
            Input::Gguf(f) => f.len(),
        }
    }

    fn name(&self, i: usize) -> &str {
        match self {
            Input::St(m) => m.tensor_at(i).name(),
            Input::Gguf(f) => f.tensor_at(i).name(),
        }
    }

    fn shape(&self, i: usize) -> &[usize] {
        match self {
            Input::St(m) => m.tensor_at(i).shape(),
            Input::Gguf(f) => f.tensor_at(i).shape(),
        }
    }

    fn kind(&self, i: usize) -> Kind {
        match self {
            Input::St(m) => Kind::St(m.tensor_at(i).dtype()),
            Input::Gguf(f) => Kind::Gguf(f.tensor_at(i).ty()),
        }
    }

    fn path(&self, i: usize) -> &Path {
        match self {
            Input::St(m) => m.tensor_at(i).path,
            Input::Gguf(f) => f.path(),
        }
    }

    fn data_bytes(&self) -> u64 {
        match self {
            Input::St(m) => m.data_bytes(),
            Input::Gguf(f) => f.data_bytes(),
        }
    }

    /// The raw bytes of elements `[start, start + k)`.
    fn raw(&self, i: usize, start: usize, k: usize) -> &[u8] {
        match self {
            Input::St(m) => {
                let t = m.tensor_at(i);
                let s = t.dtype().size();
                &t.bytes[start * s..(start + k) * s]
            }
            Input::Gguf(f) => f.tensor_at(i).raw(start, start + k),
        }
    }

    fn read_f32_into(&self, i: usize, start: usize, out: &mut [f32]) -> Result<(), Error> {
        match self {
            Input::St(m) => m.tensor_at(i).read_f32_into(start, out),
            Input::Gguf(f) => f.tensor_at(i).read_f32_into(start, out),
        }
    }

    fn release(&self, i: usize, start: usize, end: usize) {
        match self {
            Input::St(m) => m.tensor_at(i).release(start, end),
            Input::Gguf(f) => f.tensor_at(i).release(start, end),
        }
    }
}

/// Whether a tensor stored as `from` is stored as `to` with the same bytes (F32, F16 and BF16
/// are the same little-endian values in both formats).
fn same_bytes(from: Kind, to: Kind) -> bool {
    let float = |k| match k {
        Kind::St(d) => GgmlType::from_dtype(d).map(Kind::Gguf).unwrap_or(k),
        k => k,
    };
    float(from) == float(to)
}

/// The output of a conversion involving GGUF.
enum Output {
    St(ModelWriter),
    Gguf(GgufWriter),
}

impl Output {
    fn write_bytes_at(&self, name: &str, elem: usize, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Output::St(w) => w.write_bytes_at(name, elem, bytes),
            Output::Gguf(w) => w.write_bytes_at(name, elem, bytes),
        }
    }
}

/// Sets `key` to `v` in GGUF metadata, in place if it is there.
fn set_kv(md: &mut Vec<(String, gguf::Value)>, key: &str, v: gguf::Value) {
    match md.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => md.push((key.to_string(), v)),
    }
}

/// Each tensor's output kind, and the tensors that a requested block type could not take
/// (they stay F32).
fn plan(input: &Input, gguf_out: bool, dtype: Option<&str>) -> Result<(Vec<Kind>, Vec<usize>)> {
    let mut kept = Vec::new();
    let mut kinds = Vec::with_capacity(input.len());
    if !gguf_out {
        refuse_block_dtype(dtype)?;
        let d = opt_float_dtype(dtype)?.unwrap_or(DType::F32);
        return Ok(((0..input.len()).map(|_| Kind::St(d)).collect(), kept));
    }
    let want = match dtype {
        None => None,
        Some(s) => Some(GgmlType::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--dtype {s}: a .gguf output takes f32, f16, bf16, q8_0 or q4_0")
        })?),
    };
    for i in 0..input.len() {
        let from = input.kind(i);
        if let Kind::St(d) = from
            && !d.is_float()
        {
            bail!(
                "{}: tensor '{}' is {d}, which GGUF output cannot hold (engram writes F32, F16, BF16, Q8_0 and Q4_0); nothing written",
                input.path(i).display(),
                util::esc(input.name(i))
            );
        }
        let shape = input.shape(i);
        let to = match (want, from) {
            (Some(q), Kind::Gguf(t)) if q.is_quantized() && t == q => q,
            (Some(q), _) if q.is_quantized() => {
                if shape.len() >= 2 && q.fits_shape(shape) {
                    q
                } else {
                    kept.push(i);
                    GgmlType::F32
                }
            }
            (Some(t), _) => t,
            (None, Kind::Gguf(t)) => t,
            (None, Kind::St(d)) => GgmlType::from_dtype(d).unwrap_or(GgmlType::F32),
        };
        kinds.push(Kind::Gguf(to));
    }
    Ok((kinds, kept))
}

/// A conversion from or to GGUF (see the module comment).
fn run_gguf(ctx: &Ctx, a: Args) -> Result<()> {
    let started = Instant::now();
    let gguf_out = is_gguf_path(&a.out);
    if gguf_out && a.shard_size.is_some() {
        bail!(
            "--shard-size: a GGUF output ({}) is always one file",
            a.out.display()
        );
    }
    let shard = opt_bytes(a.shard_size.as_deref())?;
    if !gguf_out && shard.is_some() && is_single_file_target(&a.out) {
        bail!(
            "--shard-size needs an output folder, but {} names a single .safetensors file",
            a.out.display()
        );
    }
    if a.out.is_dir() && (gguf_out || is_single_file_target(&a.out)) {
        bail!(
            "{}: is a folder; a path ending in .gguf or .safetensors names the output file",
            a.out.display()
        );
    }
    let input = Input::open(&a.input)?;
    let (kinds, kept) = plan(&input, gguf_out, a.dtype.as_deref())?;
    let mut prov = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({
            "source": a.input.display().to_string(),
            "dtype": a.dtype.as_deref().map(str::to_ascii_lowercase),
            "shard_size": shard,
        }),
    );
    let mut dropped = Vec::new();
    let output = if gguf_out {
        let mut md: Vec<(String, gguf::Value)> = match &input {
            Input::Gguf(f) => f.metadata().to_vec(),
            Input::St(m) => m
                .metadata()
                .into_iter()
                .filter(|(k, _)| {
                    k != "format"
                        && k != engram_ckpt::checksum::KEY
                        && k != engram_ckpt::checksum::OUTPUT_KEY
                })
                .map(|(k, v)| (k, gguf::Value::String(v)))
                .collect(),
        };
        prov.remove("format");
        for (k, v) in prov {
            set_kv(&mut md, &k, gguf::Value::String(v));
        }
        if let Some(t) = a.dtype.as_deref().and_then(GgmlType::parse) {
            set_kv(
                &mut md,
                "general.file_type",
                gguf::Value::U32(t.file_type()),
            );
            if t.is_quantized() {
                // GGML_QNT_VERSION, as llama.cpp's quantize and the gguf package record it.
                set_kv(&mut md, "general.quantization_version", gguf::Value::U32(2));
            }
        }
        let specs = (0..input.len())
            .map(|i| match kinds[i] {
                Kind::Gguf(t) => gguf::TensorSpec::new(input.name(i), t, input.shape(i)),
                Kind::St(_) => unreachable!("a GGUF output plans GGUF types"),
            })
            .collect();
        Output::Gguf(GgufWriter::create(&a.out, specs, md)?)
    } else {
        let Input::Gguf(f) = &input else {
            unreachable!("a safetensors-to-safetensors conversion does not come here")
        };
        let mut metadata = std::collections::BTreeMap::new();
        // Keys that describe the GGUF encoding, not the model, are not carried.
        const ENCODING: [&str; 4] = [
            gguf::CHECKSUM_KEY,
            gguf::ALIGNMENT_KEY,
            "general.file_type",
            "general.quantization_version",
        ];
        for (k, v) in f.metadata() {
            if ENCODING.contains(&k.as_str()) {
                continue;
            }
            match v.to_text() {
                Some(text) => {
                    metadata.insert(k.clone(), text);
                }
                None => dropped.push(k.clone()),
            }
        }
        metadata.extend(prov);
        let specs = (0..input.len())
            .map(|i| match kinds[i] {
                Kind::St(d) => TensorSpec::new(input.name(i), d, input.shape(i)),
                Kind::Gguf(_) => unreachable!("a safetensors output plans dtypes"),
            })
            .collect();
        let opts = WriteOptions {
            max_shard_bytes: shard,
            metadata,
        };
        Output::St(ModelWriter::create(&a.out, specs, &opts)?)
    };

    let items = chunk::items((0..input.len()).map(|i| input.shape(i).iter().product()));
    let pb = super::progress::bar(ctx, input.data_bytes(), "convert");
    let res = items.par_iter().try_for_each_init(
        || (vec![0f32; CHUNK], Vec::<u8>::new()),
        |(vals, out), &(ti, start, k)| -> Result<(), Error> {
            let name = input.name(ti);
            let (from, to) = (input.kind(ti), kinds[ti]);
            let raw = input.raw(ti, start, k);
            if same_bytes(from, to) && !a.check_finite {
                output.write_bytes_at(name, start, raw)?;
                input.release(ti, start, start + k);
                pb.inc(raw.len() as u64);
                return Ok(());
            }
            let v = &mut vals[..k];
            input.read_f32_into(ti, start, v)?;
            let path = input.path(ti);
            if a.check_finite
                && let Some(at) = v.iter().position(|x| !x.is_finite())
            {
                return Err(Error::tensor(
                    path,
                    name,
                    format!(
                        "holds a non-finite value ({}) at element {}",
                        v[at],
                        start + at
                    ),
                ));
            }
            let float = match to {
                Kind::St(d) => Some(d),
                Kind::Gguf(g) => g.dtype(),
            };
            if let Some(d) = float
                && let Some(at) = v.iter().position(|&x| x.is_finite() && !fits(d, x))
            {
                return Err(Error::tensor(
                    path,
                    name,
                    format!(
                        "value {} at element {} is beyond the range of {d}",
                        v[at],
                        start + at
                    ),
                ));
            }
            match to {
                Kind::St(d) => {
                    out.resize(k * d.size(), 0);
                    encode_f32(d, v, out);
                }
                Kind::Gguf(g) => {
                    // Chunks start on block boundaries (CHUNK is a multiple of 32) and end on
                    // one or at the tensor's end, whose rows are whole blocks.
                    out.resize(g.nbytes(k).unwrap_or_default(), 0);
                    gguf::encode_f32(g, v, out).map_err(|u| {
                        let why = if u.value.is_finite() {
                            "is beyond the range of the block's f16 scale"
                        } else {
                            "is not finite, which a block cannot hold"
                        };
                        Error::tensor(
                            path,
                            name,
                            format!(
                                "value {} at element {} {why} ({g})",
                                u.value,
                                start + u.index
                            ),
                        )
                    })?;
                }
            }
            output.write_bytes_at(name, start, out)?;
            input.release(ti, start, start + k);
            pb.inc(raw.len() as u64);
            Ok(())
        },
    );
    pb.finish_and_clear();
    res?;
    let written = match output {
        Output::St(w) => w.finish(&[])?,
        Output::Gguf(w) => vec![w.finish()?],
    };
    if !ctx.quiet {
        let out_bytes: u64 = written
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "wrote {} ({} tensors, {} files, {}) in {:.1}s",
            a.out.display(),
            input.len(),
            written.len(),
            util::bytes(out_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    // Said even with --quiet: these are changes to what the user asked for.
    if let Some(&first) = kept.first() {
        eprintln!(
            "note: {} tensors stayed F32 rather than {} (fewer than two dimensions, or a last dimension not a multiple of 32, as llama.cpp keeps them), e.g. '{}'",
            kept.len(),
            a.dtype.as_deref().unwrap_or_default().to_ascii_uppercase(),
            util::esc(input.name(first))
        );
    }
    if let Some(first) = dropped.first() {
        eprintln!(
            "note: {} array-valued GGUF metadata keys are not carried into safetensors metadata, e.g. '{}'",
            dropped.len(),
            util::esc(first)
        );
    }
    if gguf_out {
        let long: Vec<usize> = (0..input.len())
            .filter(|&i| input.name(i).len() > 63)
            .collect();
        if let Some(&first) = long.first() {
            eprintln!(
                "note: {} tensor names are longer than 63 bytes, which llama.cpp refuses, e.g. '{}'",
                long.len(),
                util::esc(input.name(first))
            );
        }
    }
    Ok(())
}
