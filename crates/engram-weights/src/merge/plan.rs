//! Planning a merge, before anything is written: the request is checked, every tensor of the
//! template gets its step (merge, copy, keep the base's), and with model-scope trimming the
//! plan holds each model's |τ| threshold over the whole model (the first of the two streaming
//! passes the card asks for; for TIES, the histogram pass alone when the merge pass can
//! finish the thresholds, [`super::onepass`]). Execution ([`super::engine`]) then only
//! follows the plan, so a bad request fails before the output exists.

use super::TrimScope;
use super::job::{ModelDeltas, TensorJob};
use super::onepass::{LIMITS, Selection};
use super::params::{ParamSource, ParamValue};
use super::request::MergeRequest;
use crate::select::keep_ranks;
use engram_ckpt::{DType, Error, Model, Result, TensorSpec, TensorView};
use std::collections::BTreeMap;

/// What happens to one tensor of the template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Merged by the method.
    Merge,
    /// Not a float tensor: copied from the template as is.
    Copy,
    /// Some model lacks it (`allow_missing`): the base's tensor is kept.
    KeepBase,
}

pub struct TensorPlan<'a> {
    /// The template's tensor (the base's, else the first model's).
    pub view: TensorView<'a>,
    /// Relative depth in [0, 1], for parameter gradients over layers.
    pub pos: f64,
    pub step: Step,
}

pub struct MergePlan<'a> {
    /// The model whose tensors, dtypes and side files the output follows.
    pub template: &'a Model,
    /// Every tensor of the template, in its order.
    pub tensors: Vec<TensorPlan<'a>>,
    /// The request's parameters with one map per model.
    pub params: ParamSource,
    /// With model-scope trimming: per model, the |τ| threshold over the whole model
    /// (provisional while `model_selection` is set).
    pub model_thresholds: Option<Vec<Option<f32>>>,
    /// With model-scope trimming finished during the merge pass ([`super::onepass`]): the
    /// selection after its histogram pass, whose deferred positions the engine fixes once
    /// every tensor is merged.
    pub model_selection: Option<Selection>,
    /// Tensors present in a model but not in the template: not in the output
    /// (`allow_missing`; otherwise an error).
    pub ignored: Vec<String>,
}

impl<'a> MergePlan<'a> {
    /// Checks `req` and plans every tensor; with model-scope trimming (a method that trims by
    /// magnitude), streams over every merged tensor to find the models' global thresholds.
    pub fn new(req: &MergeRequest<'a>) -> Result<Self> {
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
        if req.params.per_model.len() > req.models.len() {
            return Err(Error::Invalid(format!(
                "parameters given for {} models, but {} model(s) to merge",
                req.params.per_model.len(),
                req.models.len()
            )));
        }
        let model_names: Vec<String> = req
            .models
            .iter()
            .map(|mm| mm.source().display().to_string())
            .collect();
        req.params
            .validate(m, &model_names)
            .map_err(Error::Invalid)?;
        let template = req
            .base
            .or(req.models.first().copied())
            .ok_or_else(|| Error::Invalid("a merge needs at least one model".to_string()))?;
        let names: Vec<&str> = template.names().collect();
        let positions = layer_positions(&names);
        let mut tensors = Vec::with_capacity(names.len());
        for (view, pos) in template.tensors().zip(positions) {
            let step = step_of(req, template, &view)?;
            tensors.push(TensorPlan { view, pos, step });
        }
        let mut ignored: Vec<String> = Vec::new();
        for mm in &req.models {
            for n in mm.names() {
                if template.get(n).is_some() || ignored.iter().any(|x| x == n) {
                    continue;
                }
                if !req.allow_missing {
                    return Err(Error::tensor(
                        mm.source(),
                        n,
                        format!(
                            "not in {} (use --allow-missing to leave it out of the output)",
                            template.source().display()
                        ),
                    ));
                }
                ignored.push(n.to_string());
            }
        }
        // A model without its own parameters takes the global ones.
        let mut params = req.params.clone();
        params.per_model.resize(req.models.len(), BTreeMap::new());
        for t in tensors.iter().filter(|t| t.step == Step::Merge) {
            let (per_model, _) = params.resolve(m.params(), t.view.name(), t.pos);
            for (p, name) in per_model.iter().zip(&model_names) {
                m.check_params(p).map_err(|e| {
                    Error::Invalid(format!(
                        "merge parameters of model {name} (tensor '{}'): {e}",
                        t.view.name()
                    ))
                })?;
            }
        }
        let mut plan = MergePlan {
            template,
            tensors,
            params,
            model_thresholds: None,
            model_selection: None,
            ignored,
        };
        if req.scope == TrimScope::Model && m.trims_by_magnitude() {
            let jobs = plan
                .tensors
                .iter()
                .filter(|t| t.step == Step::Merge)
                .map(|t| plan.job(req, t))
                .collect::<Result<Vec<_>>>()?;
            let densities = (0..req.models.len())
                .map(|i| plan.model_density(req, i))
                .collect::<Result<Vec<_>>>()?;
            let deltas = ModelDeltas::new(&jobs);
            // One histogram pass, the rest finished during the merge pass, for a method whose
            // kernel merges position by position given the thresholds; two passes otherwise.
            let total = jobs.iter().map(|j| j.numel() as u64).sum();
            let one_pass = req.one_pass && jobs.iter().all(|j| m.trim_ranks(j, total).is_some());
            if one_pass {
                let ks = keep_ranks(&densities, total);
                let (thresholds, pending) =
                    Selection::start(&deltas, &ks, total, ks.len(), LIMITS)?;
                plan.model_thresholds = Some(thresholds);
                plan.model_selection = pending;
            } else {
                plan.model_thresholds = Some(deltas.thresholds(&densities)?);
            }
        }
        Ok(plan)
    }

