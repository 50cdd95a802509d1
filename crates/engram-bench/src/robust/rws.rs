// Robust Weight Signatures (Cai et al., ICML 2023, arXiv 2302.12480).
// Card: shared/methods/patching.md, "Robust Weight Signatures (RWS)", small-scale experiment.

//! The RWS study: from one θ_pre (a small CNN trained on MNIST digits), a clean model θ_clean
//! fine-tuned on Fashion-MNIST and one θ_c per corruption c fine-tuned on Fashion-MNIST
//! corrupted with c (severity 5). The signatures are extracted and applied with the patch
//! machinery of `engram_weights::patch` (files on disk, as `engram patch` does), then
//! measured: the α sweep over the first 1, 2 or 4 layers, the share of θ_c's gain a patch
//! recovers (the number of layers chosen on a corrupted validation split), composition,
//! quantized patches and their size, removal, locality and transfer to a digits model.
//!
//! Choices (the card leaves them open): the projection is per tensor, as the patch module
//! does it (a layer's weight and bias each lose their own clean direction); the digits model
//! θ_digits of the transfer check is fine-tuned from θ_pre on the digits θ_pre was trained
//! on, with a seed of its own, and records θ_pre's fingerprint, as a model descending from it
//! does; the engram CNN has no BatchNorm, so the card's BN pitfall does not arise; quantized
//! patches are measured at each corruption's chosen number of layers (their sizes at every
//! number); a share of a gain is measured only where the gain is at least [`MIN_GAIN`].

