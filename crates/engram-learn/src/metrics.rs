//! Continual-learning metrics: the accuracy matrix and everything derived from it (A_k, ACC,
//! AIA, forgetting, BWT, FWT, minimum accuracy), expected calibration error and masked
//! (Task-IL / Class-IL) accuracy. Card: `methods/metrics.md` (the formulas there are the
//! specification; the doc comment of each function repeats the one it implements).
//!
//! Pure Rust on plain slices: nothing here uses the deep-learning framework.
//!
//! Indexing: the formulas in the card count tasks from 1; this API counts from 0. Row `k` of
//! the matrix is "after training task k" (tasks 0..=k seen), column `i` is "evaluated on
//! task i". All accuracies and derived metrics are in percent, ECE included (100 × the
//! fraction), as the card says.

use serde::{Deserialize, Serialize};

/// Number of equal-width confidence bins of the ECE (Guo et al.).
pub const ECE_BINS: usize = 15;

/// Bad input to a metric: each names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("accuracy matrix is empty (no tasks)")]
    EmptyMatrix,
    #[error("accuracy matrix is not square: row {row} has {len} entries, expected {expected}")]
    NotSquare {
        row: usize,
        len: usize,
        expected: usize,
    },
    #[error("accuracy a[{row}][{col}] = {value} is not a percentage in [0, 100]")]
    BadAccuracy { row: usize, col: usize, value: f64 },
    #[error("baseline has {len} entries, expected one per task ({expected})")]
    BaselineLength { len: usize, expected: usize },
    #[error("baseline accuracy b[{task}] = {value} is not a percentage in [0, 100]")]
    BadBaseline { task: usize, value: f64 },
    #[error("index ({row}, {col}) is outside the {t}x{t} accuracy matrix")]
    OutOfRange { row: usize, col: usize, t: usize },
    #[error("no samples to compute {0} from")]
    NoSamples(&'static str),
    #[error("confidence {value} of sample {sample} is not a probability in [0, 1]")]
    BadConfidence { sample: usize, value: f64 },
    #[error("{logits} logits do not split into rows of {classes} classes")]
    LogitShape { logits: usize, classes: usize },
    #[error("{rows} rows of logits but {labels} labels")]
    LabelCount { rows: usize, labels: usize },
    #[error("label {label} of sample {sample} is not a class (0..{classes})")]
    BadLabel {
        sample: usize,
        label: u32,
        classes: usize,
    },
    #[error("logit {value} of sample {sample}, class {class} is not finite")]
    NonFiniteLogit {
        sample: usize,
        class: usize,
        value: f32,
    },
    #[error("class mask covers {mask} classes but the logits have {classes}")]
    MaskLength { mask: usize, classes: usize },
    #[error("class mask allows no class")]
    EmptyMask,
    #[error("class {class} is outside 0..{classes}")]
    BadClass { class: usize, classes: usize },
}

fn check_percent(v: f64) -> bool {
    v.is_finite() && (0.0..=100.0).contains(&v)
}

fn mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len();
    xs.sum::<f64>() / n as f64
}

/// The T × T accuracy matrix `a[k][i]` (percent): accuracy on task `i` after training on
/// tasks `0..=k`. The upper triangle (`i > k`, tasks not trained yet) is kept: FWT reads it.
/// `baseline[i]` (b_i) is the accuracy of the randomly initialised model (same architecture
/// and seed) on task `i`; FWT needs it.
///
/// Always square, non-empty and in [0, 100]: the constructors and deserialization check it,
/// so the metric methods never fail on shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMatrix", into = "RawMatrix")]
pub struct AccuracyMatrix {
    eval_mode: String,
    a: Vec<Vec<f64>>,
    baseline: Option<Vec<f64>>,
}

/// Serialized form: `{"eval_mode": "class-il", "accuracy": [[..], ..], "baseline": [..] | null}`.
#[derive(Serialize, Deserialize)]
struct RawMatrix {
    eval_mode: String,
    accuracy: Vec<Vec<f64>>,
    #[serde(default)]
    baseline: Option<Vec<f64>>,
}

impl TryFrom<RawMatrix> for AccuracyMatrix {
    type Error = MetricsError;
    fn try_from(r: RawMatrix) -> Result<Self, MetricsError> {
        let mut m = AccuracyMatrix::from_rows(&r.eval_mode, r.accuracy)?;
        if let Some(b) = r.baseline {
            m.set_baseline(b)?;
        }
        Ok(m)
    }
}

