//! CMA-ES, the covariance matrix adaptation evolution strategy, in its ask/tell form.
//! Paper: N. Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv 1604.00772, 2016).
//!
//! The tutorial's standard algorithm and default parameters, with positive recombination
//! weights only (no active update): weighted recombination of the μ best of λ, the cumulation
//! paths p_σ and p_c, the rank-one and rank-μ updates of C, cumulative step-size adaptation
//! and the stall of p_c (h_σ). C = B·D²·Bᵀ is eigendecomposed every generation (the search
//! spaces here have tens of dimensions, so the cost is nothing beside one evaluation).
//!
//! It minimizes, in an unbounded space; `evolve` maps [0, 1]ⁿ to the user's bounds and
//! repairs samples outside it. Generation g draws its normals from the stream keyed by
//! (seed, "cmaes", g), so that the same seed and the same f-values give the same bytes: a
//! run is replayed from its recorded evaluations.

use engram_weights::rng::Rng;
use faer::{Mat, Side};

/// The strategy's state between generations.
#[derive(Clone, Debug)]
pub struct Cmaes {
    n: usize,
    lambda: usize,
    /// Recombination weights of the μ best, summing to 1.
    weights: Vec<f64>,
    mueff: f64,
    cc: f64,
    cs: f64,
    c1: f64,
    cmu: f64,
    damps: f64,
    /// E‖N(0, I)‖.
    chi_n: f64,
    mean: Vec<f64>,
    sigma: f64,
    pc: Vec<f64>,
    ps: Vec<f64>,
    /// C, row-major n × n.
    c: Vec<f64>,
    /// Eigenvectors of C as columns (row-major n × n) and the square roots of its eigenvalues.
    b: Vec<f64>,
    d: Vec<f64>,
    generation: u64,
    seed: u64,
}

/// The tutorial's default population, 4 + ⌊3 ln n⌋.
pub fn default_population(n: usize) -> usize {
    4 + (3.0 * (n.max(1) as f64).ln()).floor() as usize
}