    /// Names of the tensors planned with `step`, in template order.
    pub fn names(&self, step: Step) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|t| t.step == step)
            .map(|t| t.view.name().to_string())
            .collect()
    }

    /// The output tensors: merged ones in `out_dtype` (default: the template's), others as
    /// the template.
    pub fn specs(&self, out_dtype: Option<DType>) -> Vec<TensorSpec> {
        self.tensors
            .iter()
            .map(|t| {
                let dt = match (t.step, out_dtype) {
                    (Step::Copy, _) | (_, None) => t.view.dtype(),
                    (_, Some(d)) => d,
                };
                TensorSpec::new(t.view.name(), dt, t.view.shape())
            })
            .collect()
    }

    /// The method's view of one planned tensor: views, parameters resolved for it, and the
    /// model-scope thresholds if the plan has them.
    pub fn job(&self, req: &MergeRequest<'a>, t: &TensorPlan<'a>) -> Result<TensorJob<'a>> {
        let name = t.view.name();
        let (model_params, global) = self.params.resolve(req.method.params(), name, t.pos);
        Ok(TensorJob {
            name,
            shape: t.view.shape(),
            base: req.base.map(|b| b.require(name)).transpose()?,
            models: req
                .models
                .iter()
                .map(|mm| mm.require(name))
                .collect::<Result<_>>()?,
            model_params,
            global,
            scope: req.scope,
            model_thresholds: self.model_thresholds.clone(),
            seed: req.seed,
        })
    }

    /// Model scope needs one density per model for the whole model.
    fn model_density(&self, req: &MergeRequest, i: usize) -> Result<f64> {
        let spec = req.method.params().iter().find(|s| s.name == "density");
        let default = spec.and_then(|s| s.default).unwrap_or(1.0);
        let v = self
            .params
            .per_model
            .get(i)
            .and_then(|m| m.get("density"))
            .or_else(|| self.params.global.get("density"));
        match v {
            None => Ok(default),
            Some(ParamValue::Scalar(d)) => Ok(*d),
            Some(_) => Err(Error::Invalid(
                "trim_scope: model needs one density per model, not a gradient or filter list"
                    .into(),
            )),
        }
    }
}

/// The step of one template tensor: copy a non-float one; merge a float one every model has
/// with the same shape and a float dtype; keep the base's where a model lacks it, if allowed.
fn step_of(req: &MergeRequest, template: &Model, view: &TensorView) -> Result<Step> {
    if !view.dtype().is_float() {
        // Copied from the template: every model's must be the same, or its values are lost.
        for mm in &req.models {
            match mm.get(view.name()) {
                Some(x) => crate::output::same_non_float(template, view, mm, &x)?,
                None if req.allow_missing => {}
                None => {
                    return Err(Error::tensor(
                        mm.source(),
                        view.name(),
                        "missing from this model (use --allow-missing to keep the base's tensor)",
                    ));
                }
            }
        }
        return Ok(Step::Copy);
    }
    let name = view.name();
    let mut step = Step::Merge;
    for mm in &req.models {
        match mm.get(name) {
            None if req.allow_missing && req.base.is_some() => {
                step = Step::KeepBase;
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
    Ok(step)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random_family;

    /// A request from `MergeRequest::new` with global parameters only plans one parameter
    /// map per model (each taking the global values); more maps than models is an error.
    #[test]
    fn every_model_gets_parameters_and_extra_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (base, models) = random_family(dir.path(), &[("model.layers.0.w", &[4, 4])], 2, 1);
        let mut params = ParamSource::default();
        params
            .global
            .insert("density".into(), ParamValue::Scalar(0.5));
        let req = MergeRequest::new(
            crate::merge::get("ties").unwrap(),
            Some(&base),
            models.iter().collect(),
        )
        .with_params(params.clone());
        let plan = MergePlan::new(&req).unwrap();
        assert_eq!(plan.params.per_model.len(), 2);
        let job = plan.job(&req, &plan.tensors[0]).unwrap();
        assert!(
            job.model_params
                .iter()
                .all(|p| p.get("density") == Some(0.5))
        );

        params.per_model = vec![BTreeMap::new(); 3];
        let req = req.with_params(params);
        let Err(e) = MergePlan::new(&req) else {
            panic!("three parameter maps for two models accepted")
        };
        assert!(e.to_string().contains("3 models"), "{e}");
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