impl From<AccuracyMatrix> for RawMatrix {
    fn from(m: AccuracyMatrix) -> RawMatrix {
        RawMatrix {
            eval_mode: m.eval_mode,
            accuracy: m.a,
            baseline: m.baseline,
        }
    }
}

/// The forgetting engram reports: Chaudhry et al.'s max over the rows after the task was
/// learned and before the current one (l = i..k−1), unclamped; Mammoth includes the current
/// row (never negative).
pub const FORGETTING_VARIANT: &str = "max over rows l = i..k-1 (Chaudhry et al.), unclamped";

impl AccuracyMatrix {
    /// A `tasks` × `tasks` matrix of zeros, to be filled with [`AccuracyMatrix::set_row`] /
    /// [`AccuracyMatrix::set`] as training proceeds.
    pub fn zeros(eval_mode: &str, tasks: usize) -> Result<AccuracyMatrix, MetricsError> {
        if tasks == 0 {
            return Err(MetricsError::EmptyMatrix);
        }
        Ok(AccuracyMatrix {
            eval_mode: eval_mode.to_string(),
            a: vec![vec![0.0; tasks]; tasks],
            baseline: None,
        })
    }

    /// A matrix from its rows (`rows[k][i]`, percent), checked square and in [0, 100].
    pub fn from_rows(eval_mode: &str, rows: Vec<Vec<f64>>) -> Result<AccuracyMatrix, MetricsError> {
        let t = rows.len();
        if t == 0 {
            return Err(MetricsError::EmptyMatrix);
        }
        for (k, row) in rows.iter().enumerate() {
            if row.len() != t {
                return Err(MetricsError::NotSquare {
                    row: k,
                    len: row.len(),
                    expected: t,
                });
            }
            for (i, &v) in row.iter().enumerate() {
                if !check_percent(v) {
                    return Err(MetricsError::BadAccuracy {
                        row: k,
                        col: i,
                        value: v,
                    });
                }
            }
        }
        Ok(AccuracyMatrix {
            eval_mode: eval_mode.to_string(),
            a: rows,
            baseline: None,
        })
    }

    /// Sets the random-initialisation accuracies b_i (one per task, percent).
    pub fn set_baseline(&mut self, baseline: Vec<f64>) -> Result<(), MetricsError> {
        if baseline.len() != self.tasks() {
            return Err(MetricsError::BaselineLength {
                len: baseline.len(),
                expected: self.tasks(),
            });
        }
        if let Some((i, &v)) = baseline
            .iter()
            .enumerate()
            .find(|(_, v)| !check_percent(**v))
        {
            return Err(MetricsError::BadBaseline { task: i, value: v });
        }
        self.baseline = Some(baseline);
        Ok(())
    }

    /// Builder form of [`AccuracyMatrix::set_baseline`].
    pub fn with_baseline(mut self, baseline: Vec<f64>) -> Result<AccuracyMatrix, MetricsError> {
        self.set_baseline(baseline)?;
        Ok(self)
    }

    /// Sets `a[k][i]` (percent).
    pub fn set(&mut self, k: usize, i: usize, value: f64) -> Result<(), MetricsError> {
        let t = self.tasks();
        if k >= t || i >= t {
            return Err(MetricsError::OutOfRange { row: k, col: i, t });
        }
        if !check_percent(value) {
            return Err(MetricsError::BadAccuracy {
                row: k,
                col: i,
                value,
            });
        }
        self.a[k][i] = value;
        Ok(())
    }

    /// Sets row `k` (accuracies on every task after training task `k`).
    pub fn set_row(&mut self, k: usize, row: &[f64]) -> Result<(), MetricsError> {
        let t = self.tasks();
        if row.len() != t {
            return Err(MetricsError::NotSquare {
                row: k,
                len: row.len(),
                expected: t,
            });
        }
        if k >= t {
            return Err(MetricsError::OutOfRange { row: k, col: 0, t });
        }
        if let Some((i, &v)) = row.iter().enumerate().find(|(_, v)| !check_percent(**v)) {
            return Err(MetricsError::BadAccuracy {
                row: k,
                col: i,
                value: v,
            });
        }
        self.a[k].copy_from_slice(row);
        Ok(())
    }

    /// Number of tasks T.
    pub fn tasks(&self) -> usize {
        self.a.len()
    }

    /// The evaluation mode the accuracies were measured in (`task-il`, `class-il`, ...).
    pub fn eval_mode(&self) -> &str {
        &self.eval_mode
    }

