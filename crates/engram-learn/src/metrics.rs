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
//! fraction), as the card says. The multi-label F1 scores at the end are the exception:
//! fractions in [0, 1], as the multi-label literature reports them (Ker-VLJEPA's 0.429).

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
    #[error("{scores} scores do not split into rows of {classes} classes")]
    ScoreShape { scores: usize, classes: usize },
    #[error("{labels} multi-hot labels for {scores} scores (one label per sample and class)")]
    MultiLabelCount { labels: usize, scores: usize },
    #[error("multi-hot label {value} of sample {sample}, class {class} is not 0 or 1")]
    BadMultiLabel {
        sample: usize,
        class: usize,
        value: u8,
    },
    #[error("score {value} of sample {sample}, class {class} is not finite")]
    NonFiniteScore {
        sample: usize,
        class: usize,
        value: f32,
    },
    #[error("{thresholds} thresholds for {classes} classes (one per class)")]
    ThresholdCount { thresholds: usize, classes: usize },
    #[error("threshold of class {class} is NaN")]
    NanThreshold { class: usize },
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

// ---------------------------------------------------------------------------------------
// Multi-label F1 and per-class decision thresholds (Ker-VLJEPA's step 5, card
// `methods/robustness_safety.md`, "Ker-VLJEPA parts"). Scores are row-major, samples ×
// classes; labels are multi-hot (0 or 1) in the same layout; a sample is predicted positive
// for class c when its score is ≥ the class's threshold.

/// F1 of a multi-label prediction, fractions in [0, 1].
///
/// Per class: F1_c = 2·TP/(2·TP + FP + FN). A class with no positives and no predicted
/// positives (TP + FP + FN = 0) scores 0, scikit-learn's `zero_division=0` convention, and
/// still counts in the macro average. Macro-F1 is the unweighted mean of the per-class F1;
/// micro-F1 is F1 of the counts pooled over all classes (0 when they are all 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelF1 {
    pub per_class: Vec<f64>,
    pub macro_f1: f64,
    pub micro_f1: f64,
}

/// True positives, false positives and false negatives of one class (or pooled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Counts {
    /// F1 as the exact fraction (2·TP, 2·TP + FP + FN); (0, 1) when nothing is positive.
    fn ratio(&self) -> (u128, u128) {
        let den = 2 * self.tp as u128 + self.fp as u128 + self.fn_ as u128;
        if den == 0 {
            (0, 1)
        } else {
            (2 * self.tp as u128, den)
        }
    }

    fn f1(&self) -> f64 {
        let (n, d) = self.ratio();
        n as f64 / d as f64
    }
}

