//! Runs a merge: plans it ([`super::plan`]: checks, per-tensor steps, model-scope
//! thresholds), then executes the plan, streaming: tensors one after another, each in fixed
//! chunks processed in parallel, written straight to the output files.

use super::Chunk;
use super::onepass::{LIMITS, fix_deferred, merge_deferring, merge_trimmed};
use super::plan::{MergePlan, Step};
pub use super::plan::{layer_index, layer_positions};
pub use super::request::MergeRequest;
use crate::output::check_values;
pub use crate::output::copy_as_f32;
use engram_ckpt::{DType, ModelWriter, Result, WriteOptions};
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
    /// Tensors present in a model but not in the template: left out (`--allow-missing`).
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
    let specs = plan.specs(req.out_dtype);
    let writer = ModelWriter::create(
        out,
        specs.clone(),
        &WriteOptions {
            max_shard_bytes: req.max_shard_bytes,
            metadata: metadata.clone(),
        },
    )?;
    // With model-scope thresholds finished during the merge pass: each merged tensor's
    // deferred positions, fixed once every tensor is merged.
    let mut deferred = Vec::new();
    for (ti, (t, spec)) in plan.tensors.iter().zip(&specs).enumerate() {
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
                let rows = req.method.row_aligned();
                let sink = |c: &Chunk, vals: &[f32]| {
                    let finite = |k: usize| {
                        c.base.get(k).is_none_or(|b| b.is_finite())
                            && c.models.iter().all(|m| m[k].is_finite())
                    };
                    check_values(
                        out,
                        name,
                        spec.dtype,
                        c.start,
                        vals,
                        req.check_finite,
                        &finite,
                    )?;
                    writer.write_f32_at(name, c.start, vals)
                };
                let fix = fixer(req, &writer, out, name, spec.dtype);
                let ranks = (req.one_pass && job.model_thresholds.is_none())
                    .then(|| req.method.trim_ranks(&job, job.numel() as u64))
                    .flatten();
                match (ranks, &plan.model_selection, &plan.model_thresholds) {
                    // Model scope, thresholds provisional: merge now, fix at the end.
                    (_, Some(sel), Some(provisional)) => {
                        let first = req.method.trimmed_kernel(&job, provisional.clone())?;
                        let parts = merge_deferring(&job, rows, sel, first.as_ref(), &sink)?;
                        deferred.push((ti, parts));
                    }
                    // Per tensor.
                    (Some(ks), _, _) => {
                        merge_trimmed(
                            &job,
                            &ks,
                            rows,
                            LIMITS,
                            &|t| req.method.trimmed_kernel(&job, t),
                            &sink,
                            &fix,
                        )?;
                    }
                    _ => {
                        let kernel = req.method.prepare(&job)?;
                        job.apply(kernel.as_ref(), rows, &sink)?;
                    }
                }
                report.tensors_merged += 1;
                report.params_merged += t.view.numel() as u64;
            }
        }
        progress(t.view.numel() as u64);
    }
    if let Some(sel) = &plan.model_selection {
        let exact = sel.resolve(
            deferred.iter().flat_map(|(_, parts)| parts.iter()),
            "the model-scope trim",
        )?;
        for (ti, parts) in &deferred {
            let (t, spec) = (&plan.tensors[*ti], &specs[*ti]);
            let mut job = plan.job(req, t)?;
            job.model_thresholds = Some(exact.clone());
            let kernel = req.method.trimmed_kernel(&job, exact.clone())?;
            let fix = fixer(req, &writer, out, t.view.name(), spec.dtype);
            fix_deferred(parts, kernel.as_ref(), &fix)?;
        }
        report.model_thresholds = Some(exact);
    }
    let files = writer.finish(plan.template.side_files())?;
    report.files = files.iter().map(|f| f.display().to_string()).collect();
    Ok(report)
}

/// Where the values a merge finds after its pass go: checked as the merge pass's are, then
/// patched over the placeholders of tensor `name` (`dtype` in the output).
fn fixer<'f>(
    req: &'f MergeRequest<'f>,
    writer: &'f ModelWriter,
    out: &'f Path,
    name: &'f str,
    dtype: DType,
) -> impl Fn(&Chunk, usize, &[u32], &[f32]) -> Result<()> + Sync + 'f {
    move |c: &Chunk, start: usize, at: &[u32], vals: &[f32]| {
        for (j, (&p, &v)) in at.iter().zip(vals).enumerate() {
            let finite = |_| {
                c.base.get(j).is_none_or(|b| b.is_finite())
                    && c.models.iter().all(|m| m[j].is_finite())
            };
            check_values(
                out,
                name,
                dtype,
                start + p as usize,
                &[v],
                req.check_finite,
                &finite,
            )?;
        }
        writer.patch_f32(name, start, at, vals)
    }
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
        // A tensor the base lacks: an error, or left out and listed with allow_missing.
        let out2 = dir.path().join("out2");
        let mut req = MergeRequest::new(req.method, Some(&other[0]), vec![&base]);
        let e = run_merge(&req, &out2, &BTreeMap::new(), &|_| {}).unwrap_err();
        assert!(
            e.to_string().contains("'model.layers.1.w'")
                && e.to_string().contains("--allow-missing"),
            "{e}"
        );
        req.allow_missing = true;
        let rep = run_merge(&req, &out2, &BTreeMap::new(), &|_| {}).unwrap();
        assert_eq!(rep.ignored, vec!["model.layers.1.w", "model.norm.weight"]);
    }

    /// An overflow from finite inputs, and normalizing by weights that sum to 0, are errors
    /// naming the tensor; nothing is written.
    #[test]
    fn overflow_and_a_zero_weight_sum_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), &SHAPES[2..], 2, 6);
        let ta = crate::merge::get("task_arithmetic").unwrap();
        let out = dir.path().join("out");
        let run = |global: &[(&str, f64)], w: &[f64]| {
            let mut p = ParamSource::default();
            for (k, v) in global {
                p.global.insert(k.to_string(), ParamValue::Scalar(*v));
            }
            p.per_model = w
                .iter()
                .map(|w| BTreeMap::from([("weight".to_string(), ParamValue::Scalar(*w))]))
                .collect();
            let req = MergeRequest::new(ta, Some(&base), models.iter().collect())
                .with_params(p)
                .with_check_finite(false);
            run_merge(&req, &out, &BTreeMap::new(), &|_| {})
                .unwrap_err()
                .to_string()
        };
        let e = run(&[("lambda", 1e300)], &[1.0, 1.0]);
        assert!(
            e.contains("model.layers.1.w") && e.contains("not finite"),
            "{e}"
        );
        let e = run(&[("normalize", 1.0)], &[1.0, -1.0]);
        assert!(
            e.contains("model.layers.1.w") && e.contains("sum to 0"),
            "{e}"
        );
        assert!(!out.exists());
    }
}
