//! The study's weight-space half: merges of the base and the fine-tuned backbones on files,
//! each evaluated with the tasks' own heads (Task-IL over each task's 10 classes). λ (TA,
//! TIES), λ_t (TALL) and α (Consensus) are chosen on validation by mean normalized accuracy
//! (merging.md, selection protocol), then reported on test.
//!
//! One TIES trim scope throughout: the TIES row, TALL over TIES and Consensus over TIES all
//! take each task vector's top-k over the whole model ([`TIES_SCOPE`], `trim_scope: model`),
//! as the TIES and TALL reference code do and as merging.md asks of a table that reports
//! TIES beside TALL or Consensus over TIES (one table, one scope).

use super::page::{MaskSummary, MethodResult};
use super::training::{Study, read_values};
use anyhow::{Result, anyhow};
use engram_ckpt::{DType, Model};
use engram_learn::eval::values_accuracy;
use engram_learn::scenario::Part;
use engram_learn::train::stage::Values;
use engram_weights::merge::TrimScope;
use engram_weights::merge::engine::{MergeRequest, run_merge};
use engram_weights::merge::get;
use engram_weights::merge::params::{ParamSource, ParamValue};
use engram_weights::tall::{LAMBDA_GRID, MtlRecipe, Tall, choose_lambda};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Grids of the selection protocol (merging.md): λ and α in 0.1–1.0, extended downwards
/// with 0.02 and 0.05 because on these tasks the optimum sat at 0.1, the card grid's edge.
pub const TA_GRID: [f32; 12] = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// TIES, dis-mean (mergekit's default `normalize`): λ from 0.8 to 2.5 (ties-merging README),
/// extended downwards to 0.1 for the same reason.
pub const TIES_GRID: [f32; 13] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.5,
];
pub const TIES_DENSITY: f64 = 0.2;
/// Where every TIES step of the study takes its top-k: over the whole model, as the TIES and
/// TALL reference code (merging.md, "Trimming scope"). The TALL recipe ([`MtlRecipe::Ties`])
/// always trims over the model; the TIES row's merge is asked for the same scope.
pub const TIES_SCOPE: TrimScope = TrimScope::Model;

/// The scope in words, for the page and `results.json`.
pub fn scope_name(scope: TrimScope) -> &'static str {
    match scope {
        TrimScope::Tensor => "tensor",
        TrimScope::Model => "model",
    }
}
pub const ALPHA_GRID: [f32; 12] = TA_GRID;
/// Consensus thresholds: k = 2 is the card's default; 1 and 3 are the ablation.
pub const K_VALUES: [usize; 3] = [1, 2, 3];

/// The weight-space half of the study: merges of the base and the fine-tuned backbones on
/// files, each evaluated with the tasks' own heads.
pub struct Merger<'a> {
    pub st: &'a Study,
    pub ev: &'a Evaluator<'a>,
    pub norm: &'a Normalizer,
    pub base: &'a Model,
    pub models: &'a [Model],
    pub tasks: Vec<String>,
    /// Where grid candidates are written (one at a time).
    pub tmp: PathBuf,
}

impl<'a> Merger<'a> {
    fn out(&self, name: &str) -> Result<PathBuf> {
        let p = self.st.dir.join("merges").join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        Ok(p)
    }

    /// Task Arithmetic or TIES: λ by mean normalized validation accuracy, then test.
    pub fn merged(
        &self,
        label: &str,
        method: &str,
        grid: &[f32],
        density: Option<f64>,
    ) -> Result<MethodResult> {
        let mut score = |l: f32| -> Result<f64> {
            merge_file(self.base, self.models, method, l, density, &self.tmp)?;
            Ok(self
                .norm
                .val(&self.ev.all(&read_values(&self.tmp)?, Part::Valid)?))
        };
        let (best, curve) = choose(grid, &mut score)?;
        let out = self.out(&format!("{method}-lambda-{best}.safetensors"))?;
        merge_file(self.base, self.models, method, best, density, &out)?;
        let test = self.ev.all(&read_values(&out)?, Part::Test)?;
        let chosen = match density {
            Some(d) => format!(
                "λ = {best}, top {}% over the whole model (dis-mean)",
                d * 100.0
            ),
            None => format!("λ = {best}"),
        };
        Ok(self.norm.row(label, chosen, test, curve))
    }