/// Checks scores and multi-hot labels (shape, finiteness, 0/1) and returns the sample count.
fn check_multilabel(scores: &[f32], labels: &[u8], classes: usize) -> Result<usize, MetricsError> {
    if classes == 0 || !scores.len().is_multiple_of(classes) {
        return Err(MetricsError::ScoreShape {
            scores: scores.len(),
            classes,
        });
    }
    if labels.len() != scores.len() {
        return Err(MetricsError::MultiLabelCount {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if scores.is_empty() {
        return Err(MetricsError::NoSamples("multi-label F1"));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(MetricsError::NonFiniteScore {
            sample: i / classes,
            class: i % classes,
            value: scores[i],
        });
    }
    if let Some(i) = labels.iter().position(|&l| l > 1) {
        return Err(MetricsError::BadMultiLabel {
            sample: i / classes,
            class: i % classes,
            value: labels[i],
        });
    }
    Ok(scores.len() / classes)
}

/// Per-class, macro and micro F1 of `scores` (samples × `classes`, row-major) against the
/// multi-hot `labels` (same layout, 0 or 1), predicting positive where score ≥
/// `thresholds[class]` (pass `&[0.5; C]` for the usual fixed threshold). Non-finite scores,
/// NaN thresholds and mismatched lengths are errors. See [`MultiLabelF1`] for the formulas.
pub fn multilabel_f1(
    scores: &[f32],
    labels: &[u8],
    classes: usize,
    thresholds: &[f32],
) -> Result<MultiLabelF1, MetricsError> {
    check_multilabel(scores, labels, classes)?;
    if thresholds.len() != classes {
        return Err(MetricsError::ThresholdCount {
            thresholds: thresholds.len(),
            classes,
        });
    }
    if let Some(c) = thresholds.iter().position(|t| t.is_nan()) {
        return Err(MetricsError::NanThreshold { class: c });
    }
    let mut counts = vec![Counts::default(); classes];
    for (row, lab) in scores
        .chunks_exact(classes)
        .zip(labels.chunks_exact(classes))
    {
        for (c, k) in counts.iter_mut().enumerate() {
            match (row[c] >= thresholds[c], lab[c] == 1) {
                (true, true) => k.tp += 1,
                (true, false) => k.fp += 1,
                (false, true) => k.fn_ += 1,
                (false, false) => {}
            }
        }
    }
    let per_class: Vec<f64> = counts.iter().map(Counts::f1).collect();
    let pooled = counts.iter().fold(Counts::default(), |a, k| Counts {
        tp: a.tp + k.tp,
        fp: a.fp + k.fp,
        fn_: a.fn_ + k.fn_,
    });
    Ok(MultiLabelF1 {
        macro_f1: mean(per_class.iter().copied()),
        micro_f1: pooled.f1(),
        per_class,
    })
}

/// The threshold engram starts from and prefers among equally good ones.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Per-class decision thresholds that maximise each class's F1 on these (validation) rows;
/// tune on validation scores, then pass the result to [`multilabel_f1`] on test scores.
///
/// Exact search: a threshold only matters through which scores it keeps, so per class the
/// candidates are 0.5, the lowest score (every sample positive) and the midpoint between each
/// pair of consecutive distinct scores (computed in f64 and rounded to f32, kept strictly
/// above the lower score). Threshold "above every score" is not a candidate: it gives F1 0,
/// which another candidate always matches. Among candidates of equal F1 (compared as exact
/// fractions) the one closest to 0.5 wins, 0.5 itself when it is optimal, the higher one at
/// equal distance; so a class with no positives in these rows keeps 0.5. Because macro-F1 is a
/// mean of per-class F1 that each depend only on their own threshold, these thresholds also
/// maximise macro-F1 on these rows, and never score below the fixed 0.5 there.
pub fn tune_thresholds(
    scores: &[f32],
    labels: &[u8],
    classes: usize,
) -> Result<Vec<f32>, MetricsError> {
    let rows = check_multilabel(scores, labels, classes)?;
    Ok((0..classes)
        .map(|c| {
            let col: Vec<(f32, bool)> = (0..rows)
                .map(|r| (scores[r * classes + c], labels[r * classes + c] == 1))
                .collect();
            best_threshold(col)
        })
        .collect())
}

/// The best threshold of one class's (score, positive) column (see [`tune_thresholds`]).
fn best_threshold(mut col: Vec<(f32, bool)>) -> f32 {
    let positives = col.iter().filter(|p| p.1).count() as u64;
    let counts_at = |kept_pos: u64, kept: u64| Counts {
        tp: kept_pos,
        fp: kept - kept_pos,
        fn_: positives - kept_pos,
    };
    let half = DEFAULT_THRESHOLD;
    let (hp, hn) = col.iter().fold((0u64, 0u64), |(p, n), &(s, y)| {
        if s >= half {
            (p + y as u64, n + 1)
        } else {
            (p, n)
        }
    });
    let mut best = (counts_at(hp, hn).ratio(), half);
    let mut consider = |ratio: (u128, u128), t: f32| {
        let (b, bt) = best;
        // ratio > b, exactly: n/d > bn/bd.
        let (l, r) = (ratio.0 * b.1, b.0 * ratio.1);
        let dist = |t: f32| (t as f64 - half as f64).abs();
        if l > r || (l == r && dist(t) < dist(bt)) {
            best = (ratio, t);
        }
    };
    // Descending scores: after each group of equal scores, the kept set is "score ≥ v" for
    // the group's value v, reached by any threshold in (next lower score, v].
    col.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut kept, mut kept_pos) = (0u64, 0u64);
    let mut i = 0;
    while i < col.len() {
        let v = col[i].0;
        while i < col.len() && col[i].0 == v {
            kept += 1;
            kept_pos += col[i].1 as u64;
            i += 1;
        }
        let t = match col.get(i) {
            Some(&(w, _)) => {
                let m = ((v as f64 + w as f64) / 2.0) as f32;
                if m > w { m } else { v }
            }
            None => v,
        };
        consider(counts_at(kept_pos, kept).ratio(), t);
    }
    best.1
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

#[cfg(test)]
mod multilabel_tests {
    use super::*;
    use engram_weights::rng::Rng;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    /// Two classes, four samples (scores, labels), row-major.
    const SCORES: [f32; 8] = [0.9, 0.2, 0.6, 0.7, 0.4, 0.1, 0.3, 0.8];
    const LABELS: [u8; 8] = [1, 0, 0, 1, 1, 0, 0, 0];

    #[test]
    fn f1_by_hand() {
        let f = multilabel_f1(&SCORES, &LABELS, 2, &[0.5, 0.5]).unwrap();
        // Class 0: predicted [1, 1, 0, 0] vs [1, 0, 1, 0]: TP 1, FP 1, FN 1 → 2/4.
        // Class 1: predicted [0, 1, 0, 1] vs [0, 1, 0, 0]: TP 1, FP 1, FN 0 → 2/3.
        close(f.per_class[0], 0.5);
        close(f.per_class[1], 2.0 / 3.0);
        close(f.macro_f1, 7.0 / 12.0);
        // Pooled: TP 2, FP 2, FN 1 → 4/7.
        close(f.micro_f1, 4.0 / 7.0);
        // A class with no positives and none predicted scores 0 and counts in the mean.
        let f = multilabel_f1(&[0.9, 0.1, 0.2, 0.3], &[1, 0, 0, 0], 2, &[0.5, 0.5]).unwrap();
        assert_eq!(f.per_class, vec![1.0, 0.0]);
        close(f.macro_f1, 0.5);
        close(f.micro_f1, 1.0);
    }

    #[test]
    fn thresholds_by_hand() {
        let t = tune_thresholds(&SCORES, &LABELS, 2).unwrap();
        // Class 0, descending 0.9(+) 0.6(−) 0.4(+) 0.3(−): keeping the top three gives TP 2,
        // FP 1 → 4/5, reached by thresholds in (0.3, 0.4]: the midpoint 0.35.
        assert!((t[0] - 0.35).abs() < 1e-6, "{}", t[0]);
        // Class 1, 0.8(−) 0.7(+) 0.2(−) 0.1(−): the top two (2/3) is best, and 0.5 keeps
        // exactly them, so 0.5 stays.
        assert_eq!(t[1], 0.5);
        let f = multilabel_f1(&SCORES, &LABELS, 2, &t).unwrap();
        assert_eq!(f.per_class[0], 0.8);
        close(f.macro_f1, (0.8 + 2.0 / 3.0) / 2.0);
        // No positives at all: every threshold gives 0, so 0.5 stays.
        assert_eq!(
            tune_thresholds(&[0.9, 0.1, 0.7], &[0, 0, 0], 1).unwrap(),
            vec![0.5]
        );
        // Adjacent f32 scores: the midpoint rounds onto one of them; the threshold must still
        // keep the upper score and drop the lower one.
        let lo = 0.3f32;
        let hi = f32::from_bits(lo.to_bits() + 1);
        let t = tune_thresholds(&[hi, lo], &[1, 0], 1).unwrap();
        assert!(hi >= t[0] && lo < t[0], "{} {} {}", lo, t[0], hi);
    }

    /// F1 of one class at threshold `t`, the slow way.
    fn f1_at(scores: &[f32], labels: &[u8], classes: usize, c: usize, t: f32) -> f64 {
        let mut th = vec![0.5; classes];
        th[c] = t;
        multilabel_f1(scores, labels, classes, &th)
            .unwrap()
            .per_class[c]
    }

    #[test]
    fn tuned_thresholds_are_optimal_on_their_rows() {
        for seed in 0..20u64 {
            let mut rng = Rng::new(seed);
            let (rows, classes) = (1 + rng.below(40), 1 + rng.below(4));
            // Scores on a coarse grid, so that ties occur.
            let scores: Vec<f32> = (0..rows * classes)
                .map(|_| rng.below(21) as f32 / 20.0)
                .collect();
            let labels: Vec<u8> = (0..rows * classes)
                .map(|_| (rng.uniform() < 0.3) as u8)
                .collect();
            let t = tune_thresholds(&scores, &labels, classes).unwrap();
            let tuned = multilabel_f1(&scores, &labels, classes, &t).unwrap();
            let fixed = multilabel_f1(&scores, &labels, classes, &vec![0.5; classes]).unwrap();
            assert!(tuned.macro_f1 >= fixed.macro_f1, "seed {seed}");
            for c in 0..classes {
                // Every threshold that matters: each score, just above it, and beyond both ends.
                let mut cands = vec![f32::NEG_INFINITY, f32::INFINITY, 0.5];
                for r in 0..rows {
                    let s = scores[r * classes + c];
                    cands.extend([s, s + 0.025]);
                }
                let best = cands
                    .iter()
                    .map(|&x| f1_at(&scores, &labels, classes, c, x))
                    .fold(0.0, f64::max);
                assert_eq!(tuned.per_class[c], best, "seed {seed}, class {c}");
            }
        }
    }

    #[test]
    fn tune_on_validation_evaluate_on_test() {
        // A model whose scores are too low for class 0 (positives near 0.3, negatives near
        // 0.1) and well calibrated for class 1: 0.5 misses class 0 entirely; thresholds tuned
        // on one draw carry over to another.
        let draw = |seed: u64, n: usize| {
            let mut rng = Rng::new(seed);
            let (mut s, mut l) = (Vec::new(), Vec::new());
            for _ in 0..n {
                for centre in [(0.3f32, 0.1f32), (0.8, 0.2)] {
                    let y = rng.uniform() < 0.4;
                    let m = if y { centre.0 } else { centre.1 };
                    s.push(m + 0.05 * rng.normal());
                    l.push(y as u8);
                }
            }
            (s, l)
        };
        let (vs, vl) = draw(1, 400);
        let (ts, tl) = draw(2, 400);
        let t = tune_thresholds(&vs, &vl, 2).unwrap();
        assert!(t[0] > 0.15 && t[0] < 0.25, "{t:?}");
        let fixed = multilabel_f1(&ts, &tl, 2, &[0.5, 0.5]).unwrap();
        let tuned = multilabel_f1(&ts, &tl, 2, &t).unwrap();
        assert_eq!(fixed.per_class[0], 0.0);
        assert!(tuned.per_class[0] > 0.95, "{tuned:?}");
        assert!(tuned.macro_f1 > fixed.macro_f1 + 0.4, "{fixed:?} {tuned:?}");
    }

    #[test]
    fn bad_input_is_named() {
        let e = |r: Result<MultiLabelF1, MetricsError>| r.unwrap_err().to_string();
        let ok = [0.5f32; 4];
        assert!(e(multilabel_f1(&ok[..3], &[0; 3], 2, &[0.5; 2])).contains("rows of 2"));
        assert!(e(multilabel_f1(&ok, &[0; 3], 2, &[0.5; 2])).contains("3 multi-hot labels"));
        assert!(e(multilabel_f1(&ok, &[0, 0, 2, 0], 2, &[0.5; 2])).contains("sample 1, class 0"));
        let nan = [0.5, 0.5, 0.5, f32::NAN];
        assert!(e(multilabel_f1(&nan, &[0; 4], 2, &[0.5; 2])).contains("sample 1, class 1"));
        assert!(e(multilabel_f1(&ok, &[0; 4], 2, &[0.5; 3])).contains("3 thresholds"));
        assert!(e(multilabel_f1(&ok, &[0; 4], 2, &[0.5, f32::NAN])).contains("class 1"));
        assert!(e(multilabel_f1(&[], &[], 2, &[0.5; 2])).contains("no samples"));
        assert!(e(multilabel_f1(&ok, &[0; 4], 0, &[])).contains("rows of 0"));
        assert!(tune_thresholds(&nan, &[0; 4], 2).is_err());
        assert!(tune_thresholds(&[], &[], 2).is_err());
        // Infinite thresholds are allowed: nothing (or everything) positive.
        let f = multilabel_f1(&ok, &[1; 4], 2, &[f32::INFINITY, f32::NEG_INFINITY]).unwrap();
        assert_eq!(f.per_class, vec![0.0, 1.0]);
    }
}