    /// The rows `a[k][i]`.
    pub fn rows(&self) -> &[Vec<f64>] {
        &self.a
    }

    /// b_i, if set.
    pub fn baseline(&self) -> Option<&[f64]> {
        self.baseline.as_deref()
    }

    /// `a[k][i]`, `None` outside the matrix.
    pub fn get(&self, k: usize, i: usize) -> Option<f64> {
        self.a.get(k).and_then(|r| r.get(i)).copied()
    }

    fn last(&self) -> &[f64] {
        // Non-empty by construction.
        &self.a[self.a.len() - 1]
    }

    /// Average accuracy after training task `k` (0-based): A_{k+1} = (1/(k+1))·Σ_{i≤k} a[k][i].
    /// `None` when `k ≥ T`.
    pub fn average_accuracy(&self, k: usize) -> Option<f64> {
        let row = self.a.get(k)?;
        Some(mean(row[..=k].iter().copied()))
    }

    /// A_1 … A_T.
    pub fn average_accuracies(&self) -> Vec<f64> {
        (0..self.tasks())
            .map(|k| mean(self.a[k][..=k].iter().copied()))
            .collect()
    }

    /// Final average accuracy ACC = A_T.
    pub fn final_accuracy(&self) -> f64 {
        mean(self.last().iter().copied())
    }

    /// Average incremental accuracy AIA = (1/T)·Σ_k A_k (iCaRL).
    pub fn average_incremental_accuracy(&self) -> f64 {
        mean(self.average_accuracies().into_iter())
    }

    /// Forgetting of task `i` after training task `k` (0-based, `i < k`):
    /// f_{k,i} = max_{l∈i..k−1} a[l][i] − a[k][i] — the max over the rows **after task i was
    /// learned** (metrics card, "Forgetting range"; the stored upper triangle, where a
    /// pre-training or forward-transfer accuracy could win the max, is left out), and never
    /// clamped: negative when a[k][i] beats all earlier values ([`FORGETTING_VARIANT`]).
    /// `None` unless `i < k < T`.
    pub fn forgetting(&self, k: usize, i: usize) -> Option<f64> {
        if i >= k || k >= self.tasks() {
            return None;
        }
        let best = self.a[i..k]
            .iter()
            .map(|r| r[i])
            .fold(f64::NEG_INFINITY, f64::max);
        Some(best - self.a[k][i])
    }

    /// f_{T,i} for every task `i < T−1` (empty when T = 1).
    pub fn final_forgetting_per_task(&self) -> Vec<f64> {
        let k = self.tasks() - 1;
        (0..k).filter_map(|i| self.forgetting(k, i)).collect()
    }

    /// Average forgetting F_T = (1/(T−1))·Σ_{i<T} f_{T,i} (Chaudhry et al.). `None` when T = 1.
    pub fn average_forgetting(&self) -> Option<f64> {
        let f = self.final_forgetting_per_task();
        (!f.is_empty()).then(|| mean(f.into_iter()))
    }

    /// Backward transfer BWT = (1/(T−1))·Σ_{i<T} (a[T][i] − a[i][i]) (GEM). `None` when T = 1.
    pub fn backward_transfer(&self) -> Option<f64> {
        let t = self.tasks();
        if t < 2 {
            return None;
        }
        let last = self.last();
        Some(mean((0..t - 1).map(|i| last[i] - self.a[i][i])))
    }

    /// Forward transfer FWT = (1/(T−1))·Σ_{i=2..T} (a[i−1][i] − b_i) (GEM). `None` when T = 1
    /// or without a baseline.
    pub fn forward_transfer(&self) -> Option<f64> {
        let t = self.tasks();
        let b = self.baseline.as_ref()?;
        if t < 2 {
            return None;
        }
        Some(mean((1..t).map(|i| self.a[i - 1][i] - b[i])))
    }

