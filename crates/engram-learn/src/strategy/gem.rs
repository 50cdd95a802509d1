//! GEM: Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017, arXiv 1706.08840).
//! Card: shared/methods/replay_distillation.md (replay family); reference
//! facebookresearch/GradientEpisodicMemory `model/gem.py`.
//!
//! After the backward pass, the gradient g_k of the cross-entropy on each earlier task's
//! memory is computed (one forward and backward pass per task, over all of the task's stored
//! examples, as the reference). If some g·g_k < 0, the step's gradient g is replaced by the
//! solution of the paper's QP, min_z ½‖g − z‖² s.t. G z ≥ 0 (G: the rows g_k), through its
//! dual as the reference's `project2cone2` writes it:
//!
//!   min_v ½ vᵀ G Gᵀ v + gᵀ Gᵀ v   s.t.  v ≥ margin,     g̃ = Gᵀ v + g.
//!
//! `margin` is the reference's `memory_strength` (the paper's γ, "a small constant added to
//! v"); with margin 0 g̃ is the Euclidean projection of g onto the cone. Either way G g̃ ≥ 0
//! (G g̃ is the multiplier of v's bound). The dual has one variable per earlier task; engram
//! solves it exactly (up to rounding) in f64 with Lawson and Hanson's active-set method for
//! non-negative least squares, which it is (v = margin + u, u ≥ 0: min ½‖Gᵀu + h‖² with
//! h = g + margin·Gᵀ1), instead of the reference's quadprog. The gradients are written back to
//! the parameters that have one (as `overwrite_grad`).
//!
//! Memory (`buffer`, engram choice for comparisons with `er` at equal memory): M examples in
//! all, split equally among the tasks seen so far (parts/episodic.rs), where the reference
//! keeps `n_memories` per task (256 in its `run_experiments.sh`). `state_bytes` counts the
//! stored examples; the per-task gradients live only within a step and are not counted (each
//! is one float per parameter).

use super::parts::buffer::check_buffer;
use super::parts::episodic::{Episodic, dot, flat_grad, memory_grad, set_flat_grad};
use super::parts::episodic_hooks;
use super::{Ctx, Strategy, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::optim::GradientsParams;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Examples in memory over all tasks, split equally among the tasks seen (200, as `er`).
    #[serde(default = "super::er::default_buffer")]
    pub buffer: usize,
    /// Lower bound of the dual variables (the reference's `memory_strength`: 0.5 in its
    /// `run_experiments.sh`).
    #[serde(default = "default_margin")]
    pub margin: f64,
}

fn default_margin() -> f64 {
    0.5
}

pub struct Gem {
    p: Params,
    mem: Episodic,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("gem", v)?;
    check_buffer("gem", p.buffer, None)?;
    if !(p.margin.is_finite() && p.margin >= 0.0) {
        return Err(err!(
            "strategy gem: margin must be finite and ≥ 0, got {}",
            p.margin
        ));
    }
    let mem = Episodic::new(p.buffer);
    Ok(Box::new(Gem { p, mem }))
}

impl Strategy for Gem {
    fn name(&self) -> &'static str {
        "gem"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    episodic_hooks!(mem, "gem");

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if self.mem.is_empty() {
            return;
        }
        let rows: Vec<Vec<f32>> = self
            .mem
            .tasks
            .iter()
            .filter(|m| m.task != cx.task && !m.ids.is_empty())
            .map(|m| memory_grad(cx, net, &m.ids))
            .collect();
        let g = flat_grad(net, grads);
        if let Some(new) = project(&g, &rows, self.p.margin) {
            set_flat_grad(net, grads, &new);
        }
    }
}

/// GEM's update for gradient `g` and earlier-task gradients `rows`: `None` when no g·g_k is
/// negative (g is kept, as the reference), else g̃ = Gᵀv + g with v the dual solution.
pub fn project(g: &[f32], rows: &[Vec<f32>], margin: f64) -> Option<Vec<f32>> {
    if !rows.iter().any(|r| dot(g, r) < 0.0) {
        return None;
    }
    let k = rows.len();
    // P = G Gᵀ; c = G h with h = g + margin·Gᵀ1, the linear term of u = v − margin.
    let p: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| dot(&rows[i], &rows[j])).collect())
        .collect();
    let c: Vec<f64> = (0..k)
        .map(|i| dot(g, &rows[i]) + margin * p[i].iter().sum::<f64>())
        .collect();
    let u = nonneg_qp(&p, &c);
    let v: Vec<f64> = u.iter().map(|u| u + margin).collect();
    let out = (0..g.len())
        .map(|n| {
            let s: f64 = rows.iter().zip(&v).map(|(r, v)| v * r[n] as f64).sum();
            (g[n] as f64 + s) as f32
        })
        .collect();
    Some(out)
}

