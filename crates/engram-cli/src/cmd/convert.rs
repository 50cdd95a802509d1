//! `engram convert IN -o OUT`: changes the dtype of the float tensors (`--dtype`; integer and
//! boolean tensors are copied unchanged) and the sharding (`--shard-size`; without it the
//! output is one file, so a sharded model becomes a single file). Streams tensor by tensor in
//! chunks of `CHUNK` values, in parallel over (tensor, chunk), into the atomic `ModelWriter`:
//! memory stays at a few chunks per thread whatever the model size, and a failed or killed
//! run leaves any earlier OUT untouched. Tensors whose dtype does not change are copied byte
//! for byte. The input's `__metadata__` is kept, with engram's provenance added.

use super::Ctx;
use super::args::{opt_bytes, opt_float_dtype};
use super::util;
use anyhow::{Result, bail};
use engram_ckpt::chunk::{self, CHUNK};
use engram_ckpt::dtype::encode_f32;
use engram_ckpt::writer::is_single_file_target;
use engram_ckpt::{Error, ModelWriter, TensorSpec, WriteOptions};
use engram_weights::output::fits;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model to convert (file, folder or index).
    pub input: PathBuf,
    /// Output: a path ending in .safetensors is one file; anything else a model folder
    /// (with side files such as config.json carried along).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Float dtype of the output (f32, f16, bf16, f64, f8_e4m3, f8_e5m2); default unchanged.
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
