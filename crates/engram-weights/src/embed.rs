// Ker-VLJEPA (arXiv 2603.23308): anisotropy metrics and PCA whitening of embeddings.
// Card: shared/methods/robustness_safety.md, "Ker-VLJEPA parts" (steps 1 and 2).

//! Embeddings (an embedding table, or features saved as a matrix) are `rows × dim` row-major
//! f32 slices; every statistic is computed in f64.
//!
//! **Anisotropy** ([`anisotropy`]): the mean cosine c̄ over all pairs i ≠ j, computed exactly
//! in O(n·d) as (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / (n(n − 1)), u_i = x_i/‖x_i‖. With labels, the
//! card's discriminability d′ = (μ_match − μ_non) / √(½(s²_match + s²_non)) over the cosines
//! of same-label pairs against different-label pairs (s² the population variance). Its sums
//! are exact without visiting the n²/2 pairs: Σ_{i<j} cos = (‖Σu‖² − Σ‖u‖²)/2 and
//! Σ_{i<j} cos² = (‖UᵀU‖²_F − Σ‖u‖⁴)/2, per label block and over all rows; the different-label
//! sums are the differences. ‖UᵀU‖_F = ‖UUᵀ‖_F, so each Gram matrix is the smaller of d × d
//! (accumulated over blocks of rows) and m × m. The issue that asked for this calls d′
//! "effective dimensionality"; the two are different things, so both are reported, under
//! their own names: `d_prime` (the card's discriminability) and `eff_dim`, the participation
//! ratio (Σλ)²/Σλ² of the covariance eigenvalues (1 when all variance lies on one axis, d
//! when it is spread evenly), which is (tr C)²/‖C‖²_F and needs no eigendecomposition.
//! A zero row (an embedding table's padding row, or after whitening a row equal to μ) has no
//! cosine: c̄ and d′ leave such rows out and count them (`zero_rows`); `eff_dim` uses every
//! row.
//!
//! **Whitening** ([`Whitening`]): μ = mean(X), A = X − μ = U·S·Vᵀ, keep the top k components,
//! z = diag((S_k + ε)/√(n − 1))⁻¹·V_kᵀ·(x − μ). engram takes S² and the components from the
//! eigendecomposition of the smaller Gram matrix: AᵀA (d × d, eigenvectors V) when n − 1 ≥ d,
//! accumulated over blocks of rows so that memory is d² whatever n; AAᵀ (n × n, eigenvectors
//! U) when n − 1 < d (a wide table, d = 50257 tokens), accumulated over blocks of columns,
//! with V_k = AᵀU_k·S_k⁻¹. Either way the eigenvalues are S_i², and the side is min(n, d),
//! refused above [`MAX_GRAM`]. A component with S ≈ 0 has no direction to recover (and none
//! worth whitening), so k is at most the rank of A. Each component's sign is fixed (its
//! largest-magnitude entry is positive, the first of equals), so that a fit is reproducible.
//! The transform is stored as f32 and applied from the stored values: a transform written to
//! a file and read back whitens to the same bytes. Card pitfall: fit on training embeddings
//! only, then `apply` to the rest.

