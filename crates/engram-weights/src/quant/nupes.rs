//! NUPES-style data-driven power quantization (arXiv 2308.05600, the abstract's two ideas:
//! learn the quantized values over the whole grid and learn the exponent a by gradient).
//! Card: `shared/methods/quantization.md`, "PowerQuant and NUPES".
//!
//! The paper's equations are not public; this is the card's engram design. Per layer, on a
//! calibration input X (n × cols), minimise ‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖² over a latent level index
//! V (initialised at u/s_a, a from PowerQuant's search) and log a, with
//! Ŵ = sign(V̄)·(|V̄|·s_a)^(1/a), V̄ = clamp(round(V), −Q, Q), s_a = max|W|^a/Q recomputed every
//! step. Adam, lr 1e-3 on V and 1e-2 on log a, 500 steps. The straight-through gradient of V̄
//! is engram's: the local level spacing (Ŵ(V̄+1) − Ŵ(V̄−1))/2, so moving V by one moves Ŵ by
//! one level of the non-uniform grid (the derivative of |V|^(1/a) is infinite at 0 for
//! a < 1). The best iterate on the calibration loss is returned.

use super::power::{A_MAX, A_MIN, PowerQuant};
use super::{Quantized, Quantizer, Scope, Spec, Stats, decode_rows, quantize, rows_cols};
use faer::{Mat, MatRef};
use rayon::prelude::*;
use serde::Serialize;

/// Settings of the optimisation (card defaults in [`Default`]).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Config {
    pub steps: usize,
    pub lr_v: f32,
    pub lr_log_a: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: 500,
            lr_v: 1e-3,
            lr_log_a: 1e-2,
        }
    }
}

/// What the optimisation found.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Exponent from PowerQuant's search (the start) and the learned one.
    pub a_start: f32,
    pub a: f32,
    /// Calibration loss ‖X(W − Ŵ)ᵀ‖²/‖XWᵀ‖² at the start (PowerQuant) and at the end.
    pub loss_start: f64,
    pub loss: f64,
}

/// The calibration term: through the Gram matrix G = XᵀX when there are more samples than
/// columns, else through X itself.
enum Calib {
    Gram(Mat<f32>),
    Inputs(Mat<f32>),
}

impl Calib {
    fn new(x: &[f32], n: usize, cols: usize) -> Calib {
        let xm = MatRef::from_row_major_slice(x, n, cols);
        if n > cols {
            Calib::Gram(xm.transpose() * xm)
        } else {
            Calib::Inputs(xm.to_owned())
        }
    }

    /// (‖X·Eᵀ‖², its gradient with respect to E) for a row-major `rows × cols` E.
    fn loss_grad(&self, e: &[f32], _rows: usize, cols: usize) -> (f64, Vec<f32>) {
        let step = (65536 / cols.max(1)).max(1);
        let parts: Vec<(f64, Vec<f32>)> = e
            .par_chunks(step * cols)
            .map(|ec| {
                let r = ec.len() / cols;
                let em = MatRef::from_row_major_slice(ec, r, cols);
                let (loss, g) = match self {
                    Calib::Gram(gm) => {
                        let eg = em * gm;
                        let loss: f64 = (0..r)
                            .flat_map(|i| (0..cols).map(move |j| (i, j)))
                            .map(|(i, j)| (em[(i, j)] * eg[(i, j)]) as f64)
                            .sum();
                        (loss, eg)
                    }
                    Calib::Inputs(xm) => {
                        let p = em * xm.transpose();
                        let loss: f64 = (0..r)
                            .flat_map(|i| (0..p.ncols()).map(move |j| (i, j)))
                            .map(|(i, j)| (p[(i, j)] as f64).powi(2))
                            .sum();
                        (loss, &p * xm)
                    }
                };
                let mut out = vec![0f32; r * cols];
                for i in 0..r {
                    for j in 0..cols {
                        out[i * cols + j] = 2.0 * g[(i, j)];
                    }
                }
                (loss, out)
            })
            .collect();
        let loss = parts.iter().map(|p| p.0).sum();
        (loss, parts.into_iter().flat_map(|p| p.1).collect())
    }
}