    pub fn tall_with(&self, recipe: MtlRecipe, lambdas: Vec<f32>) -> Result<Tall<'a>> {
        Ok(Tall::new(
            self.base,
            self.models.iter().collect(),
            self.tasks.clone(),
            recipe,
            lambdas,
        )?)
    }

    /// Writes the model `kernel` builds from the masks to `out`.
    fn write(
        tall: &Tall,
        out: &Path,
        kernel: &(dyn Fn(&engram_weights::tall::MaskChunk, &mut [f32]) + Sync),
    ) -> Result<()> {
        tall.write_model(out, None, &BTreeMap::new(), &|_| {}, kernel)?;
        Ok(())
    }

    /// TALL masks: λ_t per task on that task's validation accuracy of θ̂_t, then test; the
    /// row, the mask statistics and the chosen λ_t.
    pub fn tall(
        &self,
        recipe: MtlRecipe,
        rname: &str,
        label: &str,
    ) -> Result<(MethodResult, MaskSummary, Vec<f32>)> {
        let n = self.tasks.len();
        let mut per_task: Vec<Vec<f64>> = vec![Vec::new(); n];
        for &l in &LAMBDA_GRID {
            let tall = self.tall_with(recipe, vec![l; n])?;
            for (t, scores) in per_task.iter_mut().enumerate() {
                Self::write(&tall, &self.tmp, &Tall::reconstruct_kernel(t, DType::F32))?;
                let acc = self.ev.acc(&read_values(&self.tmp)?, t, Part::Valid)?;
                scores.push(100.0 * acc / self.norm.ft_val[t].max(1e-9));
            }
        }
        let mut lambdas = Vec::new();
        let mut curve = Vec::new();
        for scores in &per_task {
            let (best, c) = choose_lambda(&LAMBDA_GRID, &mut |l| {
                LAMBDA_GRID
                    .iter()
                    .position(|&g| g == l)
                    .map_or(0.0, |i| scores[i])
            });
            lambdas.push(best);
            curve.extend(c.into_iter().map(|(l, s)| (f64::from(l), s)));
        }
        let tall = self.tall_with(recipe, lambdas.clone())?;
        let mut test = Vec::new();
        for (t, task) in self.tasks.iter().enumerate() {
            let out = self.out(&format!("tall-{rname}/{task}.safetensors"))?;
            Self::write(&tall, &out, &Tall::reconstruct_kernel(t, DType::F32))?;
            test.push(self.ev.acc(&read_values(&out)?, t, Part::Test)?);
        }
        let chosen = format!(
            "λ_t = {}",
            lambdas
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join("/")
        );
        let row = self
            .norm
            .row(&format!("TALL masks ({label})"), chosen, test, curve);
        let stats = tall.stats(&|_| {})?.total;
        let summary = MaskSummary {
            recipe: rname.into(),
            lambdas: lambdas.clone(),
            params: stats.params,
            untouched: stats.untouched,
            catastrophic: stats.catastrophic,
            selfish: stats.selfish,
            shared: stats.shared,
            histogram: stats.histogram,
            mask_density: stats.mask_density,
        };
        Ok((row, summary, lambdas))
    }

    /// Consensus with threshold k over `tall`'s masks: α on validation, then test.
    pub fn consensus(
        &self,
        tall: &Tall,
        rname: &str,
        label: &str,
        k: usize,
    ) -> Result<MethodResult> {
        let mut score = |alpha: f32| -> Result<f64> {
            Self::write(tall, &self.tmp, &Tall::consensus_kernel(k, alpha))?;
            Ok(self
                .norm
                .val(&self.ev.all(&read_values(&self.tmp)?, Part::Valid)?))
        };
        let (best, curve) = choose(&ALPHA_GRID, &mut score)?;
        let out = self.out(&format!("consensus-{rname}-k{k}.safetensors"))?;
        Self::write(tall, &out, &Tall::consensus_kernel(k, best))?;
        let test = self.ev.all(&read_values(&out)?, Part::Test)?;
        Ok(self.norm.row(
            &format!("Consensus {label} (k = {k})"),
            format!("α = {best}"),
            test,
            curve,
        ))
    }
}