use engram_ckpt::{Error, Model, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Rows (or columns) per block when a Gram matrix is accumulated (memory: one block of f64
/// rows, or of f64 columns).
const BLOCK: usize = 512;

/// The largest side min(rows, dim) of the Gram matrix [`Whitening::fit`] eigendecomposes. An
/// m × m f64 matrix is 8m² bytes (0.5 GiB at 8192, and the decomposition holds a few such
/// matrices) and the work grows as m³: beyond this, fit on fewer rows.
pub const MAX_GRAM: usize = 8192;

/// A component whose eigenvalue S_i² is at most this share of the largest has no variance:
/// the Gram eigenvalues carry an error of a few ε·S²_max (ε = 2.2e-16), far below it, and
/// whitening a direction with S_i < 10⁻⁶·S_max would only amplify rounding.
const RANK_TOL: f64 = 1e-12;

/// The anisotropy of a set of embeddings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Anisotropy {
    pub rows: usize,
    pub dim: usize,
    /// Rows of zero norm, left out of c̄ and d′ (their cosine is undefined).
    pub zero_rows: usize,
    /// c̄: the mean cosine over all pairs i ≠ j of non-zero rows.
    pub mean_cos: f64,
    /// d′ (the card's discriminability) of same-label against different-label pairs; `None`
    /// without labels.
    pub d_prime: Option<f64>,
    /// Effective dimensionality: the participation ratio (Σλ)²/Σλ² of the covariance
    /// eigenvalues, 1 to d (0 when all rows are equal).
    pub eff_dim: f64,
    /// The pair statistics d′ is made of; `None` without labels.
    pub pairs: Option<PairStats>,
}

/// Cosine statistics of same-label (matched) and different-label (non-matched) pairs i < j
/// of non-zero rows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PairStats {
    /// Distinct labels of the non-zero rows.
    pub classes: usize,
    pub matched: u64,
    pub non_matched: u64,
    pub mean_matched: f64,
    pub mean_non_matched: f64,
    /// Population standard deviations.
    pub sd_matched: f64,
    pub sd_non_matched: f64,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Checks that `x` holds `rows × dim` finite values, `rows ≥ min_rows` and `dim ≥ 1`.
fn check(x: &[f32], rows: usize, dim: usize, min_rows: usize) -> Result<()> {
    if dim == 0 {
        return Err(invalid("embeddings have 0 dimensions"));
    }
    if rows.checked_mul(dim) != Some(x.len()) {
        return Err(invalid(format!(
            "{} values for {rows} rows of {dim} dimensions",
            x.len()
        )));
    }
    if rows < min_rows {
        return Err(invalid(format!(
            "{rows} row(s): at least {min_rows} are needed"
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "row {}, column {} is {} (not finite)",
            i / dim,
            i % dim,
            x[i]
        )));
    }
    Ok(())
}

/// Row `i` of a row-major matrix `dim` wide.
fn row(x: &[f32], dim: usize, i: usize) -> &[f32] {
    &x[i * dim..(i + 1) * dim]
}

/// ‖AᵀA‖²_F (= ‖AAᵀ‖²_F) of the `m × d` matrix whose row `i` `fill` writes, through the
/// smaller Gram matrix.
fn gram_frob2(m: usize, d: usize, fill: &dyn Fn(usize, &mut [f64])) -> f64 {
    let g = if m <= d {
        let a = rows_mat(0..m, d, fill);
        let mut g = Mat::<f64>::zeros(m, m);
        matmul(g.as_mut(), Accum::Replace, &a, a.transpose(), 1.0, Par::Seq);
        g
    } else {
        gram_dd(m, d, fill)
    };
    let mut s = 0.0;
    for j in 0..g.ncols() {
        for i in 0..g.nrows() {
            s += g[(i, j)] * g[(i, j)];
        }
    }
    s
}

/// Rows `range` of the matrix `fill` writes, as a faer matrix.
fn rows_mat(range: std::ops::Range<usize>, d: usize, fill: &dyn Fn(usize, &mut [f64])) -> Mat<f64> {
    let mut buf = vec![0f64; range.len() * d];
    for (r, i) in range.enumerate() {
        fill(i, &mut buf[r * d..(r + 1) * d]);
    }
    Mat::from_fn(buf.len() / d, d, |i, j| buf[i * d + j])
}

/// AᵀA (`d × d`) of the `m × d` matrix whose row `i` `fill` writes, accumulated over blocks
/// of [`BLOCK`] rows.
fn gram_dd(m: usize, d: usize, fill: &dyn Fn(usize, &mut [f64])) -> Mat<f64> {
    let mut g = Mat::<f64>::zeros(d, d);
    for start in (0..m).step_by(BLOCK) {
        let b = rows_mat(start..(start + BLOCK).min(m), d, fill);
        matmul(g.as_mut(), Accum::Add, b.transpose(), &b, 1.0, Par::Seq);
    }
    g
}

/// The mean row in f64.
fn mean_row(x: &[f32], rows: usize, dim: usize) -> Vec<f64> {
    let mut mu = vec![0f64; dim];
    for i in 0..rows {
        for (m, &v) in mu.iter_mut().zip(row(x, dim, i)) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= rows as f64);
    mu
}

/// The anisotropy of `rows × dim` embeddings `x`, with d′ when `labels` (one per row) are
/// given. At least 2 rows, every value finite (errors name the row), and at least 2 non-zero
/// rows: zero rows are left out of c̄ and d′ and counted. With labels, the non-zero rows must
/// give at least one same-label and one different-label pair.
pub fn anisotropy(
    x: &[f32],
    rows: usize,
    dim: usize,
    labels: Option<&[u32]>,
) -> Result<Anisotropy> {
    check(x, rows, dim, 2)?;
    if let Some(l) = labels
        && l.len() != rows
    {
        return Err(invalid(format!("{} labels for {rows} rows", l.len())));
    }
    // 1/‖x_i‖, and the rows with a cosine (non-zero norm).
    let mut inv = vec![0f64; rows];
    let mut nz = Vec::with_capacity(rows);
    for (i, s) in inv.iter_mut().enumerate() {
        let n2: f64 = row(x, dim, i).iter().map(|&v| v as f64 * v as f64).sum();
        if n2 > 0.0 {
            *s = 1.0 / n2.sqrt();
            nz.push(i);
        }
    }
    let zero_rows = rows - nz.len();
    if nz.len() < 2 {
        return Err(invalid(format!(
            "{zero_rows} of the {rows} rows have zero norm: the mean cosine needs 2 non-zero rows"
        )));
    }
    let unit = |i: usize, out: &mut [f64]| {
        for (o, &v) in out.iter_mut().zip(row(x, dim, i)) {
            *o = v as f64 * inv[i];
        }
    };
    // Sums over a set of rows: Σu, Σ‖u‖², Σ‖u‖⁴ (‖u‖ is 1 up to rounding; kept exact).
    let sums = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut s, mut n2, mut n4) = (vec![0f64; dim], 0.0, 0.0);
        let mut u = vec![0f64; dim];
        for i in idx {
            unit(i, &mut u);
            let q: f64 = u.iter().map(|v| v * v).sum();
            n2 += q;
            n4 += q * q;
            s.iter_mut().zip(&u).for_each(|(a, b)| *a += b);
        }
        (s.iter().map(|v| v * v).sum::<f64>(), n2, n4)
    };
    let (s_all, n2_all, n4_all) = sums(&mut nz.iter().copied());
    let n = nz.len() as f64;
    let mean_cos = (s_all - n2_all) / (n * (n - 1.0));

    let pairs = match labels {
        None => None,
        Some(labels) => {
            let mut classes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for &i in &nz {
                classes.entry(labels[i]).or_default().push(i);
            }
            // Sums of cos and cos² over pairs i < j: matched (within classes) and all.
            let (mut c1, mut c2, mut cn) = (0.0, 0.0, 0u64);
            for idx in classes.values().filter(|v| v.len() >= 2) {
                let (s, n2, n4) = sums(&mut idx.iter().copied());
                let g = gram_frob2(idx.len(), dim, &|r, out| unit(idx[r], out));
                c1 += (s - n2) / 2.0;
                c2 += (g - n4) / 2.0;
                cn += (idx.len() as u64) * (idx.len() as u64 - 1) / 2;
            }
            let a1 = (s_all - n2_all) / 2.0;
            let a2 = (gram_frob2(nz.len(), dim, &|r, out| unit(nz[r], out)) - n4_all) / 2.0;
            let an = (nz.len() as u64) * (nz.len() as u64 - 1) / 2;
            let nn = an - cn;
            if cn == 0 || nn == 0 {
                let zeros = if zero_rows > 0 {
                    format!(" of the {} non-zero rows", nz.len())
                } else {
                    String::new()
                };
                return Err(invalid(format!(
                    "d′ needs at least one same-label and one different-label pair; the {} label(s){zeros} give {cn} and {nn}",
                    classes.len()
                )));
            }
            let stats = |s1: f64, s2: f64, k: u64| {
                let m = s1 / k as f64;
                (m, (s2 / k as f64 - m * m).max(0.0).sqrt())
            };
            let (mm, sm) = stats(c1, c2, cn);
            let (mn, sn) = stats(a1 - c1, a2 - c2, nn);
            Some(PairStats {
                classes: classes.len(),
                matched: cn,
                non_matched: nn,
                mean_matched: mm,
                mean_non_matched: mn,
                sd_matched: sm,
                sd_non_matched: sn,
            })
        }
    };
    let d_prime = match &pairs {
        None => None,
        Some(p) => {
            let pooled = (0.5 * (p.sd_matched.powi(2) + p.sd_non_matched.powi(2))).sqrt();
            if pooled <= 0.0 {
                return Err(invalid(
                    "d′ is undefined: the cosines of same-label and of different-label pairs have no spread",
                ));
            }
            Some((p.mean_matched - p.mean_non_matched) / pooled)
        }
    };

    // Participation ratio of the covariance: (tr C)² / ‖C‖²_F over the centered rows.
    let mu = mean_row(x, rows, dim);
    let centered = |i: usize, out: &mut [f64]| {
        for ((o, &v), m) in out.iter_mut().zip(row(x, dim, i)).zip(&mu) {
            *o = v as f64 - m;
        }
    };
    let trace: f64 = (0..rows)
        .map(|i| {
            row(x, dim, i)
                .iter()
                .zip(&mu)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    let f2 = gram_frob2(rows, dim, &centered);
    let eff_dim = if f2 > 0.0 { trace * trace / f2 } else { 0.0 };

    Ok(Anisotropy {
        rows,
        dim,
        zero_rows,
        mean_cos,
        d_prime,
        eff_dim,
        pairs,
    })
}

/// Tensor names of a stored transform.
pub const MEAN: &str = "whiten.mean";
pub const COMPONENTS: &str = "whiten.components";
pub const SCALE: &str = "whiten.scale";
/// Metadata key of a stored transform: a JSON object with `k`, `dim`, `eps`, `retained`,
/// `fitted_rows`. It marks a file as a transform.
pub const WHITEN_KEY: &str = "engram.whiten";

/// A tensor of a stored transform: name, shape, values (F32).
pub type StoredTensor<'a> = (&'static str, Vec<usize>, &'a [f32]);

/// A fitted PCA whitening z = diag(scale)⁻¹·V_kᵀ·(x − μ), scale_i = (S_i + ε)/√(n − 1).
#[derive(Clone, Debug, PartialEq)]
///
/// Fields are public for reading; [`Whitening::apply`] checks that their lengths agree.
pub struct Whitening {
    /// μ (dim).
    pub mean: Vec<f32>,
    /// V_kᵀ: the top-k right singular vectors of X − μ as rows (k × dim, row-major), by
    /// decreasing S_i.
    pub components: Vec<f32>,
    /// (S_i + ε)/√(n − 1) (k).
    pub scale: Vec<f32>,
    pub k: usize,
    pub dim: usize,
    pub eps: f64,
    /// Σ_{i≤k} S_i² / Σ_i S_i²: the share of variance the k components keep.
    pub retained: f64,
    pub fitted_rows: usize,
}

/// The stored form's description (the [`WHITEN_KEY`] metadata).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WhiteningInfo {
    pub k: usize,
    pub dim: usize,
    pub eps: f64,
    pub retained: f64,
    pub fitted_rows: usize,
}

