//! LwF: Learning without Forgetting (Li & Hoiem, ECCV 2016, arXiv 1606.09282).
//! Card: shared/methods/replay_distillation.md ("LwF").
//!
//! Before each task after the first, the model is frozen as the teacher f_old; each batch adds
//! α·KD_T between the student's and the teacher's logits of the old classes (Class-IL and
//! Domain-IL: one softmax over the union of the earlier tasks' classes; Task-IL: one per old
//! task head, summed). KD is written as the KL divergence, KD_T minus the teacher's entropy:
//! the same gradient, and zero when the student equals the teacher. No T² factor (engram
//! default, as the card says). The teacher is the model the trainer hands to `before_task`,
//! which on a resumed run is the checkpointed model: it is not stored again in the state.

use super::{Batch, Ctx, Setup, Strategy, in_range, no_effect, parse_params};
use crate::model::Net;
use crate::scenario::EvalMode;
use crate::{Result, err};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Weight of the distillation term (paper: 1).
    #[serde(default = "one")]
    pub alpha: f64,
    /// α for each task in turn (task 0 first; the last value repeats); overrides `alpha`.
    #[serde(default)]
    pub alpha_per_task: Vec<f64>,
    /// Temperature T (paper: 2).
    #[serde(default = "two")]
    pub temperature: f64,
}

fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}

impl Params {
    fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0)
            || self
                .alpha_per_task
                .iter()
                .any(|a| !(a.is_finite() && *a >= 0.0))
        {
            return Err("strategy lwf: alpha must be finite and ≥ 0".into());
        }
        let set = !self.alpha_per_task.is_empty() && self.alpha != one();
        no_effect("lwf", "alpha", set, "when alpha-per-task is given")?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(err!(
                "strategy lwf: temperature must be finite and > 0, got {}",
                self.temperature
            ));
        }
        Ok(())
    }

    fn alpha_at(&self, task: usize) -> f64 {
        match self.alpha_per_task.last() {
            None => self.alpha,
            Some(&last) => self.alpha_per_task.get(task).copied().unwrap_or(last),
        }
    }
}

pub struct Lwf {
    p: Params,
    /// The model at the end of the previous task (no autodiff).
    teacher: Option<Net>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("lwf", v)?;
    p.validate()?;
    Ok(Box::new(Lwf { p, teacher: None }))
}

/// KL(softmax(teacher/T) ‖ softmax(student/T)), summed over classes, mean over the batch:
/// KD_T(student, teacher) − H(softmax(teacher/T)). The teacher is a constant.
pub fn kd(student: Tensor<2>, teacher: Tensor<2>, t: f64) -> Tensor<1> {
    let lt = log_softmax(teacher.detach().div_scalar(t), 1);
    let ls = log_softmax(student.div_scalar(t), 1);
    let pt = lt.clone().exp();
    (pt * (lt - ls)).sum_dim(1).mean()
}

/// Columns `classes` of `logits`.
pub fn columns(logits: Tensor<2>, classes: &[u32], device: &Device) -> Tensor<2> {
    let idx = Tensor::<1, Int>::from_data(
        TensorData::new(
            classes.iter().map(|&c| c as i64).collect::<Vec<_>>(),
            [classes.len()],
        ),
        device,
    );
    logits.select(1, idx)
}