/// min ½ uᵀPu + cᵀu s.t. u ≥ 0, for P = AᵀA positive semi-definite: Lawson and Hanson's NNLS
/// active-set method on the normal equations (exact after finitely many steps; the variables
/// in the passive set keep their columns of A linearly independent, so each solve is regular
/// but for rounding, and a singular one leaves its variable at 0).
pub fn nonneg_qp(p: &[Vec<f64>], c: &[f64]) -> Vec<f64> {
    let k = c.len();
    let scale = (0..k)
        .map(|i| p[i][i].abs().max(c[i].abs()))
        .fold(0.0, f64::max);
    let tol = 1e-12 * scale;
    let mut u = vec![0.0; k];
    let mut passive: Vec<usize> = Vec::new();
    let mut barred = vec![false; k];
    // The negative gradient −(Pu + c).
    let neg_grad = |u: &[f64]| -> Vec<f64> {
        (0..k)
            .map(|i| -(c[i] + (0..k).map(|j| p[i][j] * u[j]).sum::<f64>()))
            .collect()
    };
    for _ in 0..3 * k + 10 {
        let w = neg_grad(&u);
        let Some(j) = (0..k)
            .filter(|&j| !passive.contains(&j) && !barred[j] && w[j] > tol)
            .max_by(|&a, &b| w[a].total_cmp(&w[b]))
        else {
            break;
        };
        passive.push(j);
        let mut first = true;
        loop {
            let s = solve_on(p, c, &passive).filter(|s| !first || s[s.len() - 1] > 0.0);
            let Some(s) = s else {
                // Rounding made j's column dependent on the others: it adds nothing.
                passive.retain(|&i| i != j);
                barred[j] = true;
                break;
            };
            first = false;
            if s.iter().all(|&si| si > 0.0) {
                for (&i, &si) in passive.iter().zip(&s) {
                    u[i] = si;
                }
                break;
            }
            // Step from u toward s until the first passive variable reaches 0; it leaves.
            let (mut alpha, mut out) = (1.0, None);
            for (&i, &si) in passive.iter().zip(&s) {
                if si <= 0.0 {
                    let d = u[i] - si;
                    let r = if d > 0.0 { u[i] / d } else { 0.0 };
                    if r < alpha || out.is_none() {
                        (alpha, out) = (r.min(alpha), Some(i));
                    }
                }
            }
            for (&i, &si) in passive.iter().zip(&s) {
                u[i] += alpha * (si - u[i]);
            }
            if let Some(o) = out {
                u[o] = 0.0;
            }
            passive.retain(|&i| u[i] > 0.0);
            for (i, ui) in u.iter_mut().enumerate() {
                if !passive.contains(&i) {
                    *ui = 0.0;
                }
            }
            if passive.is_empty() {
                break;
            }
        }
    }
    u
}

/// The unconstrained minimiser on the variables `s` (the others at 0): P_SS x = −c_S.
fn solve_on(p: &[Vec<f64>], c: &[f64], s: &[usize]) -> Option<Vec<f64>> {
    let a: Vec<Vec<f64>> = s
        .iter()
        .map(|&i| s.iter().map(|&j| p[i][j]).collect())
        .collect();
    let b: Vec<f64> = s.iter().map(|&i| -c[i]).collect();
    gauss(a, b)
}