impl Whitening {
    /// Fits the whitening on the `rows × dim` embeddings `x`, keeping `k` components,
    /// 1 ≤ k ≤ min(dim, rows − 1) (at most rows − 1 directions have variance) and at most the
    /// rank of the centered rows, with ε = `eps` (finite, ≥ 0; the card uses 1e-5: small
    /// singular values would amplify noise). min(rows, dim) is at most [`MAX_GRAM`].
    pub fn fit(x: &[f32], rows: usize, dim: usize, k: usize, eps: f64) -> Result<Whitening> {
        check(x, rows, dim, 2)?;
        let most = dim.min(rows - 1);
        if k == 0 || k > most {
            return Err(invalid(format!(
                "k = {k}: keep 1 to {most} components (at most the {dim} dimensions and the {rows} rows − 1)"
            )));
        }
        if !eps.is_finite() || eps < 0.0 {
            return Err(invalid(format!("eps = {eps}: must be finite and ≥ 0")));
        }
        let gram = Gram::choose(rows, dim)?;
        fit_with(x, rows, dim, k, eps, gram)
    }

    /// Whitens `rows × dim` embeddings: `rows × k` values, row by row in parallel (each row
    /// alone, so the result does not depend on the thread count). The transform's fields are
    /// checked first (they are public): k ≥ 1, dim ≥ 1 and lengths that agree.
    pub fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (d, k) = (self.dim, self.k);
        if k == 0 || d == 0 {
            return Err(invalid(format!(
                "an empty transform: k = {k}, dim = {d} (both must be at least 1)"
            )));
        }
        if self.mean.len() != d
            || Some(self.components.len()) != k.checked_mul(d)
            || self.scale.len() != k
        {
            return Err(invalid(format!(
                "an inconsistent transform: k = {k}, dim = {d}, but {} mean, {} component and {} scale values",
                self.mean.len(),
                self.components.len(),
                self.scale.len()
            )));
        }
        check(x, rows, d, 0)?;
        let mut z = vec![0f32; rows * k];
        z.par_chunks_mut(k).enumerate().for_each(|(r, out)| {
            let centered: Vec<f64> = row(x, d, r)
                .iter()
                .zip(&self.mean)
                .map(|(&v, &m)| v as f64 - m as f64)
                .collect();
            for (i, o) in out.iter_mut().enumerate() {
                let dot: f64 = self.components[i * d..(i + 1) * d]
                    .iter()
                    .zip(&centered)
                    .map(|(&c, v)| c as f64 * v)
                    .sum();
                *o = (dot / self.scale[i] as f64) as f32;
            }
        });
        Ok(z)
    }

    pub fn info(&self) -> WhiteningInfo {
        WhiteningInfo {
            k: self.k,
            dim: self.dim,
            eps: self.eps,
            retained: self.retained,
            fitted_rows: self.fitted_rows,
        }
    }

    /// The stored form: (name, shape, values) of [`MEAN`], [`COMPONENTS`], [`SCALE`] (F32),
    /// and the ([`WHITEN_KEY`], JSON) metadata entry.
    pub fn to_tensors(&self) -> (Vec<StoredTensor<'_>>, (String, String)) {
        let info = serde_json::to_string(&self.info()).unwrap_or_default();
        (
            vec![
                (MEAN, vec![self.dim], &self.mean[..]),
                (COMPONENTS, vec![self.k, self.dim], &self.components[..]),
                (SCALE, vec![self.k], &self.scale[..]),
            ],
            (WHITEN_KEY.to_string(), info),
        )
    }

    /// Reads a transform stored by [`Whitening::to_tensors`] from `m`: the three tensors (any
    /// float dtype) with consistent shapes, finite values and positive scales, and the
    /// [`WHITEN_KEY`] metadata agreeing with them. Errors name the file and the tensor.
    pub fn from_tensors(m: &Model) -> Result<Whitening> {
        let src = m.source();
        let text = m.metadata().get(WHITEN_KEY).cloned().ok_or_else(|| {
            Error::format(
                src,
                format!(
                    "not a whitening transform (no {WHITEN_KEY} metadata; write one with `engram whiten`)"
                ),
            )
        })?;
        let info: WhiteningInfo = serde_json::from_str(&text)
            .map_err(|e| Error::format(src, format!("{WHITEN_KEY} metadata: {e}")))?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let v = m.require(name)?;
            if !v.dtype().is_float() {
                return Err(Error::tensor(
                    src,
                    name,
                    format!("{} is not a float type", v.dtype()),
                ));
            }
            if v.shape() != shape {
                return Err(Error::tensor(
                    src,
                    name,
                    format!(
                        "shape {:?} differs from {shape:?} (k = {}, dim = {} in {WHITEN_KEY})",
                        v.shape(),
                        info.k,
                        info.dim
                    ),
                ));
            }
            let vals = v.to_f32()?;
            if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
                return Err(Error::tensor(
                    src,
                    name,
                    format!("element {i} is not finite"),
                ));
            }
            Ok(vals)
        };
        if info.k == 0 || info.dim == 0 || info.k > info.dim {
            return Err(Error::format(
                src,
                format!(
                    "{WHITEN_KEY}: k = {} and dim = {} (need 1 ≤ k ≤ dim)",
                    info.k, info.dim
                ),
            ));
        }
        let mean = read(MEAN, &[info.dim])?;
        let components = read(COMPONENTS, &[info.k, info.dim])?;
        let scale = read(SCALE, &[info.k])?;
        if let Some(i) = scale.iter().position(|&s| s <= 0.0) {
            return Err(Error::tensor(
                src,
                SCALE,
                format!("element {i} is {} (scales must be positive)", scale[i]),
            ));
        }
        Ok(Whitening {
            mean,
            components,
            scale,
            k: info.k,
            dim: info.dim,
            eps: info.eps,
            retained: info.retained,
            fitted_rows: info.fitted_rows,
        })
    }
}

