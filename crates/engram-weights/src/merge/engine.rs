//! Runs a merge method over whole checkpoints, streaming: tensors one after another, each in
//! fixed chunks processed in parallel, written straight to the output files.

use super::params::ParamSource;
use super::{MergeMethod, ModelDeltas, TensorJob, TrimScope};
use engram_ckpt::{DType, Error, Model, ModelWriter, Result, TensorSpec, TensorView, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

pub struct MergeRequest<'a> {
    pub method: &'static dyn MergeMethod,
    pub base: Option<&'a Model>,
    pub models: Vec<&'a Model>,
    pub params: ParamSource,
    pub scope: TrimScope,
    pub seed: u64,
    /// Output dtype of float tensors; default: the template model's dtype per tensor.
    pub out_dtype: Option<DType>,
    /// Keep the base's tensor where a model lacks it, instead of failing.
    pub allow_missing: bool,
    /// Fail if an output value is NaN or infinite.
    pub check_finite: bool,
    pub max_shard_bytes: Option<u64>,
}

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

/// Relative depth of each tensor: layer i of L at i/(L−1); tensors before the first layer at
/// 0 and after the last at 1.
pub fn layer_positions(names: &[&str]) -> Vec<f64> {
    let idx: Vec<Option<usize>> = names.iter().map(|n| layer_index(n)).collect();
    let max = idx.iter().flatten().max().copied().unwrap_or(0);
    let mut seen_layer = false;
    idx.iter()
        .map(|i| match i {
            Some(i) => {
                seen_layer = true;
                if max == 0 {
                    0.0
                } else {
                    *i as f64 / max as f64
                }
            }
            None if seen_layer => 1.0,
            None => 0.0,
        })
        .collect()
}

/// The layer number in names like `model.layers.12.mlp...`, `h.3.attn`, `blocks.7.`.
pub fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "h" | "blocks" | "layer" | "block")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

struct Planned<'a> {
    view: TensorView<'a>,
    pos: f64,
    kind: Kind,
}

enum Kind {
    Merge,
    Copy,
    KeepBase,
}