    /// Minimum final accuracy min_i a[T][i].
    pub fn min_accuracy(&self) -> f64 {
        self.last().iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Time and memory costs of a run, carried into the [`Summary`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// Wall-clock training time of each task, seconds.
    pub time_per_task_s: Vec<f64>,
    /// Peak resident memory of the run, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Bytes of the strategy's own state (buffers, Fisher, anchors, teachers).
    pub state_bytes: Option<u64>,
}

/// Every derived metric of a run, in the shape written to the run's JSON. Metrics undefined
/// for a run (forgetting, BWT and FWT when T = 1; FWT without a baseline; ECE when not
/// measured) are `None` and serialize as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub eval_mode: String,
    pub tasks: usize,
    /// Final average accuracy ACC = A_T.
    pub acc: f64,
    /// Average incremental accuracy AIA.
    pub aia: f64,
    /// A_1 … A_T.
    pub average_accuracies: Vec<f64>,
    /// Average forgetting F_T.
    pub forgetting: Option<f64>,
    /// Which forgetting this is ([`FORGETTING_VARIANT`]; libraries differ).
    #[serde(default)]
    pub forgetting_variant: String,
    /// f_{T,i} for i < T.
    pub forgetting_per_task: Vec<f64>,
    pub bwt: Option<f64>,
    pub fwt: Option<f64>,
    pub min_accuracy: f64,
    /// Expected calibration error (15 bins), percent.
    pub ece: Option<f64>,
    pub time_per_task_s: Vec<f64>,
    pub time_total_s: f64,
    pub peak_memory_bytes: Option<u64>,
    pub state_bytes: Option<u64>,
}

impl Summary {
    /// All derived metrics of `m`, with the run's ECE (percent, if measured) and costs.
    pub fn from(m: &AccuracyMatrix, ece: Option<f64>, costs: Costs) -> Summary {
        Summary {
            eval_mode: m.eval_mode.clone(),
            tasks: m.tasks(),
            acc: m.final_accuracy(),
            aia: m.average_incremental_accuracy(),
            average_accuracies: m.average_accuracies(),
            forgetting: m.average_forgetting(),
            forgetting_variant: FORGETTING_VARIANT.to_string(),
            forgetting_per_task: m.final_forgetting_per_task(),
            bwt: m.backward_transfer(),
            fwt: m.forward_transfer(),
            min_accuracy: m.min_accuracy(),
            ece,
            time_total_s: costs.time_per_task_s.iter().sum(),
            time_per_task_s: costs.time_per_task_s,
            peak_memory_bytes: costs.peak_memory_bytes,
            state_bytes: costs.state_bytes,
        }
    }
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Bin bounds ((m−1)/15, m/15]; the first bin includes 0.
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence in the bin (0 when empty).
    pub confidence: f64,
    /// Mean correctness in the bin, as a fraction (0 when empty).
    pub accuracy: f64,
}

/// Bin index of a confidence in [0, 1]: m − 1 for p ∈ ((m−1)/15, m/15], 0 for p = 0.
fn bin_of(p: f64) -> usize {
    ((p * ECE_BINS as f64).ceil() as usize)
        .saturating_sub(1)
        .min(ECE_BINS - 1)
}

/// The 15 equal-width bins of (confidence, correct) pairs.
pub fn calibration_bins(samples: &[(f64, bool)]) -> Result<Vec<CalibrationBin>, MetricsError> {
    let mut count = [0usize; ECE_BINS];
    let mut conf = [0f64; ECE_BINS];
    let mut correct = [0usize; ECE_BINS];
    for (s, &(p, ok)) in samples.iter().enumerate() {
        if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
            return Err(MetricsError::BadConfidence {
                sample: s,
                value: p,
            });
        }
        let b = bin_of(p);
        count[b] += 1;
        conf[b] += p;
        correct[b] += ok as usize;
    }
    Ok((0..ECE_BINS)
        .map(|b| {
            let n = count[b];
            let (c, a) = if n == 0 {
                (0.0, 0.0)
            } else {
                (conf[b] / n as f64, correct[b] as f64 / n as f64)
            };
            CalibrationBin {
                lower: b as f64 / ECE_BINS as f64,
                upper: (b + 1) as f64 / ECE_BINS as f64,
                count: n,
                confidence: c,
                accuracy: a,
            }
        })
        .collect())
}

/// Expected calibration error in percent (Guo et al.):
/// ECE = 100 · Σ_m (|B_m|/n)·|acc(B_m) − conf(B_m)| over 15 equal-width bins
/// B_m = ((m−1)/15, m/15] (the first includes 0); empty bins contribute 0.
pub fn ece(samples: &[(f64, bool)]) -> Result<f64, MetricsError> {
    if samples.is_empty() {
        return Err(MetricsError::NoSamples("ECE"));
    }
    let n = samples.len() as f64;
    let bins = calibration_bins(samples)?;
    Ok(100.0
        * bins
            .iter()
            .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
            .sum::<f64>())
}