/// The classes of tasks before `task`, ascending and distinct.
pub fn old_classes(cx: &Ctx) -> Vec<u32> {
    let mut v: Vec<u32> = cx.scenario.tasks[..cx.task]
        .iter()
        .flat_map(|t| t.classes.iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The teacher's logits for the batch inputs (no graph).
pub fn teacher_logits(teacher: &Net, x: &Tensor<2>, device: &Device) -> Tensor<2> {
    let out = teacher.forward(x.clone().inner());
    Tensor::<2>::from_data(out.into_data(), device)
}

/// The old-head distillation term of the card: one softmax over the old classes, or in
/// Task-IL one per earlier task, summed.
pub fn old_head_kd(cx: &Ctx, student: Tensor<2>, teacher: Tensor<2>, t: f64) -> Option<Tensor<1>> {
    let heads: Vec<Vec<u32>> = if cx.scenario.eval == EvalMode::TaskIl {
        cx.scenario.tasks[..cx.task]
            .iter()
            .map(|k| k.classes.clone())
            .collect()
    } else {
        vec![old_classes(cx)]
    };
    let mut total: Option<Tensor<1>> = None;
    for h in heads.iter().filter(|h| !h.is_empty()) {
        let s = columns(student.clone(), h, cx.device);
        let te = columns(teacher.clone(), h, cx.device);
        let term = kd(s, te, t);
        total = Some(match total {
            None => term,
            Some(a) => a + term,
        });
    }
    total
}

impl Strategy for Lwf {
    fn name(&self) -> &'static str {
        "lwf"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        let (n, t) = (self.p.alpha_per_task.len(), s.scenario.tasks.len());
        in_range(
            "lwf",
            "alpha-per-task's length",
            n,
            0,
            t,
            &format!("one per task, {t} tasks"),
        )
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.teacher = (cx.task > 0).then(|| net.valid());
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        _net: &Net,
        batch: &Batch,
        logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        let Some(teacher) = &self.teacher else {
            return loss;
        };
        let alpha = self.p.alpha_at(cx.task);
        if alpha == 0.0 {
            return loss;
        }
        let old = teacher_logits(teacher, &batch.x, cx.device);
        match old_head_kd(cx, logits, old, self.p.temperature) {
            Some(k) => loss + k.mul_scalar(alpha),
            None => loss,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scenario::tests::{ok, small_blobs, split_cfg};
    use crate::scenario::{Common, Scenario, class_incremental};

    pub(crate) fn blobs_ci() -> Scenario {
        ok(class_incremental(
            small_blobs(),
            &split_cfg(3, 2, false),
            &Common::default(),
        ))
    }

    pub(crate) fn t2(v: Vec<f32>, r: usize, c: usize, d: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v, [r, c]), d)
    }

    pub(crate) fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    }

    fn softmax_t(z: &[f32], t: f64) -> Vec<f64> {
        let m = z.iter().map(|&v| v as f64 / t).fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|&v| (v as f64 / t - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn distillation_is_the_hand_kl_at_temperature_t_and_zero_for_equal_models() {
        let d = Device::flex();
        let s = vec![1.0f32, -0.5, 2.0, 0.3, 0.0, -1.0];
        let t = vec![0.2f32, 0.9, -0.4, 1.5, -2.0, 0.1];
        for temp in [1.0, 2.0, 4.0] {
            let got = kd(t2(s.clone(), 2, 3, &d), t2(t.clone(), 2, 3, &d), temp)
                .into_scalar::<f32>() as f64;
            let mut want = 0.0;
            for r in 0..2 {
                let ps = softmax_t(&s[r * 3..r * 3 + 3], temp);
                let pt = softmax_t(&t[r * 3..r * 3 + 3], temp);
                // KD_T (cross-entropy) minus the teacher's entropy.
                let ce: f64 = -(0..3).map(|c| pt[c] * ps[c].ln()).sum::<f64>();
                let h: f64 = -(0..3).map(|c| pt[c] * pt[c].ln()).sum::<f64>();
                want += (ce - h) / 2.0;
            }
            assert!((got - want).abs() < 1e-5, "T={temp}: {got} vs {want}");
            assert!(got > 0.01);
            let same =
                kd(t2(s.clone(), 2, 3, &d), t2(s.clone(), 2, 3, &d), temp).into_scalar::<f32>();
            assert!(same.abs() < 1e-6, "{same}");
        }
    }

    #[test]
    fn lwf_distils_only_the_old_classes_and_only_after_the_first_task() {
        let s = blobs_ci();
        let d = Device::flex().autodiff();
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build(s.train.dim, s.train.image, s.num_outputs, &d)
            .expect("net");
        let mut st = build(&serde_json::json!({"alpha": 2.0, "temperature": 3.0})).expect("lwf");
        let cx = |task| Ctx {
            scenario: &s,
            task,
            device: &d,
            seed: 1,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
            steps: 100,
        };
        let net = st.before_task(&cx(1), net).expect("before");
        let ids: Vec<(usize, usize)> = s.tasks[1].train[..4].iter().map(|&i| (1, i)).collect();
        let (xh, yh) = s.gather(crate::scenario::Part::Train, &ids);
        let batch = Batch {
            x: Tensor::<2>::from_data(TensorData::new(xh.clone(), [4, s.train.dim]), &d),
            y: Tensor::<1, Int>::from_data(
                TensorData::new(yh.iter().map(|&v| v as i64).collect::<Vec<_>>(), [4]),
                &d,
            ),
            ids,
            x_host: xh,
            y_host: yh,
        };
        let zero = Tensor::<1>::zeros([1], &d);
        // Student = teacher: the term is zero.
        let logits = net.forward(batch.x.clone());
        let l = st.loss(&cx(1), &net, &batch, logits.clone(), zero.clone());
        assert!(l.into_scalar::<f32>().abs() < 1e-6);
        // Perturbing a new-class logit changes nothing; an old-class one does, by 2·KL/T.
        let bump = |col: usize| {
            let mut v = vec![0f32; 4 * s.num_outputs];
            for r in 0..4 {
                v[r * s.num_outputs + col] = 1.0;
            }
            t2(v, 4, s.num_outputs, &d)
        };
        let l_new = st.loss(&cx(1), &net, &batch, logits.clone() + bump(2), zero.clone());
        assert!(l_new.into_scalar::<f32>().abs() < 1e-6);
        let l_old = st
            .loss(&cx(1), &net, &batch, logits.clone() + bump(0), zero.clone())
            .into_scalar::<f32>() as f64;
        let lg = host(logits.clone());
        let mut want = 0.0;
        for r in 0..4 {
            let z = &lg[r * s.num_outputs..r * s.num_outputs + 2];
            let pt = softmax_t(z, 3.0);
            let ps = softmax_t(&[z[0] + 1.0, z[1]], 3.0);
            want += (0..2)
                .map(|c| pt[c] * (pt[c].ln() - ps[c].ln()))
                .sum::<f64>()
                / 4.0;
        }
        assert!(
            (l_old - 2.0 * want).abs() < 1e-5,
            "{l_old} vs {}",
            2.0 * want
        );
        // Task 0 has no teacher.
        let mut st0 = build(&serde_json::Value::Null).expect("lwf");
        let net = st0.before_task(&cx(0), net).expect("before");
        let l0 = st0.loss(&cx(0), &net, &batch, logits + bump(0), zero);
        assert!(l0.into_scalar::<f32>().abs() < 1e-9);
    }

    #[test]
    fn invalid_lwf_params_are_errors() {
        for v in [
            serde_json::json!({"temperature": 0.0}),
            serde_json::json!({"alpha": -1.0}),
            serde_json::json!({"alpha-per-task": [0.5, -2.0]}),
            serde_json::json!({"lambda": 1.0}),
            serde_json::json!({"alpha": "big"}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        let st = build(&serde_json::Value::Null).expect("defaults");
        assert_eq!(
            st.params(),
            serde_json::json!({"alpha": 1.0, "alpha-per-task": [], "temperature": 2.0})
        );
        let p: Params =
            parse_params("lwf", &serde_json::json!({"alpha-per-task": [0.0, 0.5]})).expect("p");
        assert_eq!(
            (p.alpha_at(0), p.alpha_at(1), p.alpha_at(4)),
            (0.0, 0.5, 0.5)
        );
    }
}