/// Which Gram matrix of the centered rows A = X − μ (`rows × dim`) [`Whitening::fit`]
/// eigendecomposes; both have the eigenvalues S_i².
#[derive(Clone, Copy, Debug, PartialEq)]
enum Gram {
    /// AᵀA (dim × dim): its eigenvectors are V.
    Cols,
    /// AAᵀ (rows × rows): its eigenvectors are U, and V_k = AᵀU_k·S_k⁻¹.
    Rows,
}

impl Gram {
    /// The smaller one: AAᵀ when rows − 1 < dim (A has at most rows − 1 directions with
    /// variance, so nothing is lost), else AᵀA. Its side is min(rows, dim); above
    /// [`MAX_GRAM`] the fit is refused.
    fn choose(rows: usize, dim: usize) -> Result<Gram> {
        let side = rows.min(dim);
        if side > MAX_GRAM {
            return Err(invalid(format!(
                "fitting {rows} rows × {dim} dimensions needs the eigendecomposition of a {side} × {side} matrix; at most {MAX_GRAM} × {MAX_GRAM}: fit on at most {MAX_GRAM} rows"
            )));
        }
        Ok(if rows - 1 < dim {
            Gram::Rows
        } else {
            Gram::Cols
        })
    }
}

/// [`Whitening::fit`] through the Gram matrix `gram` (inputs already checked).
fn fit_with(
    x: &[f32],
    rows: usize,
    dim: usize,
    k: usize,
    eps: f64,
    gram: Gram,
) -> Result<Whitening> {
    let mu = mean_row(x, rows, dim);
    let centered_cols = |start: usize| {
        let w = BLOCK.min(dim - start);
        Mat::from_fn(rows, w, |i, j| {
            x[i * dim + start + j] as f64 - mu[start + j]
        })
    };
    let eigen = |g: Mat<f64>| {
        g.self_adjoint_eigen(Side::Lower)
            .map_err(|e| invalid(format!("eigendecomposition did not converge: {e:?}")))
    };
    // Eigenvalues come in nondecreasing order: the top k are the last k. `lambda`: all of
    // them; `v`: the top k directions in dim space as columns (dim × k), by decreasing
    // eigenvalue, each of norm S_i (Rows) or 1 (Cols).
    let (lambda, v, total): (Vec<f64>, Mat<f64>, f64) = match gram {
        Gram::Cols => {
            let c = gram_dd(rows, dim, &|i, out| {
                for ((o, &v), m) in out.iter_mut().zip(row(x, dim, i)).zip(&mu) {
                    *o = v as f64 - m;
                }
            });
            let total = (0..dim).map(|i| c[(i, i)]).sum();
            let eig = eigen(c)?;
            let (u, s) = (eig.U(), eig.S().column_vector());
            let v = Mat::from_fn(dim, k, |r, i| u[(r, dim - 1 - i)]);
            ((0..dim).map(|j| s[j]).collect(), v, total)
        }
        Gram::Rows => {
            // AAᵀ over blocks of columns: memory rows² plus one block, never rows × dim f64.
            let mut g = Mat::<f64>::zeros(rows, rows);
            for start in (0..dim).step_by(BLOCK) {
                let b = centered_cols(start);
                matmul(g.as_mut(), Accum::Add, &b, b.transpose(), 1.0, Par::Seq);
            }
            let total = (0..rows).map(|i| g[(i, i)]).sum();
            let eig = eigen(g)?;
            let (u, s) = (eig.U(), eig.S().column_vector());
            let uk = Mat::from_fn(rows, k, |r, i| u[(r, rows - 1 - i)]);
            // V_k·S_k = AᵀU_k, block by block of its rows.
            let mut v = Mat::<f64>::zeros(dim, k);
            for start in (0..dim).step_by(BLOCK) {
                let b = centered_cols(start);
                let w = b.ncols();
                matmul(
                    v.as_mut().subrows_mut(start, w),
                    Accum::Replace,
                    b.transpose(),
                    &uk,
                    1.0,
                    Par::Seq,
                );
            }
            ((0..rows).map(|j| s[j]).collect(), v, total)
        }
    };
    let top = lambda.last().copied().unwrap_or(0.0);
    let rank = lambda.iter().filter(|&&l| l > RANK_TOL * top).count();
    if k > rank {
        return Err(invalid(format!(
            "component {rank} has no variance: the fitted rows span {rank} direction(s), so keep k ≤ {rank} (k = {k})"
        )));
    }
    let mut components = Vec::with_capacity(k * dim);
    let mut scale = Vec::with_capacity(k);
    let mut kept = 0.0;
    let root = ((rows - 1) as f64).sqrt();
    for i in 0..k {
        let l = lambda[lambda.len() - 1 - i];
        kept += l;
        // Dividing by the computed norm (S_i on the rows path) makes each direction a unit
        // vector on both paths.
        let col = v.col(i);
        let norm = col.iter().map(|c| c * c).sum::<f64>().sqrt();
        let big = (0..dim).fold(0, |b, r| if col[r].abs() > col[b].abs() { r } else { b });
        let sign = if col[big] < 0.0 { -norm } else { norm };
        components.extend(col.iter().map(|c| (c / sign) as f32));
        let sc = ((l.sqrt() + eps) / root) as f32;
        if !(sc.is_normal() && sc > 0.0) {
            return Err(invalid(format!(
                "component {i}: its scale {sc} is not a positive normal f32 (S_{i} = {})",
                l.sqrt()
            )));
        }
        scale.push(sc);
    }
    Ok(Whitening {
        mean: mu.iter().map(|&m| m as f32).collect(),
        components,
        scale,
        k,
        dim,
        eps,
        retained: if total > 0.0 { kept / total } else { 0.0 },
        fitted_rows: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The slow reference: every pair's cosine.
    fn all_pairs(x: &[f32], n: usize, d: usize, labels: &[u32]) -> (f64, f64) {
        let r = |i: usize| -> Vec<f64> { row(x, d, i).iter().map(|&v| v as f64).collect() };
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let (mut all, mut m, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            for j in i + 1..n {
                let c = cos(&r(i), &r(j));
                all.push(c);
                if labels[i] == labels[j] {
                    m.push(c)
                } else {
                    o.push(c)
                }
            }
        }
        let mv = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var)
        };
        let (mm, vm) = mv(&m);
        let (mo, vo) = mv(&o);
        (mv(&all).0, (mm - mo) / (0.5 * (vm + vo)).sqrt())
    }

    fn data(n: usize, d: usize, offset: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let x = (0..n * d)
            .map(|i| offset + r.normal() + 0.8 * (labels[i / d] as f32) * ((i % d) as f32).cos())
            .collect();
        (x, labels)
    }

    #[test]
    fn matches_all_pairs_on_both_gram_paths() {
        // n ≤ d (row Gram), n > d with several blocks (d × d Gram).
        for (n, d) in [(9, 20), (1100, 3), (40, 5)] {
            let (x, labels) = data(n, d, 0.3, n as u64);
            let a = anisotropy(&x, n, d, Some(&labels)).unwrap();
            let (mc, dp) = all_pairs(&x, n, d, &labels);
            assert!(
                (a.mean_cos - mc).abs() < 1e-10,
                "{n}×{d}: {} {mc}",
                a.mean_cos
            );
            let got = a.d_prime.unwrap();
            assert!(
                (got - dp).abs() < 1e-8 * dp.abs().max(1.0),
                "{n}×{d}: {got} {dp}"
            );
            let p = a.pairs.unwrap();
            assert_eq!(p.matched + p.non_matched, (n * (n - 1) / 2) as u64);
            assert_eq!(p.classes, 3);
        }
    }

    #[test]
    fn effective_dimensionality_is_the_participation_ratio() {
        // Variance along two axes only, 4 and 1 (sample), in 5 dimensions: (4 + 1)² / (16 + 1).
        let x: Vec<f32> = [[2.0, 0.0, 0.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0, 0.0]]
            .iter()
            .chain(&[[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0, 0.0]])
            .flatten()
            .map(|v| v + 3.0)
            .collect();
        let a = anisotropy(&x, 4, 5, None).unwrap();
        assert!((a.eff_dim - 25.0 / 17.0).abs() < 1e-12, "{}", a.eff_dim);
        assert_eq!(a.d_prime, None);
        // Isotropic: near d.
        let mut r = Rng::new(1);
        let x: Vec<f32> = (0..2000 * 6).map(|_| r.normal()).collect();
        let a = anisotropy(&x, 2000, 6, None).unwrap();
        assert!(a.eff_dim > 5.8 && a.eff_dim <= 6.0, "{}", a.eff_dim);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_row() {
        let e = anisotropy(&[1.0, 0.0, 0.0, 0.0], 2, 2, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 of the 2 rows have zero norm"), "{e}");
        let e = anisotropy(&[1.0, f32::NAN], 1, 2, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2"), "{e}");
        let e = anisotropy(&[1.0, 2.0, f32::NAN, 1.0], 2, 2, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1, column 0"), "{e}");
        let x = [1.0, 2.0, 2.0, 1.0, 3.0, 1.0];
        let e = anisotropy(&x, 3, 2, Some(&[0, 0, 0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("give 3 and 0"), "{e}");
        let e = anisotropy(&x, 3, 2, Some(&[0, 1])).unwrap_err().to_string();
        assert!(e.contains("2 labels for 3 rows"), "{e}");
    }

    #[test]
    fn zero_rows_are_left_out_of_the_cosines_and_counted() {
        let (n, d) = (30, 6);
        let (x, labels) = data(n, d, 0.3, 4);
        // Zero rows inserted at the front, in the middle and at the end, with labels.
        let mut zx = vec![0f32; d];
        zx.extend_from_slice(&x[..10 * d]);
        zx.extend(vec![0f32; 2 * d]);
        zx.extend_from_slice(&x[10 * d..]);
        zx.extend(vec![0f32; d]);
        let mut zl = vec![1];
        zl.extend_from_slice(&labels[..10]);
        zl.extend([0, 2]);
        zl.extend_from_slice(&labels[10..]);
        zl.push(0);
        let a = anisotropy(&zx, n + 4, d, Some(&zl)).unwrap();
        let plain = anisotropy(&x, n, d, Some(&labels)).unwrap();
        assert_eq!((a.rows, a.zero_rows, plain.zero_rows), (n + 4, 4, 0));
        let (mc, dp) = all_pairs(&x, n, d, &labels);
        assert!((a.mean_cos - mc).abs() < 1e-10, "{} {mc}", a.mean_cos);
        assert!((a.d_prime.unwrap() - dp).abs() < 1e-8 * dp.abs().max(1.0));
        assert_eq!(a.pairs, plain.pairs);
        // eff_dim uses every row: the zero rows move the mean and add variance.
        let ez = anisotropy(&zx, n + 4, d, None).unwrap().eff_dim;
        assert!((ez - plain.eff_dim).abs() > 1e-6, "{ez} {}", plain.eff_dim);
        // Fewer than 2 non-zero rows, or no different-label pair among them.
        let e = anisotropy(&[0.0, 0.0, 1.0, 2.0, 0.0, 0.0], 3, 2, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 of the 3 rows have zero norm"), "{e}");
        let e = anisotropy(&[0.0, 0.0, 1.0, 2.0, 2.0, 1.0], 3, 2, Some(&[1, 0, 0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("of the 2 non-zero rows give 1 and 0"), "{e}");
    }

    /// Strongly anisotropic data: a large common offset and unequal variances.
    fn skewed(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let mut x = Vec::with_capacity(n * d);
        for &l in &labels {
            for j in 0..d {
                let noise = if j < 4 { 3.0 } else { 0.3 };
                let class = if j == d - 1 {
                    0.5 * (2.0 * l as f32 - 1.0)
                } else {
                    0.0
                };
                x.push(10.0 + noise * r.normal() + class);
            }
        }
        (x, labels)
    }

    #[test]
    fn whitening_gives_identity_covariance_and_removes_anisotropy() {
        let (n, d, k) = (400, 8, 8);
        let (x, labels) = skewed(n, d, 3);
        let w = Whitening::fit(&x, n, d, k, 1e-12).unwrap();
        let z = w.apply(&x, n).unwrap();
        for i in 0..k {
            let mi: f64 = (0..n).map(|r| z[r * k + i] as f64).sum::<f64>() / n as f64;
            assert!(mi.abs() < 1e-4, "mean {i}: {mi}");
            for j in 0..k {
                let c: f64 = (0..n)
                    .map(|r| z[r * k + i] as f64 * z[r * k + j] as f64)
                    .sum::<f64>()
                    / (n - 1) as f64;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-3, "cov[{i}][{j}] = {c}");
            }
        }
        assert!((w.retained - 1.0).abs() < 1e-12);
        let before = anisotropy(&x, n, d, Some(&labels)).unwrap();
        let after = anisotropy(&z, n, k, Some(&labels)).unwrap();
        assert!(before.mean_cos > 0.95, "{}", before.mean_cos);
        assert!(after.mean_cos.abs() < 0.05, "{}", after.mean_cos);
        let (b, a) = (before.d_prime.unwrap(), after.d_prime.unwrap());
        assert!(a > b + 0.3, "d′ {b} -> {a}");
        assert!(after.eff_dim > before.eff_dim);
        // Fewer components keep less variance; the top ones come first.
        let w3 = Whitening::fit(&x, n, d, 3, 1e-5).unwrap();
        assert!(w3.retained < 1.0 && w3.retained > 0.5, "{}", w3.retained);
        assert_eq!(w3.components[..3 * d], w.components[..3 * d]);
    }

    #[test]
    fn fit_is_deterministic_and_signs_are_fixed() {
        let (x, _) = skewed(100, 6, 9);
        let a = Whitening::fit(&x, 100, 6, 4, 1e-5).unwrap();
        let b = Whitening::fit(&x, 100, 6, 4, 1e-5).unwrap();
        assert_eq!(a, b);
        for c in a.components.chunks(6) {
            let big = c
                .iter()
                .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
            assert!(big > 0.0, "{c:?}");
        }
    }

    #[test]
    fn bad_k_and_eps_are_refused() {
        let (x, _) = skewed(5, 8, 1);
        for k in [0, 5, 9] {
            let e = Whitening::fit(&x, 5, 8, k, 1e-5).unwrap_err().to_string();
            assert!(
                e.contains(&format!("k = {k}")) && e.contains("1 to 4"),
                "{e}"
            );
        }
        for eps in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(Whitening::fit(&x, 5, 8, 2, eps).is_err());
        }
        // A rank-1 set: the second component has no variance, whatever eps (d × d path).
        let x: Vec<f32> = (0..10).flat_map(|i| [i as f32, 2.0 * i as f32]).collect();
        for eps in [0.0, 1e-5] {
            let e = Whitening::fit(&x, 10, 2, 2, eps).unwrap_err().to_string();
            assert!(
                e.contains("component 1 has no variance") && e.contains("span 1 direction"),
                "{e}"
            );
        }
        // The same on the rows × rows path: 4 rows on one line in 6 dimensions.
        let line: Vec<f32> = (0..4)
            .flat_map(|i| (0..6).map(move |j| (i * (j + 1)) as f32))
            .collect();
        let e = Whitening::fit(&line, 4, 6, 2, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("component 1 has no variance"), "{e}");
        let w = Whitening::fit(&x, 10, 2, 1, 0.0).unwrap();
        assert!(w.apply(&x[..3], 2).is_err());
        let mut bad = w.clone();
        bad.scale.push(1.0);
        let e = bad.apply(&x, 10).unwrap_err().to_string();
        assert!(e.contains("inconsistent transform"), "{e}");
        // Public fields: an empty transform is an error, not a panic.
        for (k, dim) in [(0, 2), (1, 0), (0, 0)] {
            let empty = Whitening {
                mean: vec![0.0; dim],
                components: vec![],
                scale: vec![1.0; k],
                k,
                dim,
                ..w.clone()
            };
            let e = empty.apply(&[], 0).unwrap_err().to_string();
            assert!(e.contains("an empty transform"), "{e}");
        }
    }

    #[test]
    fn oversized_gram_matrices_are_refused() {
        assert_eq!(Gram::choose(20, 50).unwrap(), Gram::Rows);
        assert_eq!(Gram::choose(51, 50).unwrap(), Gram::Cols);
        assert_eq!(Gram::choose(50, 50).unwrap(), Gram::Rows);
        assert_eq!(Gram::choose(MAX_GRAM, 50257).unwrap(), Gram::Rows);
        assert_eq!(Gram::choose(1 << 20, MAX_GRAM).unwrap(), Gram::Cols);
        let e = Gram::choose(MAX_GRAM + 1, 50257).unwrap_err().to_string();
        assert!(
            e.contains("8193 rows × 50257 dimensions") && e.contains("8193 × 8193"),
            "{e}"
        );
        assert!(Gram::choose(1 << 20, MAX_GRAM + 1).is_err());
    }

    /// Rows with a distinct variance per dimension (well-separated components).
    fn graded(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n * d)
            .map(|i| 2.0 + (1.0 + 0.7 * (i % d) as f32) * r.normal())
            .collect()
    }

    #[test]
    fn both_gram_paths_give_the_same_transform() {
        // n − 1 ≥ d (d × d is the natural path) and n − 1 < d (rows × rows is), each forced
        // both ways.
        for (n, d, k) in [(12, 8, 5), (6, 10, 5), (9, 9, 8)] {
            let x = graded(n, d, n as u64);
            let a = fit_with(&x, n, d, k, 1e-5, Gram::Cols).unwrap();
            let b = fit_with(&x, n, d, k, 1e-5, Gram::Rows).unwrap();
            assert_eq!(a.mean, b.mean);
            assert!((a.retained - b.retained).abs() < 1e-12, "{n}×{d}");
            for (i, (p, q)) in a.scale.iter().zip(&b.scale).enumerate() {
                assert!((p - q).abs() <= 1e-5 * p, "{n}×{d} scale {i}: {p} {q}");
            }
            for (i, (p, q)) in a.components.iter().zip(&b.components).enumerate() {
                assert!((p - q).abs() < 1e-5, "{n}×{d} component value {i}: {p} {q}");
            }
            let (za, zb) = (a.apply(&x, n).unwrap(), b.apply(&x, n).unwrap());
            for (i, (p, q)) in za.iter().zip(&zb).enumerate() {
                assert!((p - q).abs() < 1e-4, "{n}×{d} whitened value {i}: {p} {q}");
            }
        }
    }

    #[test]
    fn wide_fits_give_identity_covariance_on_the_fitting_rows() {
        // More dimensions than rows, and more than one block of columns.
        let (n, d) = (20, BLOCK + 100);
        let x = graded(n, d, 5);
        let k = n - 1;
        let w = Whitening::fit(&x, n, d, k, 1e-12).unwrap();
        assert!((w.retained - 1.0).abs() < 1e-9, "{}", w.retained);
        let z = w.apply(&x, n).unwrap();
        for i in 0..k {
            for j in 0..k {
                let c: f64 = (0..n)
                    .map(|r| z[r * k + i] as f64 * z[r * k + j] as f64)
                    .sum::<f64>()
                    / (n - 1) as f64;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-3, "cov[{i}][{j}] = {c}");
            }
        }
        // Unit components with the sign convention.
        for c in w.components.chunks(d) {
            let norm: f32 = c.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
            let big = c
                .iter()
                .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
            assert!(big > 0.0);
        }
    }

    #[test]
    fn stored_transform_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (x, _) = skewed(50, 6, 2);
        let w = Whitening::fit(&x, 50, 6, 3, 1e-5).unwrap();
        let (tensors, (key, value)) = w.to_tensors();
        let path = dir.path().join("t.safetensors");
        let specs = tensors
            .iter()
            .map(|(n, s, _)| engram_ckpt::TensorSpec::new(*n, engram_ckpt::DType::F32, s))
            .collect();
        let opts = engram_ckpt::WriteOptions {
            max_shard_bytes: None,
            metadata: [(key, value)].into(),
        };
        let wr = engram_ckpt::ModelWriter::create(&path, specs, &opts).unwrap();
        for (n, _, v) in &tensors {
            wr.write_f32(n, v).unwrap();
        }
        wr.finish(&[]).unwrap();
        let back = Whitening::from_tensors(&Model::open(&path).unwrap()).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.apply(&x, 50).unwrap(), w.apply(&x, 50).unwrap());
        // A model without the metadata is not a transform.
        let other = dir.path().join("o.safetensors");
        let m = crate::testutil::write_model(
            &other,
            engram_ckpt::DType::F32,
            &[(MEAN, &[6])],
            &|_, _| 0.0,
        );
        let e = Whitening::from_tensors(&m).unwrap_err().to_string();
        assert!(e.contains("not a whitening transform"), "{e}");
    }
}