impl Cmaes {
    /// A strategy around `mean` with step size `sigma` and `lambda` samples per generation
    /// (at least 2); C starts as the identity.
    pub fn new(mean: Vec<f64>, sigma: f64, lambda: usize, seed: u64) -> Result<Cmaes, String> {
        let n = mean.len();
        if n == 0 {
            return Err("CMA-ES needs at least one dimension".into());
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(format!("sigma0 must be a positive number, got {sigma}"));
        }
        if lambda < 2 {
            return Err(format!(
                "the population must be at least 2 (CMA-ES recombines the best half), got {lambda}"
            ));
        }
        if mean.iter().any(|m| !m.is_finite()) {
            return Err("the initial mean must be finite".into());
        }
        let nf = n as f64;
        // The tutorial's defaults, positive weights: w_i ∝ ln((λ+1)/2) − ln i for i ≤ μ.
        let mu = lambda / 2;
        let raw: Vec<f64> = (1..=mu)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - (i as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mueff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let cc = (4.0 + mueff / nf) / (nf + 4.0 + 2.0 * mueff / nf);
        let cs = (mueff + 2.0) / (nf + mueff + 5.0);
        let c1 = 2.0 / ((nf + 1.3).powi(2) + mueff);
        let cmu = (1.0 - c1).min(2.0 * (mueff - 2.0 + 1.0 / mueff) / ((nf + 2.0).powi(2) + mueff));
        let damps = 1.0 + 2.0 * (((mueff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + cs;
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        let eye: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        Ok(Cmaes {
            n,
            lambda,
            weights,
            mueff,
            cc,
            cs,
            c1,
            cmu,
            damps,
            chi_n,
            mean,
            sigma,
            pc: vec![0.0; n],
            ps: vec![0.0; n],
            c: eye.clone(),
            b: eye,
            d: vec![1.0; n],
            generation: 0,
            seed,
        })
    }

    pub fn lambda(&self) -> usize {
        self.lambda
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Generations told so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The condition number of C (largest over smallest eigenvalue).
    pub fn condition(&self) -> f64 {
        let (lo, hi) = self
            .d
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &d| (l.min(d), h.max(d)));
        (hi / lo).powi(2)
    }

    /// This generation's λ samples x_k = m + σ·B·D·z_k, z_k ~ N(0, I).
    pub fn ask(&self) -> Vec<Vec<f64>> {
        let n = self.n;
        let mut rng = Rng::keyed(self.seed, "cmaes", self.generation);
        (0..self.lambda)
            .map(|_| {
                let dz: Vec<f64> = (0..n).map(|i| self.d[i] * rng.normal_f64()).collect();
                (0..n)
                    .map(|i| {
                        let y: f64 = (0..n).map(|j| self.b[i * n + j] * dz[j]).sum();
                        self.mean[i] + self.sigma * y
                    })
                    .collect()
            })
            .collect()
    }

    /// Updates the state with the points `xs` (this generation's samples, possibly repaired)
    /// and their values `f` (lower is better; ties keep sample order).
    pub fn tell(&mut self, xs: &[Vec<f64>], f: &[f64]) -> Result<(), String> {
        let n = self.n;
        if xs.len() != self.lambda || f.len() != self.lambda {
            return Err(format!(
                "tell: {} points and {} values for a population of {}",
                xs.len(),
                f.len(),
                self.lambda
            ));
        }
        if let Some(k) = f.iter().position(|v| v.is_nan()) {
            return Err(format!("tell: the value of sample {k} is NaN"));
        }
        if let Some(k) = xs
            .iter()
            .position(|x| x.len() != n || x.iter().any(|v| !v.is_finite()))
        {
            return Err(format!("tell: sample {k} is not {n} finite coordinates"));
        }
        let mut order: Vec<usize> = (0..self.lambda).collect();
        order.sort_by(|&a, &b| f[a].total_cmp(&f[b]).then(a.cmp(&b)));
        // y_{i:λ} = (x_{i:λ} − m)/σ and ⟨y⟩_w.
        let ys: Vec<Vec<f64>> = order[..self.weights.len()]
            .iter()
            .map(|&k| {
                (0..n)
                    .map(|i| (xs[k][i] - self.mean[i]) / self.sigma)
                    .collect()
            })
            .collect();
        let yw: Vec<f64> = (0..n)
            .map(|i| self.weights.iter().zip(&ys).map(|(w, y)| w * y[i]).sum())
            .collect();
        // Selection and recombination, c_m = 1.
        for (m, y) in self.mean.iter_mut().zip(&yw) {
            *m += self.sigma * y;
        }
        // Step-size control: p_σ in the isotropic frame C^{-1/2}·⟨y⟩_w = B·D⁻¹·Bᵀ·⟨y⟩_w.
        let bt_y: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|i| self.b[i * n + j] * yw[i]).sum::<f64>() / self.d[j])
            .collect();
        let cs_norm = (self.cs * (2.0 - self.cs) * self.mueff).sqrt();
        for i in 0..n {
            let c_inv_sqrt_y: f64 = (0..n).map(|j| self.b[i * n + j] * bt_y[j]).sum();
            self.ps[i] = (1.0 - self.cs) * self.ps[i] + cs_norm * c_inv_sqrt_y;
        }
        let ps_norm = norm(&self.ps);
        self.sigma *= ((self.cs / self.damps) * (ps_norm / self.chi_n - 1.0)).exp();
        // Covariance matrix adaptation, rank one and rank μ, with the stall h_σ of p_c.
        let g = (self.generation + 1) as f64;
        let hsig = ps_norm / (1.0 - (1.0 - self.cs).powf(2.0 * g)).sqrt()
            < (1.4 + 2.0 / (n as f64 + 1.0)) * self.chi_n;
        let hs = if hsig { 1.0 } else { 0.0 };
        let cc_norm = (self.cc * (2.0 - self.cc) * self.mueff).sqrt();
        for (p, y) in self.pc.iter_mut().zip(&yw) {
            *p = (1.0 - self.cc) * *p + hs * cc_norm * y;
        }
        let delta = (1.0 - hs) * self.cc * (2.0 - self.cc);
        let keep = 1.0 + self.c1 * delta - self.c1 - self.cmu;
        for i in 0..n {
            for j in 0..=i {
                let rank_mu: f64 = self
                    .weights
                    .iter()
                    .zip(&ys)
                    .map(|(w, y)| w * y[i] * y[j])
                    .sum();
                let v = keep * self.c[i * n + j]
                    + self.c1 * self.pc[i] * self.pc[j]
                    + self.cmu * rank_mu;
                self.c[i * n + j] = v;
                self.c[j * n + i] = v;
            }
        }
        if !self.sigma.is_finite() || self.sigma <= 0.0 {
            return Err(format!(
                "CMA-ES step size became {} at generation {}",
                self.sigma, self.generation
            ));
        }
        self.decompose()?;
        self.generation += 1;
        Ok(())
    }

    /// B and D from C = B·D²·Bᵀ.
    fn decompose(&mut self) -> Result<(), String> {
        let n = self.n;
        let c = Mat::from_fn(n, n, |i, j| self.c[i * n + j]);
        let eig = c
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| format!("eigendecomposition of C did not converge: {e:?}"))?;
        let (u, s) = (eig.U(), eig.S().column_vector());
        for j in 0..n {
            let ev = s[j];
            if !(ev.is_finite() && ev > 0.0) {
                return Err(format!(
                    "C lost positive definiteness at generation {} (eigenvalue {ev})",
                    self.generation
                ));
            }
            self.d[j] = ev.sqrt();
            for i in 0..n {
                self.b[i * n + j] = u[(i, j)];
            }
        }
        Ok(())
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs CMA-ES on `f` from `x0` until f < `target`; fails after `max_evals` evaluations.
    fn minimize(f: &dyn Fn(&[f64]) -> f64, x0: Vec<f64>, target: f64, max_evals: usize) {
        let lambda = default_population(x0.len());
        let mut es = Cmaes::new(x0, 1.0, lambda, 7).unwrap();
        let mut evals = 0;
        while evals < max_evals {
            let xs = es.ask();
            let fs: Vec<f64> = xs.iter().map(|x| f(x)).collect();
            evals += xs.len();
            if fs.iter().any(|&v| v < target) {
                return;
            }
            es.tell(&xs, &fs).unwrap();
        }
        panic!(
            "no value below {target} in {max_evals} evaluations (sigma {})",
            es.sigma()
        );
    }

    fn sphere(x: &[f64]) -> f64 {
        x.iter().map(|v| v * v).sum()
    }

    /// A seeded rotation: Gram–Schmidt of a Gaussian matrix (rows orthonormal).
    fn rotation(n: usize) -> Vec<Vec<f64>> {
        let mut rng = Rng::keyed(3, "rotation", 0);
        let mut rows: Vec<Vec<f64>> = Vec::new();
        while rows.len() < n {
            let mut v: Vec<f64> = (0..n).map(|_| rng.normal_f64()).collect();
            for r in &rows {
                let dot: f64 = v.iter().zip(r).map(|(a, b)| a * b).sum();
                for (a, b) in v.iter_mut().zip(r) {
                    *a -= dot * b;
                }
            }
            let l = norm(&v);
            if l > 1e-6 {
                rows.push(v.iter().map(|a| a / l).collect());
            }
        }
        rows
    }

    #[test]
    fn minimizes_the_sphere_in_8_dimensions() {
        // About 1,000 evaluations from ‖x0‖ ≈ 8.5: CMA-ES converges linearly here, and a
        // broken step-size rule (or a wrong sign in the mean update) would not.
        minimize(&sphere, vec![3.0; 8], 1e-6, 1600);
    }

    /// A rotated ellipsoid of condition 10⁶ can be solved only by learning C: a step-size
    /// method alone would need orders of magnitude more evaluations.
    #[test]
    fn minimizes_a_rotated_ellipsoid_in_8_dimensions() {
        let n = 8;
        let r = rotation(n);
        let f = move |x: &[f64]| -> f64 {
            (0..n)
                .map(|i| {
                    let z: f64 = r[i].iter().zip(x).map(|(a, b)| a * b).sum();
                    10f64.powf(6.0 * i as f64 / (n - 1) as f64) * z * z
                })
                .sum()
        };
        // About 3,600 evaluations; without the covariance updates, far more.
        minimize(&f, vec![1.0; n], 1e-6, 5000);
    }

    #[test]
    fn the_same_seed_and_values_give_the_same_run() {
        let run = |seed| {
            let mut es = Cmaes::new(vec![0.5; 8], 0.3, 10, seed).unwrap();
            let mut all = Vec::new();
            for _ in 0..5 {
                let xs = es.ask();
                let fs: Vec<f64> = xs.iter().map(|x| sphere(x)).collect();
                es.tell(&xs, &fs).unwrap();
                all.extend(xs.into_iter().flatten().map(f64::to_bits));
            }
            all.push(es.sigma().to_bits());
            all
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn bad_settings_and_values_are_errors() {
        assert!(Cmaes::new(vec![], 0.3, 10, 0).is_err());
        assert!(Cmaes::new(vec![0.0], 0.0, 10, 0).is_err());
        assert!(Cmaes::new(vec![0.0], f64::NAN, 10, 0).is_err());
        assert!(Cmaes::new(vec![0.0], 0.3, 1, 0).is_err());
        let mut es = Cmaes::new(vec![0.0; 2], 0.3, 4, 0).unwrap();
        let xs = es.ask();
        let e = es.tell(&xs, &[0.0, 1.0, f64::NAN, 2.0]).unwrap_err();
        assert!(e.contains("sample 2"), "{e}");
        assert!(es.tell(&xs[..3], &[0.0; 3]).is_err());
        assert_eq!(default_population(8), 10);
    }
}