/// Which classes a prediction may choose: the task's classes in Task-IL, every class seen so
/// far in Class-IL (engram's default), every output in Domain-IL or `--class-il-scope all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMask {
    allowed: Vec<bool>,
}

impl ClassMask {
    /// Every one of `classes` outputs.
    pub fn all(classes: usize) -> ClassMask {
        ClassMask {
            allowed: vec![true; classes],
        }
    }

    /// Only `allowed` among `classes` outputs (e.g. a Task-IL task's classes).
    pub fn only(classes: usize, allowed: &[usize]) -> Result<ClassMask, MetricsError> {
        let mut m = vec![false; classes];
        for &c in allowed {
            *m.get_mut(c)
                .ok_or(MetricsError::BadClass { class: c, classes })? = true;
        }
        Ok(ClassMask { allowed: m })
    }

    /// Classes `range` among `classes` outputs (e.g. the classes seen so far, `0..seen`).
    pub fn range(classes: usize, range: std::ops::Range<usize>) -> Result<ClassMask, MetricsError> {
        if range.end > classes {
            return Err(MetricsError::BadClass {
                class: range.end - 1,
                classes,
            });
        }
        let mut m = vec![false; classes];
        m[range].fill(true);
        Ok(ClassMask { allowed: m })
    }

    /// Number of outputs the mask covers.
    pub fn classes(&self) -> usize {
        self.allowed.len()
    }

    pub fn allows(&self, class: usize) -> bool {
        self.allowed.get(class).copied().unwrap_or(false)
    }
}

/// Per-sample prediction from masked logits: `(argmax over the allowed classes, its softmax
/// probability among the allowed classes)`. `logits` is row-major, `classes` per row; ties go
/// to the lowest class. Masked-out logits count as −∞ (they are ignored, even if not finite).
pub fn masked_predictions(
    logits: &[f32],
    classes: usize,
    mask: &ClassMask,
) -> Result<Vec<(usize, f64)>, MetricsError> {
    if classes == 0 || !logits.len().is_multiple_of(classes) {
        return Err(MetricsError::LogitShape {
            logits: logits.len(),
            classes,
        });
    }
    if mask.classes() != classes {
        return Err(MetricsError::MaskLength {
            mask: mask.classes(),
            classes,
        });
    }
    if !mask.allowed.iter().any(|&a| a) {
        return Err(MetricsError::EmptyMask);
    }
    logits
        .chunks_exact(classes)
        .enumerate()
        .map(|(s, row)| {
            let mut best = (usize::MAX, f64::NEG_INFINITY);
            for (c, &l) in row.iter().enumerate() {
                if !mask.allowed[c] {
                    continue;
                }
                if !l.is_finite() {
                    return Err(MetricsError::NonFiniteLogit {
                        sample: s,
                        class: c,
                        value: l,
                    });
                }
                if (l as f64) > best.1 {
                    best = (c, l as f64);
                }
            }
            // Max softmax = exp(0) / Σ exp(l_j − max), over the allowed classes only.
            let z: f64 = row
                .iter()
                .enumerate()
                .filter(|(c, _)| mask.allowed[*c])
                .map(|(_, &l)| (l as f64 - best.1).exp())
                .sum();
            Ok((best.0, 1.0 / z))
        })
        .collect()
}

