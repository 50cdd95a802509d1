//! The synthetic bf16 models the weight-space benchmarks measure on (`engram_weights::synth`,
//! seed 0), written once into the benchmark's folder and reused by later runs when a complete
//! model of the same size is already there.

use crate::machine::remove;
use crate::{Progress, counted};
use anyhow::Result;
use engram_ckpt::{DType, Model};
use engram_weights::synth::{ArchConfig, SynthOptions, write_family};
use serde_json::json;
use std::path::Path;

fn options(arch: &ArchConfig, finetunes: usize) -> SynthOptions {
    SynthOptions {
        arch: arch.clone(),
        finetunes,
        dtype: DType::BF16,
        seed: 0,
        delta_scale: 0.05,
        max_shard_bytes: None,
    }
}

/// Opens the base model at `base` if it is a bf16 model of `arch`'s size; writes it (no
/// fine-tunes) into `base`'s parent folder otherwise. `command` is recorded as provenance.
pub fn ensure_base(
    base: &Path,
    arch: &ArchConfig,
    command: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Model> {
    let want = arch.param_count();
    if let Ok(m) = Model::open(base)
        && m.param_count() == want
        && m.tensors().all(|t| t.dtype() == DType::BF16)
    {
        return Ok(m);
    }
    let dir = base.parent().unwrap_or(Path::new("."));
    remove(base)?;
    let md = engram_ckpt::provenance(command, &json!({"arch": arch, "dtype": "BF16", "seed": 0}));
    let opts = options(arch, 0);
    counted(progress, "synth", want, |tick| {
        write_family(dir, &opts, &md, tick)
    })?;
    Ok(Model::open(base)?)
}

/// Writes the family (base + `n` fine-tunes) of `arch` into `fam`, unless a complete one of
/// that size is already there. `size` labels the progress; `command` is the provenance.
pub fn ensure_family(
    fam: &Path,
    size: &str,
    arch: &ArchConfig,
    n: usize,
    command: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let params = arch.param_count();
    let ready = (1..=n).all(|i| fam.join(format!("ft-{i}/model.safetensors")).is_file())
        && Model::open(&fam.join("base")).is_ok_and(|m| m.param_count() == params);
    if ready {
        return Ok(());
    }
    remove(fam)?;
    let md = engram_ckpt::provenance(command, &json!({"arch": arch}));
    let opts = options(arch, n);
    counted(progress, &format!("synth {size}"), params, |tick| {
        write_family(fam, &opts, &md, tick)
    })?;
    Ok(())
}