pub fn run_merge<'a>(
    req: &'a MergeRequest<'a>,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<MergeReport> {
    let m = req.method;
    if m.needs_base() && req.base.is_none() {
        return Err(Error::Invalid(format!("{} needs a base model", m.name())));
    }
    if req.models.len() < m.min_models() {
        return Err(Error::Invalid(format!(
            "{} needs at least {} model(s) besides the base, got {}",
            m.name(),
            m.min_models(),
            req.models.len()
        )));
    }
    if let Some(max) = m.max_models()
        && req.models.len() > max
    {
        return Err(Error::Invalid(format!(
            "{} takes at most {max} model(s) besides the base, got {}",
            m.name(),
            req.models.len()
        )));
    }
    let template = req
        .base
        .or(req.models.first().copied())
        .ok_or_else(|| Error::Invalid("a merge needs at least one model".to_string()))?;
    let names: Vec<&str> = template.names().collect();
    let positions = layer_positions(&names);
    let mut report = MergeReport {
        method: m.name().to_string(),
        ..Default::default()
    };
    let mut planned = Vec::with_capacity(names.len());
    for (view, pos) in template.tensors().zip(positions) {
        let name = view.name();
        let kind = if !view.dtype().is_float() {
            report.copied.push(name.to_string());
            Kind::Copy
        } else {
            let mut kind = Kind::Merge;
            for mm in &req.models {
                match mm.get(name) {
                    None if req.allow_missing && req.base.is_some() => {
                        kind = Kind::KeepBase;
                    }
                    None => {
                        return Err(Error::tensor(
                            mm.source(),
                            name,
                            "missing from this model (use --allow-missing to keep the base's tensor)",
                        ));
                    }
                    Some(t) if t.shape() != view.shape() => {
                        return Err(Error::tensor(
                            mm.source(),
                            name,
                            format!(
                                "shape {:?} differs from {:?} in {}",
                                t.shape(),
                                view.shape(),
                                template.source().display()
                            ),
                        ));
                    }
                    Some(t) if !t.dtype().is_float() => {
                        return Err(Error::tensor(
                            mm.source(),
                            name,
                            format!("dtype {} is not a float type", t.dtype()),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if matches!(kind, Kind::KeepBase) {
                report.kept_from_base.push(name.to_string());
            }
            kind
        };
        planned.push(Planned { view, pos, kind });
    }
    for mm in &req.models {
        for n in mm.names() {
            if template.get(n).is_none() && !report.ignored.iter().any(|x| x == n) {
                report.ignored.push(n.to_string());
            }
        }
    }

    // Model scope: two passes over every merged tensor find every model's global threshold.
    let thresholds = if req.scope == TrimScope::Model && m.trims_by_magnitude() {
        let jobs = planned
            .iter()
            .filter(|p| matches!(p.kind, Kind::Merge))
            .map(|p| job_for(req, p, None))
            .collect::<Result<Vec<_>>>()?;
        let densities = (0..req.models.len())
            .map(|i| model_density(req, i))
            .collect::<Result<Vec<_>>>()?;
        let th = ModelDeltas::new(&jobs).thresholds(&densities)?;
        report.model_thresholds = Some(th.clone());
        Some(th)
    } else {
        None
    };

    let specs: Vec<TensorSpec> = planned
        .iter()
        .map(|p| {
            let dt = match (&p.kind, req.out_dtype) {
                (Kind::Copy, _) | (_, None) => p.view.dtype(),
                (_, Some(d)) => d,
            };
            TensorSpec::new(p.view.name(), dt, p.view.shape())
        })
        .collect();
    let writer = ModelWriter::create(
        out,
        specs,
        &WriteOptions {
            max_shard_bytes: req.max_shard_bytes,
            metadata: metadata.clone(),
        },
    )?;
    for p in &planned {
        let name = p.view.name();
        match p.kind {
            Kind::Copy => writer.write_bytes(name, p.view.bytes)?,
            Kind::KeepBase => {
                let b = req
                    .base
                    .map(|b| b.require(name))
                    .transpose()?
                    .unwrap_or(p.view);
                copy_as_f32(&writer, &b)?;
            }
            Kind::Merge => {
                let job = job_for(req, p, thresholds.clone())?;
                let kernel = m.prepare(&job)?;
                job.apply(kernel.as_ref(), m.row_aligned(), &|start, vals| {
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
                report.params_merged += p.view.numel() as u64;
            }
        }
        progress(p.view.numel() as u64);
    }
    let files = writer.finish(template.side_files())?;
    report.files = files.iter().map(|f| f.display().to_string()).collect();
    Ok(report)
}

fn job_for<'a>(
    req: &'a MergeRequest<'a>,
    p: &'a Planned<'a>,
    thresholds: Option<Vec<Option<f32>>>,
) -> Result<TensorJob<'a>> {
    let name = p.view.name();
    let (model_params, global) = req.params.resolve(req.method.params(), name, p.pos);
    Ok(TensorJob {
        name,
        shape: p.view.shape(),
        base: req.base.map(|b| b.require(name)).transpose()?,
        models: req
            .models
            .iter()
            .map(|mm| mm.require(name))
            .collect::<Result<_>>()?,
        model_params,
        global,
        scope: req.scope,
        model_thresholds: thresholds,
        seed: req.seed,
    })
}

/// Copies a float tensor into the writer chunk by chunk (the writer converts the dtype).
pub fn copy_as_f32(writer: &ModelWriter, v: &TensorView) -> Result<()> {
    let mut buf = vec![0f32; engram_ckpt::CHUNK.min(v.numel())];
    let mut at = 0;
    while at < v.numel() {
        let n = buf.len().min(v.numel() - at);
        v.read_f32_into(at, &mut buf[..n])?;
        writer.write_f32_at(v.name(), at, &buf[..n])?;
        at += n;
    }
    Ok(())
}

/// Model scope needs one density per model for the whole model.
fn model_density(req: &MergeRequest, i: usize) -> Result<f64> {
    let spec = req.method.params().iter().find(|s| s.name == "density");
    let default = spec.and_then(|s| s.default).unwrap_or(1.0);
    let v = req
        .params
        .per_model
        .get(i)
        .and_then(|m| m.get("density"))
        .or_else(|| req.params.global.get("density"));
    match v {
        None => Ok(default),
        Some(super::params::ParamValue::Scalar(d)) => Ok(*d),
        Some(_) => Err(Error::Invalid(
            "trim_scope: model needs one density per model, not a gradient or filter list".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::params::ParamValue;
    use crate::testutil::{random_family, values};

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
        let req = MergeRequest {
            method: crate::merge::get("task_arithmetic").unwrap(),
            base: Some(&base),
            models: models.iter().collect(),
            params,
            scope: TrimScope::Tensor,
            seed: 0,
            out_dtype: None,
            allow_missing: false,
            check_finite: true,
            max_shard_bytes: None,
        };
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
        let mut req = MergeRequest {
            method: crate::merge::get("task_arithmetic").unwrap(),
            base: Some(&base),
            models: vec![&other[0]],
            params: ParamSource::default(),
            scope: TrimScope::Tensor,
            seed: 0,
            out_dtype: None,
            allow_missing: false,
            check_finite: false,
            max_shard_bytes: None,
        };
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
    }

    #[test]
    fn layer_positions_span_zero_to_one() {
        let names = [
            "embed",
            "model.layers.0.a",
            "model.layers.2.a",
            "model.layers.4.b",
            "norm",
        ];
        assert_eq!(layer_positions(&names), vec![0.0, 0.0, 0.5, 1.0, 1.0]);
    }
}