/// Evaluates backbones with each task's own head.
pub struct Evaluator<'a> {
    pub st: &'a Study,
    pub heads: &'a [Values],
}

impl Evaluator<'_> {
    pub fn acc(&self, backbone: &Values, t: usize, part: Part) -> Result<f64> {
        let mut v = backbone.clone();
        v.extend(self.heads[t].iter().map(|(k, x)| (k.clone(), x.clone())));
        values_accuracy(&self.st.model, &v, &self.st.s, t, part)
            .map_err(|e| anyhow!("task {}: {e}", self.st.s.tasks[t].name))
    }

    pub fn all(&self, backbone: &Values, part: Part) -> Result<Vec<f64>> {
        (0..self.st.s.tasks.len())
            .map(|t| self.acc(backbone, t, part))
            .collect()
    }
}

/// Normalized accuracy against the fine-tuned models (metrics.md: a mean of ratios).
pub struct Normalizer {
    pub ft_val: Vec<f64>,
    pub ft_test: Vec<f64>,
}

impl Normalizer {
    pub fn val(&self, accs: &[f64]) -> f64 {
        ratios(accs, &self.ft_val).iter().sum::<f64>() / accs.len().max(1) as f64
    }

    pub fn row(
        &self,
        method: &str,
        chosen: String,
        test: Vec<f64>,
        curve: Vec<(f64, f64)>,
    ) -> MethodResult {
        let normalized = ratios(&test, &self.ft_test);
        let n = test.len().max(1) as f64;
        MethodResult {
            method: method.into(),
            chosen,
            mean_accuracy: test.iter().sum::<f64>() / n,
            normalized_accuracy: normalized.iter().sum::<f64>() / n,
            normalized,
            test_accuracy: test,
            validation_curve: curve,
        }
    }
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if *y > 0.0 { 100.0 * x / y } else { 0.0 })
        .collect()
}