/// Quantizes `w` (shape `shape`, symmetric, per tensor or per channel) with the data-driven
/// power quantizer on calibration inputs `x` (`n` rows of the layer's input, `cols` wide:
/// for a convolution, its unfolded patches). The result decodes with [`PowerQuant`].
pub fn nupes(
    w: &[f32],
    shape: &[usize],
    x: &[f32],
    n: usize,
    spec: &Spec,
    cfg: &Config,
) -> Result<(Quantized, Outcome), String> {
    let (rows, cols) = rows_cols(shape);
    if x.len() != n * cols || n == 0 {
        return Err(format!(
            "the calibration inputs hold {} values, not {n} × {cols}",
            x.len()
        ));
    }
    if matches!(spec.scope, Scope::Group(_)) {
        return Err("nupes quantizes per tensor or per channel".into());
    }
    if cfg.steps == 0 || !(cfg.lr_v > 0.0 && cfg.lr_log_a > 0.0) {
        return Err("nupes needs steps ≥ 1 and positive learning rates".into());
    }
    let start = quantize(&PowerQuant, spec, w, shape)?;
    let calib = Calib::new(x, n, cols);
    let (norm, _) = calib.loss_grad(w, rows, cols);
    let norm = norm.max(f64::MIN_POSITIVE);
    let bl = spec.block_len(rows, cols)?;
    let q = spec.qmax() as f32;
    // Block statistics do not depend on a; ε keeps the power away from 0.
    let stats: Vec<Stats> = w
        .chunks(bl)
        .map(|b| {
            let mut s = Stats::of(b);
            s.max_abs += 1e-8;
            s
        })
        .collect();
    // V starts at the unrounded u/s_a of PowerQuant's solution.
    let mut v: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let s = start.blocks[if start.blocks.len() == 1 { 0 } else { i / bl }].scale;
            (x.abs().powf(start.a).copysign(x) / s).clamp(-q - 0.5, q + 0.5)
        })
        .collect();
    let mut log_a = start.a.ln();
    let (mut mv, mut vv) = (vec![0f32; v.len()], vec![0f32; v.len()]);
    let (mut ma, mut va) = (0f64, 0f64);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut best: Option<(f64, Quantized)> = None;
    let mut loss_start = f64::NAN;
    let level = |k: f32, s: f32, a: f32| -> f32 { (k.abs() * s).powf(1.0 / a).copysign(k) };
    for t in 1..=cfg.steps + 1 {
        let a = log_a.exp().clamp(A_MIN, A_MAX);
        let blocks: Vec<_> = stats
            .iter()
            .map(|st| PowerQuant.block(st, spec, a))
            .collect();
        let codes: Vec<u8> = v
            .iter()
            .map(|x| (x.round_ties_even().clamp(-q, q) + q) as u8)
            .collect();
        let mut wh = vec![0f32; w.len()];
        decode_rows(&PowerQuant, spec, a, bl, &blocks, &codes, &mut wh);
        let e: Vec<f32> = wh.iter().zip(w).map(|(a, b)| a - b).collect();
        let (loss, g) = calib.loss_grad(&e, rows, cols);
        let loss = loss / norm;
        if t == 1 {
            loss_start = loss;
        }
        if best.as_ref().is_none_or(|b| loss < b.0) {
            best = Some((
                loss,
                Quantized {
                    rows,
                    cols,
                    block_len: bl,
                    codes: codes.clone(),
                    blocks: blocks.clone(),
                    a,
                },
            ));
        }
        if t > cfg.steps {
            break;
        }
        // Gradients: dL/dŴ = g/norm; through V by the level spacing, through log a exactly.
        let mut ga = 0f64;
        let gv: Vec<f32> = (0..v.len())
            .map(|i| {
                let s = blocks[i / bl].scale;
                let k = codes[i] as f32 - q;
                let gw = g[i] / norm as f32;
                if k != 0.0 {
                    // Ŵ = sign(k)·m·(|k|/Q)^(1/a): d/d(log a) = −Ŵ·ln(|k|/Q)/a.
                    ga += (gw * -wh[i] * (k.abs() / q).ln() / a) as f64;
                }
                let up = level((k + 1.0).min(q), s, a);
                let down = level((k - 1.0).max(-q), s, a);
                let span = ((k + 1.0).min(q) - (k - 1.0).max(-q)).max(1.0);
                gw * (up - down) / span
            })
            .collect();
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..v.len() {
            mv[i] = b1 * mv[i] + (1.0 - b1) * gv[i];
            vv[i] = b2 * vv[i] + (1.0 - b2) * gv[i] * gv[i];
            v[i] -= cfg.lr_v * (mv[i] / c1) / ((vv[i] / c2).sqrt() + eps);
            v[i] = v[i].clamp(-q - 0.5, q + 0.5);
        }
        ma = 0.9 * ma + 0.1 * ga;
        va = 0.999 * va + 0.001 * ga * ga;
        let step = (ma / (1.0 - 0.9f64.powi(t as i32)))
            / ((va / (1.0 - 0.999f64.powi(t as i32))).sqrt() + 1e-8);
        log_a = (log_a as f64 - cfg.lr_log_a as f64 * step) as f32;
        log_a = log_a.clamp(A_MIN.ln(), A_MAX.ln());
    }
    let (loss, z) = best.ok_or("no step was taken")?;
    let out = Outcome {
        a_start: start.a,
        a: z.a,
        loss_start,
        loss,
    };
    Ok((z, out))
}

