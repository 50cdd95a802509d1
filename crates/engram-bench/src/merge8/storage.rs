//! Storage: the eight fine-tunes compressed into one bundle (base, merged vector, a mask per
//! task) with packed and with entropy-coded masks, and every task rebuilt from both and
//! checked byte for byte against its in-memory reconstruction.

use super::page::StorageResult;
use anyhow::Result;
use engram_ckpt::DType;
use engram_weights::compress::{MaskCoding, extract_task, write_bundle};
use engram_weights::tall::Tall;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The scratch model folders of the byte-for-byte check, relative to the study's folder.
pub const CHECK_MEMORY: &str = "bundle-check/memory";
pub const CHECK_PACKED: &str = "bundle-check/bundle-packed";
pub const CHECK_CODED: &str = "bundle-check/bundle-coded";

/// Writes the packed and the entropy-coded bundle, rebuilds every task from both and checks
/// each against the in-memory reconstruction byte for byte; times one rebuild.
pub fn compress_and_check(dir: &Path, tall: &Tall, family: &str) -> Result<StorageResult> {
    let md = BTreeMap::new();
    let packed = write_bundle(
        tall,
        &dir.join("bundle-packed"),
        DType::F32,
        MaskCoding::Packed,
        &md,
        &|_| {},
    )?;
    let coded = write_bundle(
        tall,
        &dir.join("bundle-coded"),
        DType::F32,
        MaskCoding::Arith,
        &md,
        &|_| {},
    )?;
    let mut bit_exact = true;
    let mut times = Vec::new();
    for (t, name) in tall.tasks.iter().enumerate() {
        let mem = dir.join(CHECK_MEMORY);
        tall.write_model(
            &mem,
            None,
            &md,
            &|_| {},
            &Tall::reconstruct_kernel(t, DType::F32),
        )?;
        let want = std::fs::read(mem.join("model.safetensors"))?;
        for (b, scratch) in [
            ("bundle-packed", CHECK_PACKED),
            ("bundle-coded", CHECK_CODED),
        ] {
            let out = dir.join(scratch);
            let t0 = Instant::now();
            extract_task(&dir.join(b), name, &out, &md, &|_| {})?;
            if b == "bundle-coded" {
                times.push(t0.elapsed().as_secs_f64());
            }
            bit_exact &= std::fs::read(out.join("model.safetensors"))? == want;
        }
    }
    // Only the check's own files: a user's file in bundle-check stays.
    let _ = crate::machine::remove_precise(
        dir,
        &[],
        &[CHECK_MEMORY, CHECK_PACKED, CHECK_CODED].map(String::from),
        &super::is_study_model_file,
    );
    times.sort_by(f64::total_cmp);
    Ok(StorageResult {
        family: family.into(),
        params: tall
            .tensors
            .iter()
            .map(|n| tall.base.require(n).map(|v| v.numel() as u64))
            .sum::<engram_ckpt::Result<u64>>()?,
        tasks: tall.tasks.len(),
        checkpoints_bytes: packed.replaced_bytes,
        bundle_packed_bytes: packed.bundle_bytes,
        bundle_coded_bytes: coded.bundle_bytes,
        masks_packed_bytes: packed.mask_bytes,
        masks_coded_bytes: coded.mask_bytes,
        rebuild_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
        bit_exact,
    })
}