use super::common::{Values, accuracy, corrupt_dataset, shapes, split_off, subset, train_values};
use anyhow::{Context, Result, bail};
use engram_ckpt::Model;
use engram_learn::data::corrupt::Corruption;
use engram_learn::data::{Dataset, Split};
use engram_learn::model::ModelConfig;
use engram_learn::model::io::{read_values, save_values};
use engram_weights::patch::{self, Patch, Selection};
use engram_weights::rng::Rng;
use engram_weights::tv::{FINGERPRINT_KEY, fingerprint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The corruptions of the study (the first two are composed).
pub const CORRUPTIONS: [Corruption; 3] = [
    Corruption::GaussianNoise,
    Corruption::MotionBlur,
    Corruption::Contrast,
];
pub const SEVERITY: usize = 5;
/// Patched layers counted from the input (the CNN has 4: conv1, conv2, fc1, fc2).
pub const KEEPS: [usize; 3] = [1, 2, 4];
pub const ALPHAS: [f64; 5] = [0.0, 0.25, 0.5, 1.0, 1.5];
/// Quantization levels, measured at each corruption's chosen number of layers.
pub const LEVELS: [u32; 3] = [256, 16, 4];
/// A gain (percentage points) below this is not a gain whose share can be measured: the
/// ratio of two accuracy differences near zero is noise.
pub const MIN_GAIN: f64 = 1.0;
const BATCH: usize = 128;
/// Share of the Fashion-MNIST training images held out to choose the number of layers.
const VALIDATION: f64 = 0.1;

fn model() -> ModelConfig {
    ModelConfig::Cnn {
        channels: [16, 32],
        hidden: 64,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RwsOptions {
    /// Fashion-MNIST training images drawn (class-balanced), validation included; also the
    /// cap on the digits θ_pre trains on.
    pub train_images: usize,
    /// Test images of each data set (class-balanced).
    pub test_images: usize,
    pub epochs: usize,
    /// Adam's learning rate, for every model.
    pub lr: f64,
    pub seed: u64,
    /// A smoke check: 1 500 training and 300 test images, 1 epoch, whatever the fields say.
    pub quick: bool,
    pub data_dir: Option<PathBuf>,
}

impl Default for RwsOptions {
    fn default() -> Self {
        RwsOptions {
            train_images: 12_000,
            test_images: 2_000,
            epochs: 3,
            lr: 1e-3,
            seed: 0,
            quick: false,
            data_dir: None,
        }
    }
}

impl RwsOptions {
    /// (training images, test images, epochs) as run.
    pub fn sizes(&self) -> (usize, usize, usize) {
        if self.quick {
            (1_500, 300, 1)
        } else {
            (self.train_images, self.test_images, self.epochs)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RwsSettings {
    pub model: String,
    pub corruptions: Vec<String>,
    pub severity: usize,
    pub keeps: Vec<usize>,
    pub alphas: Vec<f64>,
    pub levels: Vec<u32>,
    pub min_gain: f64,
    /// Fashion-MNIST images the models are fine-tuned on, and held out for validation.
    pub train_images: usize,
    pub validation_images: usize,
    pub test_images: usize,
    pub digits_train_images: usize,
    pub digits_test_images: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub seed: u64,
    pub quick: bool,
}

/// Accuracies (percent) of θ_clean + α·RWS_c over the first `keep` layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub keep: usize,
    pub alpha: f64,
    /// On the test set corrupted with c.
    pub corrupted: f64,
    /// On the clean test set.
    pub clean: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantPoint {
    pub levels: u32,
    pub keep: usize,
    pub bytes: u64,
    pub corrupted: f64,
    pub clean: f64,
    /// Share of the full-precision patch's gain (same keep, α = 1) the quantized one keeps;
    /// `None` when the full-precision patch gains less than [`MIN_GAIN`].
    pub gain_kept: Option<f64>,
}

/// θ_clean + RWS_c − RWS_c against θ_clean, over every tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    pub max_abs_diff: f64,
    pub bit_exact: bool,
}

/// θ_digits (fine-tuned from θ_pre on digits) with and without RWS_c (extracted on
/// Fashion-MNIST, best keep, α = 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// On the digits test set corrupted with c.
    pub digits_model: f64,
    pub patched: f64,
    /// On the clean digits test set.
    pub digits_model_clean: f64,
    pub patched_clean: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorruptionResult {
    pub corruption: String,
    /// θ_clean and θ_c on the corrupted test set, θ_c on the clean one.
    pub clean_model: f64,
    pub target: f64,
    pub target_clean: f64,
    pub sweep: Vec<SweepPoint>,
    /// θ_clean, θ_c, and θ_clean + RWS_c at α = 1 for each keep (in [`KEEPS`] order), on the
    /// corrupted validation split.
    pub clean_model_valid: f64,
    pub target_valid: f64,
    pub valid: Vec<f64>,
    /// The keep with the best validation accuracy (the smallest on ties).
    pub best_keep: usize,
    /// θ_clean + RWS_c at the best keep, α = 1, on the corrupted and the clean test set.
    pub patched: f64,
    pub patched_clean: f64,
    /// (patched − clean_model) / (target − clean_model); `None` when θ_c gains less than
    /// [`MIN_GAIN`].
    pub recovered: Option<f64>,
    pub quantized: Vec<QuantPoint>,
    /// ‖θ_c − θ_clean‖ / ‖θ_clean‖ per layer ([`RwsResults::layers`] order).
    pub locality: Vec<f64>,
    pub removal: Removal,
    pub transfer: Transfer,
}

/// Accuracies with the noise and blur patches applied together, each at its best keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    pub corruptions: Vec<String>,
    pub keeps: Vec<usize>,
    /// Each corruption's accuracy with its own patch alone (best keep, α = 1).
    pub single: Vec<f64>,
    pub arms: Vec<CompositionArm>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompositionArm {
    /// α_c of every patch: α/n (the card's default, α = 1) or 1.
    pub scale_each: f64,
    /// On each corruption's test set, in [`Composition::corruptions`] order.
    pub corrupted: Vec<f64>,
    pub clean: f64,
}

/// A patch file's size against the model file and the covered tensors stored in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchSize {
    pub keep: usize,
    /// `None`: full precision (F32).
    pub levels: Option<u32>,
    pub tensors: Vec<String>,
    pub params: u64,
    /// The file (its header included). The patch module stores a quantized value as one U8
    /// code whatever the levels, so L < 256 levels do not make the file smaller.
    pub bytes: u64,
    /// The values packed at ⌈log2 L⌉ bits each plus each tensor's F32 [min, max] (F32 values
    /// without levels), no header: what a packed format would store.
    pub packed_bytes: u64,
    pub full_copy_bytes: u64,
    pub model_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RwsResults {
    pub settings: RwsSettings,
    /// The model's layers in order (modules: conv1, conv2, fc1, fc2).
    pub layers: Vec<String>,
    /// θ_pre and θ_digits on the clean digits test set; θ_clean on the clean Fashion-MNIST test.
    pub pre_digits: f64,
    pub digits_model: f64,
    pub clean: f64,
    pub corruptions: Vec<CorruptionResult>,
    pub composition: Composition,
    /// Sizes of the first corruption's patches (every corruption's are the same size).
    pub sizes: Vec<PatchSize>,
    pub train_seconds: f64,
    pub seconds: f64,
}

/// The data of the study: Fashion-MNIST (θ_clean, θ_c, the signatures) and MNIST digits
/// (θ_pre, the transfer check).
pub struct RwsData {
    pub fashion: Split,
    pub digits: Split,
}

/// Share of θ_c's gain over θ_clean (accuracies in percent) that the patched model recovers;
/// `None` when the gain is below [`MIN_GAIN`] points.
pub fn recovered_share(clean: f64, patched: f64, target: f64) -> Option<f64> {
    let gain = target - clean;
    (gain >= MIN_GAIN).then(|| (patched - clean) / gain)
}

/// Bytes of `params` values in `tensors` tensors packed at ⌈log2 L⌉ bits (with an F32
/// [min, max] per tensor), or as F32 without levels.
pub fn packed_bytes(params: u64, tensors: usize, levels: Option<u32>) -> u64 {
    match levels {
        None => 4 * params,
        Some(l) => {
            let bits = u64::from(l.max(2).next_power_of_two().trailing_zeros());
            (params * bits).div_ceil(8) + 8 * tensors as u64
        }
    }
}

/// A seed of its own for each use of the study's seed.
fn sub(seed: u64, key: &str) -> u64 {
    Rng::keyed(seed, key, 0).next_u64()
}

/// Loads Fashion-MNIST and the MNIST digits, then [`run_with`].
pub fn run(o: &RwsOptions, work: &Path, progress: &mut dyn FnMut(&str)) -> Result<RwsResults> {
    let dir = o.data_dir.as_deref();
    let data = RwsData {
        fashion: engram_learn::data::load("fashion-mnist", dir)?,
        digits: engram_learn::data::load("mnist", dir)?,
    };
    run_with(o, data, work, progress)
}

/// The held-out and test sets of one corruption.
struct Sets {
    c: Corruption,
    valid: Dataset,
    test: Dataset,
    digits_test: Dataset,
}

/// The study on `data` (images of 1×28×28, the same classes in both sets); models and
/// patches are written under `work`.
pub fn run_with(
    o: &RwsOptions,
    data: RwsData,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<RwsResults> {
    let t0 = Instant::now();
    let (train_n, test_n, epochs) = o.sizes();
    let seed = o.seed;
    let per = |n: usize, ds: &Dataset| (n / ds.num_classes.max(1)).max(1);
    let (fm, dg) = (&data.fashion, &data.digits);
    let digits_train = subset(
        &dg.train,
        per(train_n, &dg.train),
        sub(seed, "digits-train"),
    );
    let digits_test = subset(&dg.test, per(test_n, &dg.test), sub(seed, "digits-test"));
    let fm_all = subset(
        &fm.train,
        per(train_n, &fm.train),
        sub(seed, "fashion-train"),
    );
    let (fm_train, fm_valid) = split_off(&fm_all, VALIDATION, sub(seed, "validation"));
    let fm_test = subset(&fm.test, per(test_n, &fm.test), sub(seed, "fashion-test"));
    if fm_valid.is_empty() || fm_train.is_empty() {
        bail!("{train_n} training images leave no validation or no training image");
    }
    let m = model();
    let train = |ds: &Dataset, start: Option<&Values>, key: &str| {
        train_values(&m, ds, start, epochs, o.lr, BATCH, sub(seed, key))
    };
    let t_train = Instant::now();
    progress("training θ_pre on the digits");
    let pre = train(&digits_train, None, "pre")?;
    progress("fine-tuning θ_clean and θ_digits");
    let clean = train(&fm_train, Some(&pre), "clean")?;
    let digits = train(&digits_train, Some(&pre), "digits")?;
    let mut targets = Vec::new();
    let mut sets = Vec::new();
    for c in CORRUPTIONS {
        let name = c.name();
        progress(&format!("fine-tuning θ_c on {name}"));
        let corrupted = |ds: &Dataset, key: &str| {
            corrupt_dataset(ds, c, SEVERITY, sub(seed, &format!("{key} {name}")))
        };
        targets.push(train(&corrupted(&fm_train, "train")?, Some(&pre), name)?);
        sets.push(Sets {
            c,
            valid: corrupted(&fm_valid, "valid")?,
            test: corrupted(&fm_test, "test")?,
            digits_test: corrupted(&digits_test, "digits-test")?,
        });
    }
    let train_seconds = t_train.elapsed().as_secs_f64();

    // Every model on disk, as `engram patch` reads them.
    let models = work.join("models");
    let patches = work.join("patches");
    // Files of an earlier run (other settings, or interrupted) are never reused: the patches
    // below are extracted from this run's models.
    for d in [&models, &patches] {
        crate::machine::remove(d)?;
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let sh = shapes(&m, &fm_train)?;
    let none = BTreeMap::new();
    let pre_path = models.join("pre.safetensors");
    save_values(&pre_path, &pre, &sh, &none)?;
    let pre_model = Model::open(&pre_path)?;
    let clean_path = models.join("clean.safetensors");
    save_values(&clean_path, &clean, &sh, &none)?;
    let clean_model = Model::open(&clean_path)?;
    // θ_digits descends from θ_pre: it records the fingerprint, so the patches accept it.
    let digits_path = models.join("digits.safetensors");
    let descends = BTreeMap::from([(FINGERPRINT_KEY.to_string(), fingerprint(&pre_model))]);
    save_values(&digits_path, &digits, &sh, &descends)?;
    let layers = modules(&pre_model);
    let tmp = work.join("patched.safetensors");

    let clean_acc = accuracy(&m, &clean, &fm_test)?;
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    // (best-keep patch, accuracy alone) of each corruption, for composition.
    let mut best = Vec::new();
    for (set, target) in sets.iter().zip(&targets) {
        let name = set.c.name();
        progress(&format!("extracting and measuring the {name} patches"));
        let target_path = models.join(format!("{name}.safetensors"));
        save_values(&target_path, target, &sh, &none)?;
        let target_model = Model::open(&target_path)?;
        let model_bytes = std::fs::metadata(&target_path)?.len();
        // Sizes are recorded for the first corruption's patches, every keep and level.
        let first = out.is_empty();
        let mut extract = |keep: usize, levels: Option<u32>| -> Result<PathBuf> {
            let file = match levels {
                None => format!("{name}-k{keep}.safetensors"),
                Some(l) => format!("{name}-k{keep}-L{l}.safetensors"),
            };
            let path = patches.join(file);
            if path.is_file() {
                return Ok(path);
            }
            let sel = Selection {
                include: Vec::new(),
                first_layers: Some(keep),
            };
            let rep = patch::extract(
                &pre_model,
                Some(&clean_model),
                &target_model,
                &sel,
                levels,
                &path,
                &none,
                &|_| {},
            )
            .with_context(|| format!("extracting {}", path.display()))?;
            if first {
                sizes.push(PatchSize {
                    keep,
                    levels,
                    packed_bytes: packed_bytes(rep.params, rep.tensors.len(), levels),
                    tensors: rep.tensors,
                    params: rep.params,
                    bytes: rep.bytes,
                    full_copy_bytes: rep.full_copy_bytes,
                    model_bytes,
                });
            }
            Ok(path)
        };
        let fp: Vec<PathBuf> = KEEPS
            .iter()
            .map(|&k| extract(k, None))
            .collect::<Result<_>>()?;
        if first {
            for k in KEEPS {
                for l in LEVELS {
                    extract(k, Some(l))?;
                }
            }
        }

        let clean_model_acc = accuracy(&m, &clean, &set.test)?;
        let mut sweep = Vec::new();
        let mut valid = Vec::new();
        for (&keep, p) in KEEPS.iter().zip(&fp) {
            for &alpha in &ALPHAS {
                if alpha == 0.0 {
                    // Scale 0 is θ_clean itself (the patch module refuses it).
                    sweep.push(SweepPoint {
                        keep,
                        alpha,
                        corrupted: clean_model_acc,
                        clean: clean_acc,
                    });
                    continue;
                }
                let v = patched(&clean_path, &[(p, alpha as f32)], &tmp)?;
                sweep.push(SweepPoint {
                    keep,
                    alpha,
                    corrupted: accuracy(&m, &v, &set.test)?,
                    clean: accuracy(&m, &v, &fm_test)?,
                });
                if alpha == 1.0 {
                    valid.push(accuracy(&m, &v, &set.valid)?);
                }
            }
        }
        let bi = best_index(&valid);
        let best_keep = KEEPS[bi];
        let at = |keep: usize| {
            sweep
                .iter()
                .find(|s| s.keep == keep && s.alpha == 1.0)
                .cloned()
                .context("no α = 1 point")
        };
        let chosen = at(best_keep)?;
        let target_acc = accuracy(&m, target, &set.test)?;

        let mut quantized = Vec::new();
        for levels in LEVELS {
            let p = extract(best_keep, Some(levels))?;
            let v = patched(&clean_path, &[(&p, 1.0)], &tmp)?;
            let corrupted = accuracy(&m, &v, &set.test)?;
            quantized.push(QuantPoint {
                levels,
                keep: best_keep,
                bytes: std::fs::metadata(&p)?.len(),
                corrupted,
                clean: accuracy(&m, &v, &fm_test)?,
                gain_kept: recovered_share(clean_model_acc, corrupted, chosen.corrupted),
            });
        }

        // Removal: apply, then remove from the patched file.
        let bp = &fp[bi];
        let applied = work.join("applied.safetensors");
        apply_to(&clean_path, &[(bp, 1.0)], 1.0, &applied)?;
        apply_to(&applied, &[(bp, 1.0)], -1.0, &tmp)?;
        let back = read_values(&tmp)?;
        remove(&applied)?;
        remove(&tmp)?;
        let removal = compare(&clean, &back)?;

        let transfer = {
            let v = patched(&digits_path, &[(bp, 1.0)], &tmp)?;
            Transfer {
                digits_model: accuracy(&m, &digits, &set.digits_test)?,
                patched: accuracy(&m, &v, &set.digits_test)?,
                digits_model_clean: accuracy(&m, &digits, &digits_test)?,
                patched_clean: accuracy(&m, &v, &digits_test)?,
            }
        };

        best.push((bp.clone(), chosen.corrupted));
        out.push(CorruptionResult {
            corruption: name.to_string(),
            clean_model: clean_model_acc,
            target: target_acc,
            target_clean: accuracy(&m, target, &fm_test)?,
            sweep,
            clean_model_valid: accuracy(&m, &clean, &set.valid)?,
            target_valid: accuracy(&m, target, &set.valid)?,
            valid,
            best_keep,
            patched: chosen.corrupted,
            patched_clean: chosen.clean,
            recovered: recovered_share(clean_model_acc, chosen.corrupted, target_acc),
            quantized,
            locality: locality(&layers, &clean, target)?,
            removal,
            transfer,
        });
    }

    progress("composing the noise and blur patches");
    let n = 2;
    let mut arms = Vec::new();
    for scale_each in [1.0 / n as f64, 1.0] {
        let ps: Vec<(&Path, f32)> = best[..n]
            .iter()
            .map(|(p, _)| (p.as_path(), scale_each as f32))
            .collect();
        let v = patched(&clean_path, &ps, &tmp)?;
        arms.push(CompositionArm {
            scale_each,
            corrupted: sets[..n]
                .iter()
                .map(|s| accuracy(&m, &v, &s.test))
                .collect::<Result<_>>()?,
            clean: accuracy(&m, &v, &fm_test)?,
        });
    }
    let composition = Composition {
        corruptions: out[..n].iter().map(|r| r.corruption.clone()).collect(),
        keeps: out[..n].iter().map(|r| r.best_keep).collect(),
        single: best[..n].iter().map(|b| b.1).collect(),
        arms,
    };

    Ok(RwsResults {
        settings: RwsSettings {
            model: format!("{m:?}"),
            corruptions: CORRUPTIONS.iter().map(|c| c.name().to_string()).collect(),
            severity: SEVERITY,
            keeps: KEEPS.to_vec(),
            alphas: ALPHAS.to_vec(),
            levels: LEVELS.to_vec(),
            min_gain: MIN_GAIN,
            train_images: fm_train.len(),
            validation_images: fm_valid.len(),
            test_images: fm_test.len(),
            digits_train_images: digits_train.len(),
            digits_test_images: digits_test.len(),
            epochs,
            lr: o.lr,
            batch: BATCH,
            seed,
            quick: o.quick,
        },
        layers,
        pre_digits: accuracy(&m, &pre, &digits_test)?,
        digits_model: accuracy(&m, &digits, &digits_test)?,
        clean: clean_acc,
        corruptions: out,
        composition,
        sizes,
        train_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The index of the largest value, the first on ties.
fn best_index(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b
}

/// The modules (tensor names without their last part) of `m`, in model order.
fn modules(m: &Model) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in Selection::default().select(m) {
        let module = name.rsplit_once('.').map_or(name.as_str(), |(a, _)| a);
        if out.last().is_none_or(|l| l != module) {
            out.push(module.to_string());
        }
    }
    out
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

/// Applies (sign 1) or removes (sign −1) `patches` with their scales to the model at
/// `model`, writing `out`.
fn apply_to(model: &Path, patches: &[(&Path, f32)], sign: f32, out: &Path) -> Result<()> {
    let target = Model::open(model)?;
    let ps = patches
        .iter()
        .map(|(p, a)| Ok((Patch::open(p)?, *a)))
        .collect::<Result<Vec<_>>>()?;
    patch::apply(&target, &ps, sign, false, out, &BTreeMap::new(), &|_| {})
        .with_context(|| format!("patching {}", model.display()))?;
    Ok(())
}

/// The values of the model at `model` with `patches` applied (written to `tmp`, then removed).
fn patched(model: &Path, patches: &[(&Path, f32)], tmp: &Path) -> Result<Values> {
    apply_to(model, patches, 1.0, tmp)?;
    let v = read_values(tmp)?;
    remove(tmp)?;
    Ok(v)
}

/// The largest absolute difference between `a` and `b` (the same tensors), and whether they
/// are equal bit for bit.
fn compare(a: &Values, b: &Values) -> Result<Removal> {
    let mut max = 0f64;
    let mut exact = a.len() == b.len();
    for (k, x) in a {
        let y = b
            .get(k)
            .with_context(|| format!("{k} missing after removal"))?;
        exact &= x.len() == y.len();
        for (p, q) in x.iter().zip(y) {
            max = max.max((p - q).abs() as f64);
            exact &= p.to_bits() == q.to_bits();
        }
    }
    Ok(Removal {
        max_abs_diff: max,
        bit_exact: exact,
    })
}

/// ‖θ_c − θ_clean‖ / ‖θ_clean‖ over each layer's tensors.
fn locality(layers: &[String], clean: &Values, target: &Values) -> Result<Vec<f64>> {
    layers
        .iter()
        .map(|l| {
            let (mut d, mut n) = (0f64, 0f64);
            for (k, x) in clean
                .iter()
                .filter(|(k, _)| k.rsplit_once('.').map(|p| p.0) == Some(l))
            {
                let y = target.get(k).with_context(|| format!("{k} missing"))?;
                for (p, q) in x.iter().zip(y) {
                    d += ((q - p) as f64).powi(2);
                    n += (*p as f64).powi(2);
                }
            }
            Ok(if n > 0.0 { d.sqrt() / n.sqrt() } else { 0.0 })
        })
        .collect()
}

pub(super) fn pct(x: f64) -> String {
    format!("{x:.1}")
}

pub(super) fn share(x: Option<f64>) -> String {
    x.map_or("n/a (gain < 1 point)".into(), |s| {
        format!("{:.0} %", 100.0 * s)
    })
}

/// The card's claims, judged: (claim, holds, what was measured).
pub fn verdicts(r: &RwsResults) -> Vec<(String, bool, String)> {
    let cs = &r.corruptions;
    let each = |f: &dyn Fn(&CorruptionResult) -> String| {
        cs.iter()
            .map(|c| format!("{} {}", c.corruption, f(c)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // Corruptions without a measurable gain (below MIN_GAIN) have nothing to recover: they are
    // left out of the first and third claims, which need at least one corruption to judge.
    let judged = |f: &dyn Fn(&CorruptionResult) -> Option<f64>, at_least: f64| {
        let shares: Vec<f64> = cs.iter().filter_map(f).collect();
        !shares.is_empty() && shares.iter().all(|&s| s >= at_least)
    };
    let mut v = Vec::new();
    v.push((
        "A signature at α = 1 recovers ≥ 50 % of each corruption's gain (θ_c over θ_clean on \
         the corrupted test set; layers chosen on validation; corruptions where θ_c gains \
         under 1 point left out)"
            .to_string(),
        judged(&|c| c.recovered, 0.5),
        each(&|c| {
            format!(
                "{} (keep {}: {} → {}, θ_c {})",
                share(c.recovered),
                c.best_keep,
                pct(c.clean_model),
                pct(c.patched),
                pct(c.target)
            )
        }),
    ));
    let comp = &r.composition;
    let full = comp.arms.iter().find(|a| a.scale_each == 1.0);
    let split = comp.arms.iter().find(|a| a.scale_each != 1.0);
    let losses: Vec<f64> = full.map_or(Vec::new(), |a| {
        comp.single
            .iter()
            .zip(&a.corrupted)
            .map(|(s, c)| s - c)
            .collect()
    });
    let mut detail: Vec<String> = comp
        .corruptions
        .iter()
        .zip(&losses)
        .map(|(n, l)| format!("{n} loses {l:.1} points"))
        .collect();
    if let Some(a) = split {
        detail.push(format!(
            "with α_c = {} each: {}",
            a.scale_each,
            a.corrupted
                .iter()
                .map(|x| pct(*x))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    v.push((
        "Composing the noise and blur signatures (α_c = 1 each) loses little: each \
         corruption's accuracy within 5 points of its own signature alone"
            .to_string(),
        !losses.is_empty() && losses.iter().all(|&l| l <= 5.0),
        detail.join("; "),
    ));
    v.push((
        "A signature quantized to L = 16 levels keeps ≥ 80 % of the full-precision gain \
         (α = 1, layers chosen on validation; gains under 1 point left out)"
            .into(),
        judged(
            &|c| {
                c.quantized
                    .iter()
                    .find(|q| q.levels == 16)
                    .and_then(|q| q.gain_kept)
            },
            0.8,
        ),
        each(&|c| {
            let q = c.quantized.iter().find(|q| q.levels == 16);
            share(q.and_then(|q| q.gain_kept))
        }),
    ));
    let exact = cs.iter().filter(|c| c.removal.bit_exact).count();
    let worst = cs
        .iter()
        .map(|c| c.removal.max_abs_diff)
        .fold(0.0, f64::max);
    v.push((
        "Removing a signature restores θ_clean (within 1e-5)".into(),
        !cs.is_empty() && worst <= 1e-5,
        format!(
            "max |Δ| {worst:.2e}; bit-exact for {exact} of {} corruptions",
            cs.len()
        ),
    ));
    let mean: Vec<f64> = (0..r.layers.len())
        .map(|i| cs.iter().map(|c| c.locality[i]).sum::<f64>() / cs.len().max(1) as f64)
        .collect();
    v.push((
        "Robustness is local: ‖θ_c − θ_clean‖/‖θ_clean‖ falls with depth (mean over \
         corruptions, layer by layer)"
            .into(),
        mean.len() > 1 && mean.windows(2).all(|w| w[1] <= w[0]),
        r.layers
            .iter()
            .zip(&mean)
            .map(|(l, x)| format!("{l} {x:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    v.push((
        "Signatures transfer: RWS_c from Fashion-MNIST raises a digits model's accuracy on \
         digits corrupted with c"
            .into(),
        !cs.is_empty()
            && cs
                .iter()
                .all(|c| c.transfer.patched > c.transfer.digits_model),
        each(&|c| {
            format!(
                "{} → {}",
                pct(c.transfer.digits_model),
                pct(c.transfer.patched)
            )
        }),
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data set of `n` 1×28×28 images in 10 classes: class k is a bright bar at a place of
    /// its own (`rows`: horizontal bars, else vertical), with seeded noise.
    fn bars(name: &str, n: usize, rows: bool, seed: u64) -> Dataset {
        let mut rng = Rng::keyed(seed, name, 0);
        let mut x = vec![0f32; n * 784];
        let y: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        for i in 0..n {
            let at = 2 + 2 * y[i] as usize;
            for a in 0..28 {
                for b in at..at + 2 {
                    let (r, c) = if rows { (b, a) } else { (a, b) };
                    x[i * 784 + r * 28 + c] = 0.6 + 0.4 * rng.uniform();
                }
            }
        }
        Dataset {
            name: name.into(),
            x,
            y,
            dim: 784,
            image: Some((1, 28, 28)),
            num_classes: 10,
        }
    }

    fn data() -> RwsData {
        let split = |name: &str, rows| Split {
            train: bars(name, 200, rows, 1),
            test: bars(name, 60, rows, 2),
            files: Vec::new(),
            meta: Default::default(),
        };
        RwsData {
            fashion: split("fashion", false),
            digits: split("digits", true),
        }
    }

    /// The study on the real data (`cargo test -p engram-bench robust -- --ignored`):
    /// `ENGRAM_RWS_FULL=1` runs the default sizes, otherwise `--quick`'s.
    #[test]
    #[ignore = "reads Fashion-MNIST and the MNIST digits"]
    fn on_real_data() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let o = RwsOptions {
            quick: std::env::var("ENGRAM_RWS_FULL").is_err(),
            ..RwsOptions::default()
        };
        let r = run(&o, dir.path(), &mut |m| eprintln!("{m}"))?;
        eprintln!("{}", serde_json::to_string_pretty(&r)?);
        for v in verdicts(&r) {
            eprintln!("{v:?}");
        }
        assert!(
            r.clean > 20.0 && r.pre_digits > 20.0,
            "{} {}",
            r.clean,
            r.pre_digits
        );
        assert!(r.corruptions.iter().all(|c| c.removal.max_abs_diff <= 1e-5));
        Ok(())
    }

    #[test]
    fn recovered_share_is_the_gain_ratio() {
        assert_eq!(recovered_share(50.0, 60.0, 70.0), Some(0.5));
        assert_eq!(recovered_share(50.0, 45.0, 70.0), Some(-0.25));
        assert_eq!(recovered_share(50.0, 60.0, 50.5), None);
        assert_eq!(recovered_share(50.0, 50.0, 51.0), Some(0.0));
        assert_eq!(recovered_share(50.0, 60.0, 40.0), None);
        assert_eq!(best_index(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(packed_bytes(100, 2, None), 400);
        assert_eq!(packed_bytes(100, 2, Some(256)), 116);
        assert_eq!(packed_bytes(100, 2, Some(16)), 66);
        assert_eq!(packed_bytes(100, 2, Some(5)), 54);
        assert_eq!(packed_bytes(100, 2, Some(4)), 41);
    }

    #[test]
    fn pipeline_runs_and_verdicts_follow_the_numbers() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let o = RwsOptions {
            train_images: 200,
            test_images: 60,
            epochs: 1,
            lr: 3e-3,
            ..RwsOptions::default()
        };
        let mut said = 0;
        let r = run_with(&o, data(), dir.path(), &mut |_| said += 1)?;
        assert!(said >= 5);
        assert_eq!(r.layers, ["conv1", "conv2", "fc1", "fc2"]);
        assert_eq!(r.settings.validation_images, 20);
        assert_eq!(r.corruptions.len(), 3);
        for c in &r.corruptions {
            assert_eq!(c.sweep.len(), KEEPS.len() * ALPHAS.len());
            for s in c.sweep.iter().filter(|s| s.alpha == 0.0) {
                assert_eq!((s.corrupted, s.clean), (c.clean_model, r.clean));
            }
            let all = c.sweep.iter().flat_map(|s| [s.corrupted, s.clean]);
            assert!(all.chain([c.target]).all(|a| (0.0..=100.0).contains(&a)));
            assert_eq!(c.valid.len(), KEEPS.len());
            assert!(KEEPS.contains(&c.best_keep));
            assert_eq!(c.locality.len(), 4);
            assert!(c.locality.iter().all(|&x| x > 0.0 && x.is_finite()));
            assert!(c.removal.max_abs_diff <= 1e-5, "{:?}", c.removal);
            assert_eq!(c.quantized.len(), LEVELS.len());
        }
        // Patches grow with the layers they cover and shrink with fewer levels.
        let size = |keep, levels| {
            r.sizes
                .iter()
                .find(|s| s.keep == keep && s.levels == levels)
                .map(|s| (s.bytes, s.tensors.clone(), s.model_bytes))
        };
        let (b1, t1, model_bytes) = size(1, None).context("keep 1")?;
        let (b2, _, _) = size(2, None).context("keep 2")?;
        let (b4, t4, _) = size(4, None).context("keep 4")?;
        assert_eq!(t1, ["conv1.bias", "conv1.weight"]);
        assert_eq!(t4.len(), 8);
        assert!(b1 < b2 && b2 < b4 && b4 <= model_bytes + 4096);
        let (q16, _, _) = size(2, Some(16)).context("L 16")?;
        assert!(q16 * 3 < b2, "{q16} vs {b2}");
        let packed = |l| {
            r.sizes
                .iter()
                .find(|s| s.keep == 2 && s.levels == l)
                .map(|s| s.packed_bytes)
        };
        assert!(packed(Some(4)) < packed(Some(16)) && packed(Some(16)) < packed(Some(256)));
        assert!(packed(Some(256)) < packed(None));
        assert_eq!(r.composition.arms.len(), 2);
        assert_eq!(r.composition.arms[0].scale_each, 0.5);
        assert_eq!(r.sizes.len(), KEEPS.len() * (1 + LEVELS.len()));
        let q = dir.path().join("patches/gaussian_noise-k1-L4.safetensors");
        assert!(q.is_file());
        for c in &r.corruptions {
            assert!(c.quantized.iter().all(|q| q.keep == c.best_keep));
        }
        assert!(!dir.path().join("patched.safetensors").exists());

        // The verdicts read the numbers: removal holds; breaking it flips that verdict only.
        let v = verdicts(&r);
        assert_eq!(v.len(), 6);
        assert!(v[3].1, "{:?}", v[3]);
        let mut bad = r.clone();
        bad.corruptions[0].removal.max_abs_diff = 1e-3;
        let w = verdicts(&bad);
        assert!(!w[3].1);
        assert_eq!(
            v.iter().map(|x| x.1).collect::<Vec<_>>()[..3],
            w.iter().map(|x| x.1).collect::<Vec<_>>()[..3]
        );
        // Recovery and quantization verdicts follow hand-set numbers.
        let mut good = r.clone();
        for c in &mut good.corruptions {
            (c.clean_model, c.patched, c.target) = (40.0, 55.0, 60.0);
            c.recovered = recovered_share(40.0, 55.0, 60.0);
            c.quantized.iter_mut().for_each(|q| q.gain_kept = Some(0.9));
            c.locality = vec![0.4, 0.3, 0.2, 0.1];
            c.transfer.patched = c.transfer.digits_model + 1.0;
        }
        good.composition.single = vec![70.0, 70.0];
        good.composition.arms[1].corrupted = vec![66.0, 71.0];
        assert!(verdicts(&good).iter().all(|x| x.1), "{:?}", verdicts(&good));
        // A corruption without a gain is left out of the recovery claim, but not all of them.
        good.corruptions[0].recovered = None;
        assert!(verdicts(&good)[0].1);
        let mut none = good.clone();
        none.corruptions.iter_mut().for_each(|c| c.recovered = None);
        assert!(!verdicts(&none)[0].1);
        good.corruptions[2].recovered = Some(0.49);
        good.corruptions[1].quantized[1].gain_kept = Some(0.7);
        good.corruptions[0].locality = vec![0.1, 0.3, 0.9, 0.9];
        good.composition.arms[1].corrupted = vec![64.0, 71.0];
        good.corruptions[1].transfer.patched = good.corruptions[1].transfer.digits_model;
        assert!(verdicts(&good).iter().filter(|x| x.1).count() == 1);

        // JSON round trip and the report section.
        let back: RwsResults = serde_json::from_value(serde_json::to_value(&r)?)?;
        assert_eq!(back, r);
        let mut p = engram_report::html::Page::new("t");
        super::super::rws_page::section(&r, &mut p);
        let html = p.render();
        assert!(html.contains("Robust Weight Signatures") && html.contains("motion_blur"));
        Ok(())
    }
}