/// The best grid value by score (ties: the smaller value) and the whole curve.
fn choose(
    grid: &[f32],
    score: &mut dyn FnMut(f32) -> Result<f64>,
) -> Result<(f32, Vec<(f64, f64)>)> {
    let mut err = None;
    let (best, curve) = choose_lambda(grid, &mut |l| match score(l) {
        Ok(s) => s,
        Err(e) => {
            err.get_or_insert(e);
            f64::NEG_INFINITY
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok((
        best,
        curve.into_iter().map(|(l, s)| (f64::from(l), s)).collect(),
    ))
}

/// One merge of the study on files: `method` with λ (and `density`, trimmed in
/// [`TIES_SCOPE`]) written to `out`.
fn merge_file(
    base: &Model,
    models: &[Model],
    method: &str,
    lambda: f32,
    density: Option<f64>,
    out: &Path,
) -> Result<()> {
    let m = get(method).ok_or_else(|| anyhow!("no merge method {method}"))?;
    let mut params = ParamSource::default();
    params
        .global
        .insert("lambda".into(), ParamValue::Scalar(f64::from(lambda)));
    if let Some(d) = density {
        params
            .global
            .insert("density".into(), ParamValue::Scalar(d));
    }
    params.per_model = vec![BTreeMap::new(); models.len()];
    let mut req = MergeRequest::new(m, Some(base), models.iter().collect()).with_params(params);
    if density.is_some() && m.trims_by_magnitude() {
        req = req.with_scope(TIES_SCOPE);
    }
    run_merge(&req, out, &BTreeMap::new(), &|_| {})?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_ckpt::{ModelWriter, TensorSpec, WriteOptions};

    fn write_model(
        path: &Path,
        _dtype: DType,
        tensors: &[(&str, &[usize])],
        f: &dyn Fn(&str, usize) -> f32,
    ) -> Model {
        let specs: Vec<TensorSpec> = tensors
            .iter()
            .map(|(n, s)| TensorSpec::new(*n, DType::F32, s))
            .collect();
        let w = ModelWriter::create(path, specs.clone(), &WriteOptions::default()).unwrap();
        for s in &specs {
            let v: Vec<f32> = (0..s.numel()).map(|i| f(&s.name, i)).collect();
            w.write_f32(&s.name, &v).unwrap();
        }
        w.finish(&[]).unwrap();
        Model::open(path).unwrap()
    }

    fn values(m: &Model, name: &str) -> Vec<f32> {
        m.require(name).unwrap().to_f32().unwrap()
    }

    /// The TIES row trims as TALL and Consensus over TIES do: each task vector's top-k over
    /// the whole model. Two fine-tunes change a large tensor a lot and a small one a little;
    /// over the whole model the top 20 % all lie in the large tensor, so the TIES merge must
    /// leave the small tensor at the base's values and change exactly the entries that the
    /// TALL recipe's per-model thresholds keep. (Per-tensor trimming would change 20 % of
    /// the small tensor.)
    #[test]
    fn ties_row_trims_in_the_scope_of_tall_and_consensus() {
        let d = tempfile::tempdir().unwrap();
        let shapes: [(&str, &[usize]); 2] = [("big", &[40]), ("small", &[40])];
        let base = write_model(
            &d.path().join("base.safetensors"),
            DType::F32,
            &shapes,
            &|_, i| 0.5 - i as f32 * 0.01,
        );
        // τ_a grows with the index, τ_b falls: their top entries differ.
        let tau = |m: usize, name: &str, i: usize| {
            let rank = if m == 0 { i } else { 39 - i } as f32;
            let scale = if name == "big" { 1.0 } else { 1e-3 };
            scale * (1.0 + rank * 0.01)
        };
        let models: Vec<Model> = (0..2)
            .map(|m| {
                write_model(
                    &d.path().join(format!("m{m}.safetensors")),
                    DType::F32,
                    &shapes,
                    &|name, i| 0.5 - i as f32 * 0.01 + tau(m, name, i),
                )
            })
            .collect();
        let out = d.path().join("ties.safetensors");
        merge_file(&base, &models, "ties", 1.0, Some(TIES_DENSITY), &out).unwrap();
        let merged = Model::open(&out).unwrap();
        let tall = Tall::new(
            &base,
            models.iter().collect(),
            vec!["a".into(), "b".into()],
            MtlRecipe::Ties {
                density: TIES_DENSITY,
            },
            vec![1.0; 2],
        )
        .unwrap();
        let thr: Vec<f32> = tall
            .thresholds()
            .unwrap()
            .iter()
            .map(|t| t.expect("a model-scope threshold"))
            .collect();
        let mut changed_total = 0;
        for (name, _) in shapes {
            let (b, m) = (values(&base, name), values(&merged, name));
            for i in 0..b.len() {
                let kept = (0..2).any(|k| tau(k, name, i).abs() >= thr[k]);
                let changed = m[i] != b[i];
                assert_eq!(changed, kept, "{name}[{i}]: thresholds {thr:?}");
                changed_total += usize::from(changed);
                if name == "small" {
                    assert!(!changed, "small[{i}] trimmed per tensor, not per model");
                }
            }
        }
        // 20 % of 80 entries per model, at different places: 32 changed entries.
        assert_eq!(changed_total, 32);
        assert_eq!(scope_name(TIES_SCOPE), "model");
    }
}
