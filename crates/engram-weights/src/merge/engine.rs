//! Runs a merge: plans it ([`super::plan`]: checks, per-tensor steps, model-scope
//! thresholds), then executes the plan, streaming: tensors one after another, each in fixed
//! chunks processed in parallel, written straight to the output files.

use super::plan::{MergePlan, Step};
pub use super::plan::{layer_index, layer_positions};
pub use super::request::MergeRequest;
pub use crate::output::copy_as_f32;
use engram_ckpt::{Error, ModelWriter, Result, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MergeReport {
    pub method: String,
    pub tensors_merged: usize,
    pub params_merged: u64,
    /// Integer and boolean tensors, copied from the template model.
    pub copied: Vec<String>,
    /// Tensors some model lacks, kept from the base (`--allow-missing`).
    pub kept_from_base: Vec<String>,
    /// Tensors present in a model but not in the template: not in the output.
    pub ignored: Vec<String>,
    /// With trim_scope model: the |τ| threshold of each model.
    pub model_thresholds: Option<Vec<Option<f32>>>,
    pub files: Vec<String>,
}

pub fn run_merge<'a>(
    req: &'a MergeRequest<'a>,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<MergeReport> {
    let plan = MergePlan::new(req)?;
    let mut report = MergeReport {
        method: req.method.name().to_string(),
        copied: plan.names(Step::Copy),
        kept_from_base: plan.names(Step::KeepBase),
        ignored: plan.ignored.clone(),
        model_thresholds: plan.model_thresholds.clone(),
        ..Default::default()
    };
    let writer = ModelWriter::create(
        out,
        plan.specs(req.out_dtype),
        &WriteOptions {
            max_shard_bytes: req.max_shard_bytes,
            metadata: metadata.clone(),
        },
    )?;
    for t in &plan.tensors {
        let name = t.view.name();
        match t.step {
            Step::Copy => writer.write_bytes(name, t.view.bytes)?,
            Step::KeepBase => {
                let b = req
                    .base
                    .map(|b| b.require(name))
                    .transpose()?
                    .unwrap_or(t.view);
                copy_as_f32(&writer, &b)?;
            }
            Step::Merge => {
                let job = plan.job(req, t)?;
                let kernel = req.method.prepare(&job)?;
                job.apply(kernel.as_ref(), req.method.row_aligned(), &|start, vals| {
                    if req.check_finite && vals.iter().any(|v| !v.is_finite()) {
                        return Err(Error::tensor(
                            out,
                            name,
                            "merged values include NaN or infinity",
                        ));
                    }
                    writer.write_f32_at(name, start, vals)
                })?;
                report.tensors_merged += 1;
                report.params_merged += t.view.numel() as u64;
            }
        }
        progress(t.view.numel() as u64);
    }
    let files = writer.finish(plan.template.side_files())?;
    report.files = files.iter().map(|f| f.display().to_string()).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::params::{ParamSource, ParamValue};
    use crate::testutil::{random_family, values};
    use engram_ckpt::Model;

    const SHAPES: &[(&str, &[usize])] = &[
        ("model.embed.weight", &[50, 8]),
        ("model.layers.0.w", &[600, 700]),
        ("model.layers.1.w", &[8, 8]),
        ("model.norm.weight", &[8]),
    ];

    #[test]
    fn task_arithmetic_matches_the_formula_and_threads_do_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), SHAPES, 3, 5);
        let mut params = ParamSource::default();
        params
            .global
            .insert("lambda".into(), ParamValue::Scalar(0.7));
        params.per_model = vec![BTreeMap::new(); 3];
        params.per_model[1].insert("weight".into(), ParamValue::Scalar(2.0));
        let req = MergeRequest::new(
            crate::merge::get("task_arithmetic").unwrap(),
            Some(&base),
            models.iter().collect(),
        )
        .with_params(params);
        let out = dir.path().join("out");
        let rep = run_merge(&req, &out, &BTreeMap::new(), &|_| {}).unwrap();
        assert_eq!(rep.tensors_merged, 4);
        let merged = Model::open(&out).unwrap();
        for (name, _) in SHAPES {
            let b = values(&base, name);
            let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
            let got = values(&merged, name);
            for k in 0..b.len() {
                let want =
                    b[k] + 0.7 * ((ms[0][k] - b[k]) + 2.0 * (ms[1][k] - b[k]) + (ms[2][k] - b[k]));
                assert!((got[k] - want).abs() < 1e-6, "{name}[{k}]");
            }
        }
        let out1 = dir.path().join("out1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run_merge(&req, &out1, &BTreeMap::new(), &|_| {}))
            .unwrap();
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(out1.join("model.safetensors")).unwrap()
        );
    }

    #[test]
    fn missing_tensors_and_shape_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _) = random_family(&dir.path().join("a"), SHAPES, 1, 1);
        let (_, other) = random_family(&dir.path().join("b"), &SHAPES[..2], 1, 1);
        let mut req = MergeRequest::new(
            crate::merge::get("task_arithmetic").unwrap(),
            Some(&base),
            vec![&other[0]],
        )
        .with_check_finite(false);
        let out = dir.path().join("out");
        let e = run_merge(&req, &out, &BTreeMap::new(), &|_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.layers.1.w") && e.contains("missing"),
            "{e}"
        );
        assert!(!out.join("model.safetensors").exists());
        req.allow_missing = true;
        let rep = run_merge(&req, &out, &BTreeMap::new(), &|_| {}).unwrap();
        assert_eq!(
            rep.kept_from_base,
            vec!["model.layers.1.w", "model.norm.weight"]
        );
        let merged = Model::open(&out).unwrap();
        for name in &rep.kept_from_base {
            assert_eq!(values(&merged, name), values(&base, name), "{name}");
        }
    }
}