#[cfg(test)]
mod tests {
    use super::super::tests::bell;
    use super::*;

    /// On correlated calibration inputs the learned quantizer lowers the output error below
    /// PowerQuant's, and its codes decode with PowerQuant.
    #[test]
    fn lowers_the_calibration_loss() {
        let (rows, cols, n) = (16, 24, 64);
        let w = bell(rows * cols, 11);
        let mut r = crate::rng::Rng::new(12);
        let base: Vec<f32> = (0..n * 4).map(|_| r.normal()).collect();
        // Inputs in a 4-dimensional subspace plus noise: the Gram matrix is far from identity.
        let x: Vec<f32> = (0..n * cols)
            .map(|k| {
                base[(k / cols) * 4 + k % 4] * (1.0 + (k % cols) as f32 / 8.0) + 0.05 * r.normal()
            })
            .collect();
        for bits in [3, 4] {
            let spec = Spec::new(bits, Scope::Tensor);
            let cfg = Config {
                steps: 200,
                ..Config::default()
            };
            let (z, o) = nupes(&w, &[rows, cols], &x, n, &spec, &cfg).unwrap();
            assert!(o.loss < o.loss_start * 0.95, "{bits} bits: {o:?}");
            assert!((A_MIN..=A_MAX).contains(&o.a));
            assert!(z.codes.iter().all(|&c| c <= 2 * spec.qmax() as u8));
            // Decoding the codes reproduces the loss reported.
            let back = z.dequantize(&PowerQuant, &spec);
            let e: Vec<f32> = back.iter().zip(&w).map(|(a, b)| a - b).collect();
            let c = Calib::new(&x, n, cols);
            let (l, _) = c.loss_grad(&e, rows, cols);
            let (l0, _) = c.loss_grad(&w, rows, cols);
            assert!(((l / l0) - o.loss).abs() < 1e-6 * o.loss.max(1e-9) + 1e-9);
        }
    }

    #[test]
    fn gram_and_inputs_agree() {
        let (rows, cols) = (3, 5);
        let e = bell(rows * cols, 2);
        let x = bell(7 * cols, 3);
        let (lg, gg) = Calib::new(&x, 7, cols).loss_grad(&e, rows, cols);
        let (li, gi) = Calib::new(&x[..4 * cols], 4, cols).loss_grad(&e, rows, cols);
        let (lg4, gg4) = match Calib::new(&x[..4 * cols], 4, cols) {
            Calib::Inputs(m) => Calib::Gram(m.transpose() * &m).loss_grad(&e, rows, cols),
            Calib::Gram(_) => unreachable!(),
        };
        assert!(lg > 0.0 && gg.len() == rows * cols);
        assert!((li - lg4).abs() < 1e-5 * li);
        assert!(gi.iter().zip(&gg4).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}