/// Solves a x = b by Gaussian elimination with partial pivoting; `None` when a pivot is
/// negligible against the matrix's largest entry.
pub fn gauss(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    let big = a.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() <= 1e-13 * big || big == 0.0 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let (top, rest) = a.split_at_mut(col + 1);
        let (head, tail) = b.split_at_mut(col + 1);
        let pivot = &top[col];
        for (row, br) in rest.iter_mut().zip(tail) {
            let f = row[col] / pivot[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot[col..]) {
                *x -= f * p;
            }
            *br -= f * head[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Batch;
    use crate::strategy::parts::testutil::{batch_at, blobs, ctx, device, mlp};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::prelude::*;
    use engram_weights::rng::Rng;
    use serde_json::json;

    fn objective(p: &[Vec<f64>], c: &[f64], u: &[f64]) -> f64 {
        let k = c.len();
        (0..k)
            .map(|i| 0.5 * u[i] * (0..k).map(|j| p[i][j] * u[j]).sum::<f64>() + c[i] * u[i])
            .sum()
    }

    /// The slow reference: every free set S, the stationary point on S, the best one that is
    /// feasible. Exact, as the optimum with the fewest free variables has a regular P_SS.
    fn brute(p: &[Vec<f64>], c: &[f64]) -> f64 {
        let k = c.len();
        let mut best = 0.0; // u = 0
        for mask in 1u32..(1 << k) {
            let s: Vec<usize> = (0..k).filter(|i| mask >> i & 1 == 1).collect();
            let Some(x) = solve_on(p, c, &s) else {
                continue;
            };
            if x.iter().any(|&v| v < -1e-9) {
                continue;
            }
            let mut u = vec![0.0; k];
            for (&i, &v) in s.iter().zip(&x) {
                u[i] = v.max(0.0);
            }
            best = f64::min(best, objective(p, c, &u));
        }
        best
    }

    /// Random problems, with rank-deficient G (more tasks than dimensions, repeated rows):
    /// the solver's objective equals the brute-force optimum and it satisfies the KKT
    /// conditions (u ≥ 0, Pu + c ≥ 0, complementary).
    #[test]
    fn the_dual_solver_matches_enumeration_of_active_sets() {
        let mut rng = Rng::new(5);
        for case in 0..300 {
            let k = 1 + case % 7;
            let dim = 1 + rng.below(9);
            let mut g: Vec<Vec<f64>> = (0..k)
                .map(|_| (0..dim).map(|_| rng.normal_f64()).collect())
                .collect();
            if case % 5 == 0 && k > 1 {
                g[k - 1] = g[0].clone();
            }
            let p: Vec<Vec<f64>> = (0..k)
                .map(|i| {
                    (0..k)
                        .map(|j| g[i].iter().zip(&g[j]).map(|(a, b)| a * b).sum())
                        .collect()
                })
                .collect();
            // c = G h, as GEM's (else a singular P may leave the problem unbounded).
            let h: Vec<f64> = (0..dim).map(|_| rng.normal_f64() * 3.0).collect();
            let c: Vec<f64> = (0..k)
                .map(|i| g[i].iter().zip(&h).map(|(a, b)| a * b).sum())
                .collect();
            let u = nonneg_qp(&p, &c);
            let (got, want) = (objective(&p, &c, &u), brute(&p, &c));
            let scale = 1.0 + want.abs();
            assert!(
                (got - want).abs() <= 1e-8 * scale,
                "case {case}: {got} vs {want}"
            );
            for i in 0..k {
                let gi = c[i] + (0..k).map(|j| p[i][j] * u[j]).sum::<f64>();
                assert!(u[i] >= 0.0, "case {case}");
                assert!(gi >= -1e-8 * scale, "case {case}: {gi}");
                assert!((u[i] * gi).abs() <= 1e-8 * scale, "case {case}");
            }
        }
    }

    /// With margin 0 the update is the Euclidean projection onto {z: Gz ≥ 0}: no feasible
    /// point (a random one, pushed into the cone) is closer to g.
    #[test]
    fn without_margin_the_update_is_the_nearest_feasible_gradient() {
        let mut rng = Rng::new(9);
        let r = |rng: &mut Rng, n| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
        for _ in 0..50 {
            let rows: Vec<Vec<f32>> = (0..3).map(|_| r(&mut rng, 6)).collect();
            let g = r(&mut rng, 6);
            let Some(z) = project(&g, &rows, 0.0) else {
                continue;
            };
            let d = |a: &[f32]| a.iter().zip(&g).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
            for _ in 0..200 {
                let y = r(&mut rng, 6);
                let y = project(&y, &rows, 0.0).unwrap_or(y);
                assert!(d(&z) <= d(&y) + 1e-4, "{} > {}", d(&z), d(&y));
            }
        }
    }

    fn ce(net: &Net, b: &Batch, dev: &Device) -> Tensor<1> {
        CrossEntropyLossConfig::new()
            .init(dev)
            .forward(net.forward(b.x.clone()), b.y.clone())
    }

    /// Three tasks on a real MLP: memories of tasks 0 and 1, a step of task 2 whose labels
    /// fight task 0's. The output satisfies every constraint g̃·g_k ≥ 0 (and g̃ = g + Gᵀv
    /// with v ≥ margin); a step that conflicts with nothing is left unchanged.
    #[test]
    fn projected_gradient_satisfies_every_constraint() {
        let s = blobs("class-incremental", 3);
        let (dev, _rng) = device();
        let net = mlp(&s, 16, &dev);
        let mut st = build(&json!({"buffer": 12, "margin": 0.5})).expect("gem");
        for task in 0..2 {
            let cx = ctx(&s, task, &dev);
            st.before_task(&cx, net.clone()).expect("before");
            let b = batch_at(&s, task, 0..40, &dev);
            let l = st.loss(&cx, &net, &b, net.forward(b.x.clone()), ce(&net, &b, &dev));
            drop(l);
            st.after_task(&cx, net.clone()).expect("after");
        }
        let cx = ctx(&s, 2, &dev);
        st.before_task(&cx, net.clone()).expect("before");
        let state = st.state();
        let tasks: Vec<Vec<(usize, usize)>> = state.json["episodic"]["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| serde_json::from_value(t["ids"].clone()).expect("ids"))
            .collect();
        assert_eq!(tasks.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4]);
        let rows: Vec<Vec<f32>> = tasks
            .iter()
            .map(|ids| memory_grad(&cx, &net, ids))
            .collect();
        // Task 0's examples with their two labels swapped: a gradient against task 0.
        let mut b = batch_at(&s, 0, 0..40, &dev);
        let c0 = &s.tasks[0].classes;
        b.y_host = b
            .y_host
            .iter()
            .map(|&y| if y == c0[0] { c0[1] } else { c0[0] })
            .collect();
        b.y = Tensor::<1, Int>::from_data(
            TensorData::new(b.y_host.iter().map(|&v| v as i64).collect::<Vec<_>>(), [40]),
            &dev,
        );
        let mut grads = GradientsParams::from_grads(ce(&net, &b, &dev).backward(), &net);
        let g = flat_grad(&net, &grads);
        assert!(dot(&g, &rows[0]) < 0.0, "the case conflicts with task 0");
        st.after_backward(&cx, &net, &mut grads);
        let out = flat_grad(&net, &grads);
        let norm = |a: &[f32]| dot(a, a).sqrt();
        for r in &rows {
            let d = dot(&out, r);
            assert!(d >= -1e-5 * norm(&out) * norm(r), "g̃·g_k = {d}");
        }
        let want = project(&g, &rows, 0.5).expect("a violation");
        crate::strategy::parts::testutil::assert_close(&out, &want, 1e-6, "written back");
        assert!(out.iter().zip(&g).any(|(a, b)| (a - b).abs() > 1e-4));

        // A step over both memories (g = (g_0 + g_1)/2, four examples each): here g·g_k ≥ 0
        // for both, and nothing changes.
        let own: Vec<(usize, usize)> = tasks.concat();
        let (x, y) = crate::strategy::parts::episodic::examples(&cx, &own);
        let loss = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(net.forward(x), y);
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let g = flat_grad(&net, &grads);
        let dots: Vec<f64> = rows.iter().map(|r| dot(&g, r)).collect();
        assert!(dots.iter().all(|&d| d >= 0.0), "{dots:?}");
        st.after_backward(&cx, &net, &mut grads);
        assert_eq!(flat_grad(&net, &grads), g);
        // The pure function leaves a non-conflicting gradient alone.
        assert_eq!(project(&rows[0], &[rows[0].clone()], 0.5), None);
    }

    #[test]
    fn invalid_gem_params_are_errors() {
        for (v, key) in [
            (json!({"buffer": 0}), "buffer"),
            (json!({"margin": -0.5}), "margin"),
            (json!({"memories": 10}), "memories"),
            (json!({"buffer": "many"}), "buffer"),
        ] {
            let e = build(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{v}: {e}");
        }
        let p = build(&serde_json::Value::Null).expect("defaults").params();
        assert_eq!(p, json!({"buffer": 200, "margin": 0.5}));
    }

    /// A memory saved after a task loads into a fresh strategy, which then makes the same
    /// updates as the one that kept running.
    #[test]
    fn a_resumed_gem_continues_exactly() {
        let s = blobs("class-incremental", 3);
        let (dev, _rng) = device();
        let net = mlp(&s, 8, &dev);
        let mut a = build(&json!({"buffer": 9})).expect("gem");
        for task in 0..2 {
            let cx = ctx(&s, task, &dev);
            a.before_task(&cx, net.clone()).expect("before");
            for lo in (0..100).step_by(20) {
                let b = batch_at(&s, task, lo..lo + 20, &dev);
                drop(a.loss(&cx, &net, &b, net.forward(b.x.clone()), ce(&net, &b, &dev)));
            }
            a.after_task(&cx, net.clone()).expect("after");
        }
        let mut b = build(&json!({"buffer": 9})).expect("gem");
        b.load_state(a.state()).expect("load");
        assert_eq!(a.state_bytes(), b.state_bytes());
        assert_eq!(a.state_bytes(), 9 * (s.train.dim as u64 * 4 + 4));
        let cx = ctx(&s, 2, &dev);
        let step = |st: &mut Box<dyn Strategy>| {
            st.before_task(&cx, net.clone()).expect("before");
            let bt = batch_at(&s, 2, 0..20, &dev);
            let mut grads = GradientsParams::from_grads(ce(&net, &bt, &dev).backward(), &net);
            st.after_backward(&cx, &net, &mut grads);
            (flat_grad(&net, &grads), st.state().json)
        };
        assert_eq!(step(&mut a), step(&mut b));
        assert!(
            build(&json!({"buffer": 10}))
                .expect("gem")
                .load_state(a.state())
                .is_err()
        );
    }
}