fn check_labels(rows: usize, labels: &[u32], classes: usize) -> Result<(), MetricsError> {
    if rows != labels.len() {
        return Err(MetricsError::LabelCount {
            rows,
            labels: labels.len(),
        });
    }
    if let Some((s, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes)
    {
        return Err(MetricsError::BadLabel {
            sample: s,
            label: l,
            classes,
        });
    }
    Ok(())
}

/// Accuracy in percent of the argmax over the allowed classes (Task-IL: the task's classes;
/// Class-IL: the classes seen so far).
pub fn masked_accuracy(
    logits: &[f32],
    classes: usize,
    labels: &[u32],
    mask: &ClassMask,
) -> Result<f64, MetricsError> {
    let preds = masked_predictions(logits, classes, mask)?;
    check_labels(preds.len(), labels, classes)?;
    if preds.is_empty() {
        return Err(MetricsError::NoSamples("accuracy"));
    }
    let correct = preds
        .iter()
        .zip(labels)
        .filter(|((p, _), l)| *p == **l as usize)
        .count();
    Ok(100.0 * correct as f64 / preds.len() as f64)
}

/// (confidence, correct) pairs from logits, the confidence taken from the same masked logits
/// as the prediction.
pub fn confidence_pairs(
    logits: &[f32],
    classes: usize,
    labels: &[u32],
    mask: &ClassMask,
) -> Result<Vec<(f64, bool)>, MetricsError> {
    let preds = masked_predictions(logits, classes, mask)?;
    check_labels(preds.len(), labels, classes)?;
    Ok(preds
        .into_iter()
        .zip(labels)
        .map(|((p, conf), &l)| (conf.clamp(0.0, 1.0), p == l as usize))
        .collect())
}

/// ECE (percent, 15 bins) from logits, labels and a class mask.
pub fn ece_from_logits(
    logits: &[f32],
    classes: usize,
    labels: &[u32],
    mask: &ClassMask,
) -> Result<f64, MetricsError> {
    ece(&confidence_pairs(logits, classes, labels, mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    /// 3 tasks; a[1][0] = 92 > a[0][0] = 90, so forgetting of task 0 uses a non-diagonal max
    /// and F ≠ −BWT.
    fn toy() -> AccuracyMatrix {
        AccuracyMatrix::from_rows(
            "class-il",
            vec![
                vec![90.0, 10.0, 20.0],
                vec![92.0, 95.0, 15.0],
                vec![60.0, 80.0, 85.0],
            ],
        )
        .unwrap()
        .with_baseline(vec![10.0, 5.0, 9.0])
        .unwrap()
    }

    #[test]
    fn toy_matrix_by_hand() {
        let m = toy();
        // A_1 = 90; A_2 = (92 + 95)/2 = 93.5; A_3 = (60 + 80 + 85)/3 = 225/3 = 75.
        assert_eq!(m.average_accuracies(), vec![90.0, 93.5, 75.0]);
        close(m.average_accuracy(1).unwrap(), 93.5);
        assert_eq!(m.average_accuracy(3), None);
        // ACC = A_3 = 75.
        close(m.final_accuracy(), 75.0);
        // AIA = (90 + 93.5 + 75)/3 = 258.5/3 = 86.1666...
        close(m.average_incremental_accuracy(), 258.5 / 3.0);
        // f_{2,1} (0-based (1, 0)) = a[0][0] − a[1][0] = 90 − 92 = −2 (negative, not clamped).
        close(m.forgetting(1, 0).unwrap(), -2.0);
        // f_{3,1} = max(90, 92) − 60 = 32; f_{3,2} = max(a[0][1] = 10, a[1][1] = 95) − 80 = 15.
        close(m.forgetting(2, 0).unwrap(), 32.0);
        close(m.forgetting(2, 1).unwrap(), 15.0);
        assert_eq!(m.forgetting(2, 2), None);
        assert_eq!(m.forgetting(0, 0), None);
        assert_eq!(m.final_forgetting_per_task(), vec![32.0, 15.0]);
        // F_3 = (32 + 15)/2 = 23.5.
        close(m.average_forgetting().unwrap(), 23.5);
        // The upper triangle (a task not yet learned) never enters the max: a forward-transfer
        // accuracy of 99 on task 1 before it was trained changes nothing.
        let mut rows = m.rows().to_vec();
        rows[0][1] = 99.0;
        let up = AccuracyMatrix::from_rows("class-il", rows).unwrap();
        close(up.forgetting(2, 1).unwrap(), 15.0);
        close(up.average_forgetting().unwrap(), 23.5);
        // BWT = ((60 − 90) + (80 − 95))/2 = (−30 − 15)/2 = −22.5 (≠ −F: a[0][0] is not the max).
        close(m.backward_transfer().unwrap(), -22.5);
        // FWT = ((a[0][1] − b_2) + (a[1][2] − b_3))/2 = ((10 − 5) + (15 − 9))/2 = 11/2 = 5.5.
        close(m.forward_transfer().unwrap(), 5.5);
        // min(60, 80, 85) = 60.
        close(m.min_accuracy(), 60.0);

        let s = Summary::from(
            &m,
            Some(3.0),
            Costs {
                time_per_task_s: vec![1.0, 2.5, 0.5],
                peak_memory_bytes: Some(1 << 20),
                state_bytes: Some(4096),
            },
        );
        assert_eq!((s.tasks, s.eval_mode.as_str()), (3, "class-il"));
        close(s.acc, 75.0);
        close(s.aia, 258.5 / 3.0);
        close(s.forgetting.unwrap(), 23.5);
        close(s.bwt.unwrap(), -22.5);
        close(s.fwt.unwrap(), 5.5);
        close(s.time_total_s, 4.0);
        assert_eq!(s.min_accuracy, 60.0);
        assert_eq!(s.forgetting_per_task, vec![32.0, 15.0]);
        let back: Summary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn fwt_needs_a_baseline() {
        let m = AccuracyMatrix::from_rows("task-il", toy().rows().to_vec()).unwrap();
        assert_eq!(m.forward_transfer(), None);
        assert!(m.backward_transfer().is_some());
    }

    #[test]
    fn positive_backward_transfer_gives_negative_forgetting() {
        // Task 0 improves from 50 to 70 while learning task 1.
        let m =
            AccuracyMatrix::from_rows("task-il", vec![vec![50.0, 0.0], vec![70.0, 90.0]]).unwrap();
        // f_{2,1} = 50 − 70 = −20; F_2 = −20 (not clamped to 0).
        close(m.average_forgetting().unwrap(), -20.0);
        // BWT = 70 − 50 = +20.
        close(m.backward_transfer().unwrap(), 20.0);
    }

    #[test]
    fn one_task_leaves_transfer_metrics_undefined() {
        let m = AccuracyMatrix::from_rows("class-il", vec![vec![80.0]])
            .unwrap()
            .with_baseline(vec![10.0])
            .unwrap();
        close(m.final_accuracy(), 80.0);
        close(m.average_incremental_accuracy(), 80.0);
        assert_eq!(m.average_forgetting(), None);
        assert_eq!(m.backward_transfer(), None);
        assert_eq!(m.forward_transfer(), None);
        assert!(m.final_forgetting_per_task().is_empty());
        let json = serde_json::to_value(Summary::from(&m, None, Costs::default())).unwrap();
        assert!(json["forgetting"].is_null() && json["bwt"].is_null());
        assert!(json["fwt"].is_null() && json["ece"].is_null());
        assert_eq!(json["acc"], 80.0);
    }

    #[test]
    fn matrix_is_validated_and_round_trips() {
        assert_eq!(
            AccuracyMatrix::from_rows("x", vec![]),
            Err(MetricsError::EmptyMatrix)
        );
        assert!(matches!(
            AccuracyMatrix::from_rows("x", vec![vec![1.0, 2.0], vec![3.0]]),
            Err(MetricsError::NotSquare { row: 1, .. })
        ));
        assert!(matches!(
            AccuracyMatrix::from_rows("x", vec![vec![f64::NAN]]),
            Err(MetricsError::BadAccuracy { .. })
        ));
        assert!(matches!(
            AccuracyMatrix::from_rows("x", vec![vec![101.0]]),
            Err(MetricsError::BadAccuracy { .. })
        ));
        assert!(toy().clone().with_baseline(vec![1.0]).is_err());

        let mut m = AccuracyMatrix::zeros("class-il", 2).unwrap();
        m.set_row(0, &[90.0, 5.0]).unwrap();
        m.set(1, 1, 88.0).unwrap();
        assert!(m.set(2, 0, 1.0).is_err());
        assert!(m.set_row(1, &[1.0]).is_err());
        assert_eq!(m.get(1, 1), Some(88.0));

        let json = serde_json::to_string(&toy()).unwrap();
        assert!(json.contains("\"accuracy\":[[90.0,10.0,20.0]"), "{json}");
        assert_eq!(
            serde_json::from_str::<AccuracyMatrix>(&json).unwrap(),
            toy()
        );
        let bad = r#"{"eval_mode":"task-il","accuracy":[[1.0,2.0]]}"#;
        let err = serde_json::from_str::<AccuracyMatrix>(bad).unwrap_err();
        assert!(err.to_string().contains("not square"), "{err}");
    }

    #[test]
    fn ece_is_zero_when_calibrated() {
        // 10 samples at confidence 0.8, exactly 8 correct: acc = conf in the one bin.
        let mut s: Vec<(f64, bool)> = (0..10).map(|j| (0.8, j < 8)).collect();
        close(ece(&s).unwrap(), 0.0);
        // Add a second calibrated bin: 4 samples at 0.25, one correct.
        s.extend((0..4).map(|j| (0.25, j == 0)));
        close(ece(&s).unwrap(), 0.0);
    }

    #[test]
    fn ece_of_constant_confidence_is_the_gap() {
        // Confidence 0.9 everywhere, 60% correct: ECE = |0.9 − 0.6| = 0.3 → 30 percent.
        let s: Vec<(f64, bool)> = (0..10).map(|j| (0.9, j < 6)).collect();
        close(ece(&s).unwrap(), 30.0);
        // Two bins: (0.9, 6/10 correct) and (0.3, 3/10 correct); weights 1/2 each:
        // 0.5·|0.6 − 0.9| + 0.5·|0.3 − 0.3| = 0.15 → 15 percent.
        let mut s2 = s.clone();
        s2.extend((0..10).map(|j| (0.3, j < 3)));
        close(ece(&s2).unwrap(), 15.0);
    }

    #[test]
    fn ece_bins_are_right_closed_and_the_first_includes_zero() {
        let bins = calibration_bins(&[(0.0, false), (1.0, true), (0.5, true)]).unwrap();
        assert_eq!(bins.len(), 15);
        assert_eq!(bins[0].count, 1);
        assert_eq!(bins[14].count, 1);
        // 0.5 ∈ (7/15, 8/15].
        assert_eq!(bins[7].count, 1);
        assert!(ece(&[]).is_err());
        assert!(ece(&[(1.5, true)]).is_err());
        assert!(ece(&[(f64::NAN, true)]).is_err());
    }

    #[test]
    fn masked_accuracy_uses_only_allowed_classes() {
        // Two samples, four classes; task 1 owns classes {2, 3}.
        let logits = [5.0, 0.0, 1.0, 2.0, /* */ 0.0, 9.0, 3.0, 1.0];
        let labels = [3, 2];
        let all = ClassMask::all(4);
        let task = ClassMask::only(4, &[2, 3]).unwrap();
        // Unmasked: predictions 0 and 1, both wrong.
        close(masked_accuracy(&logits, 4, &labels, &all).unwrap(), 0.0);
        // Task-IL mask: predictions 3 and 2, both right.
        close(masked_accuracy(&logits, 4, &labels, &task).unwrap(), 100.0);
        // Class-IL over the first three classes seen: predictions 0 and 1.
        let seen = ClassMask::range(4, 0..3).unwrap();
        close(masked_accuracy(&logits, 4, &labels, &seen).unwrap(), 0.0);
        let half = masked_accuracy(&logits, 4, &labels, &ClassMask::only(4, &[0, 3]).unwrap());
        close(half.unwrap(), 0.0);
        let one = masked_accuracy(&logits, 4, &labels, &ClassMask::only(4, &[2]).unwrap());
        close(one.unwrap(), 50.0);

        assert!(ClassMask::only(4, &[4]).is_err());
        assert!(ClassMask::range(4, 2..5).is_err());
        assert!(masked_accuracy(&logits, 3, &labels, &all).is_err());
        assert!(masked_accuracy(&logits, 4, &[3], &all).is_err());
        assert!(masked_accuracy(&logits, 4, &[3, 7], &all).is_err());
        assert!(masked_accuracy(&logits, 4, &labels, &ClassMask::only(4, &[]).unwrap()).is_err());
        assert!(masked_accuracy(&[f32::NAN, 0.0], 2, &[0], &ClassMask::all(2)).is_err());
        // A non-finite logit outside the mask is ignored.
        let ok = masked_accuracy(
            &[f32::NAN, 1.0],
            2,
            &[1],
            &ClassMask::only(2, &[1]).unwrap(),
        );
        close(ok.unwrap(), 100.0);
    }

    #[test]
    fn confidence_comes_from_the_masked_logits() {
        // Classes {0, 1} tie, classes 2, 3 are huge but masked out: confidence 0.5, not ~0.
        let logits = [0.0, 0.0, 100.0, 100.0];
        let mask = ClassMask::only(4, &[0, 1]).unwrap();
        let p = masked_predictions(&logits, 4, &mask).unwrap();
        assert_eq!(p[0].0, 0);
        close(p[0].1, 0.5);
        // Label 0: correct at confidence 0.5 → ECE = |1 − 0.5| = 50 percent.
        close(ece_from_logits(&logits, 4, &[0], &mask).unwrap(), 50.0);
        // Softmax is stable for large logits: [1000, 1000 + ln 3] → confidence 0.75.
        let big = [1000.0f32, 1000.0 + 3f32.ln()];
        let p = masked_predictions(&big, 2, &ClassMask::all(2)).unwrap();
        assert_eq!(p[0].0, 1);
        assert!((p[0].1 - 0.75).abs() < 1e-4, "{}", p[0].1);
    }
}
