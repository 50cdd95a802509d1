//! Multi-label classification for Ker-VLJEPA's per-class decision thresholds (arXiv 2603.23308;
//! card `shared/methods/robustness_safety.md`, "Ker-VLJEPA parts", step 5).
//!
//! The task: each example is a 2×2 grid of image cells (56×56 from Fashion-MNIST's 28×28
//! items), each cell empty (zeros) or holding one item; the labels are the classes present
//! (multi-hot). The card's sketch puts two items of different classes side by side (28×56);
//! engram uses the 2×2 grid of issue 22, with 1 to 4 items whose classes may repeat, so that
//! the number of labels varies and per-class thresholds have something to fix.
//!
//! [`grids`] builds grids from a pool of source images that the caller chooses, so that
//! train, validation and test grids can be kept apart; [`standard_split`] is the usual
//! choice (train and validation grids from disjoint parts of Fashion-MNIST's train images,
//! test grids from its test images). [`fit`] trains a network of the crate's models with
//! sigmoid outputs and binary cross-entropy, with Adam; [`MultiLabelNet::scores`] gives the
//! probabilities that [`crate::metrics::multilabel_f1`] and
//! [`crate::metrics::tune_thresholds`] read.

use crate::data::{Dataset, Split};
use crate::model::{ModelConfig, Net};
use crate::optim::{OptimConfig, OptimKind};
use crate::train::fused::Optimizer;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;

/// Cells per grid (2×2).
pub const CELLS: usize = 4;

/// Which items a grid holds: a count drawn uniformly from `min_items..=max_items`, placed in
/// that many distinct cells chosen uniformly, each an image drawn uniformly (with
/// replacement) from the pool, so classes may repeat within a grid and an image may appear
/// in several grids. The other cells are zeros.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GridOptions {
    #[serde(default = "default_min_items")]
    pub min_items: usize,
    #[serde(default = "default_max_items")]
    pub max_items: usize,
}

fn default_min_items() -> usize {
    GridOptions::DEFAULT.min_items
}
fn default_max_items() -> usize {
    GridOptions::DEFAULT.max_items
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions::DEFAULT
    }
}

impl GridOptions {
    /// 1 to 4 items per grid.
    pub const DEFAULT: GridOptions = GridOptions {
        min_items: 1,
        max_items: CELLS,
    };

    pub fn validate(&self) -> Result<()> {
        if self.min_items > self.max_items || self.max_items > CELLS {
            return Err(err!(
                "grid min-items = {} and max-items = {} must satisfy min-items ≤ max-items ≤ {CELLS}",
                self.min_items,
                self.max_items
            ));
        }
        Ok(())
    }
}

/// Grids and their multi-hot labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Grids {
    /// count × side² pixels: each grid a row-major side × side image.
    pub x: Vec<f32>,
    /// count × classes, 1 where the class is present in the grid.
    pub y: Vec<u8>,
    /// Side of a grid (twice the source images' side: 56 for Fashion-MNIST).
    pub side: usize,
    pub classes: usize,
    /// For each grid and cell (row-major: top-left, top-right, bottom-left, bottom-right), the
    /// index in the source data set of the image placed there, `None` for an empty cell.
    pub sources: Vec<[Option<usize>; CELLS]>,
}

impl Grids {
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Pixels per grid (side²).
    pub fn dim(&self) -> usize {
        self.side * self.side
    }

    /// Pixels of grid `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim()..(i + 1) * self.dim()]
    }

    /// Multi-hot labels of grid `i`.
    pub fn labels(&self, i: usize) -> &[u8] {
        &self.y[i * self.classes..(i + 1) * self.classes]
    }
}

/// The cell side of `source`: its images must be one-channel squares.
fn cell_side(source: &Dataset) -> Result<usize> {
    source.check()?;
    match source.image {
        Some((1, h, w)) if h == w && h > 0 => Ok(h),
        other => Err(err!(
            "grids: data set {} must hold one-channel square images, got shape {other:?}",
            source.name
        )),
    }
}

/// `count` grids built from the images `pool` (indices into `source`) with `opts`, drawn
/// from `seed`. `source` must hold one-channel square images (side s); grids are 2s × 2s and
/// have `source.num_classes` labels. The same inputs give the same grids.
pub fn grids(
    source: &Dataset,
    pool: &[usize],
    count: usize,
    opts: &GridOptions,
    seed: u64,
) -> Result<Grids> {
    make_grids(
        source,
        pool,
        count,
        opts,
        &mut Rng::keyed(seed, "multilabel-grids", 0),
    )
}

fn make_grids(
    source: &Dataset,
    pool: &[usize],
    count: usize,
    opts: &GridOptions,
    rng: &mut Rng,
) -> Result<Grids> {
    opts.validate()?;
    let s = cell_side(source)?;
    if count == 0 {
        return Err(err!("grids: count must be at least 1"));
    }
    if let Some(&i) = pool.iter().find(|&&i| i >= source.len()) {
        return Err(err!(
            "grids: pool index {i} is outside data set {} ({} images)",
            source.name,
            source.len()
        ));
    }
    if pool.is_empty() && opts.max_items > 0 {
        return Err(err!("grids: the pool of source images is empty"));
    }
    let (side, classes) = (2 * s, source.num_classes);
    let dim = side * side;
    let (mut x, mut y) = (vec![0f32; count * dim], vec![0u8; count * classes]);
    let mut sources = Vec::with_capacity(count);
    let all: Vec<usize> = (0..CELLS).collect();
    for g in 0..count {
        let k = opts.min_items + rng.below(opts.max_items - opts.min_items + 1);
        let mut cells = [None; CELLS];
        for cell in rng.choose_sorted(&all, k) {
            let img = pool[rng.below(pool.len())];
            cells[cell] = Some(img);
            y[g * classes + source.y[img] as usize] = 1;
            let (top, left) = ((cell / 2) * s, (cell % 2) * s);
            let src = source.row(img);
            for r in 0..s {
                let at = g * dim + (top + r) * side + left;
                x[at..at + s].copy_from_slice(&src[r * s..(r + 1) * s]);
            }
        }
        sources.push(cells);
    }
    Ok(Grids {
        x,
        y,
        side,
        classes,
        sources,
    })
}

/// How many grids [`standard_split`] makes, and how many of the train images it keeps apart
/// as the validation grids' sources.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SplitSizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub val_sources: usize,
}

impl Default for SplitSizes {
    /// 20,000 train, 5,000 validation and 5,000 test grids; 10,000 of the train images are
    /// the validation grids' sources.
    fn default() -> Self {
        SplitSizes {
            train: 20_000,
            val: 5_000,
            test: 5_000,
            val_sources: 10_000,
        }
    }
}

/// Train, validation and test grids, and which train images each of the first two drew from.
#[derive(Clone, Debug, PartialEq)]
pub struct GridSplit {
    pub train: Grids,
    pub val: Grids,
    pub test: Grids,
    /// Indices into `data.train` the train grids drew from (ascending).
    pub train_pool: Vec<usize>,
    /// Indices into `data.train` the validation grids drew from (ascending; disjoint from
    /// `train_pool`).
    pub val_pool: Vec<usize>,
}

/// The usual split: `data.train`'s images are split at random (from `seed`) into
/// `sizes.val_sources` validation sources and the rest as train sources; test grids draw from
/// all of `data.test`. So no source image is shared between train, validation and test grids.
pub fn standard_split(
    data: &Split,
    sizes: &SplitSizes,
    opts: &GridOptions,
    seed: u64,
) -> Result<GridSplit> {
    let n = data.train.len();
    if sizes.val_sources == 0 || sizes.val_sources >= n {
        return Err(err!(
            "grids: val-sources = {} must be between 1 and the train images less one ({})",
            sizes.val_sources,
            n.saturating_sub(1)
        ));
    }
    for (key, v) in [
        ("train", sizes.train),
        ("val", sizes.val),
        ("test", sizes.test),
    ] {
        if v == 0 {
            return Err(err!("grids: {key} (number of grids) must be at least 1"));
        }
    }
    let order = Rng::keyed(seed, "multilabel-pools", 0).permutation(n);
    let mut val_pool: Vec<usize> = order[..sizes.val_sources]
        .iter()
        .map(|&i| i as usize)
        .collect();
    let mut train_pool: Vec<usize> = order[sizes.val_sources..]
        .iter()
        .map(|&i| i as usize)
        .collect();
    val_pool.sort_unstable();
    train_pool.sort_unstable();
    let test_pool: Vec<usize> = (0..data.test.len()).collect();
    let rng = |i| Rng::keyed(seed, "multilabel-grids", i);
    Ok(GridSplit {
        train: make_grids(&data.train, &train_pool, sizes.train, opts, &mut rng(1))?,
        val: make_grids(&data.train, &val_pool, sizes.val, opts, &mut rng(2))?,
        test: make_grids(&data.test, &test_pool, sizes.test, opts, &mut rng(3))?,
        train_pool,
        val_pool,
    })
}

/// Training settings: the network, epochs over the train grids, batch size, Adam's learning
/// rate (every other Adam setting at [`OptimConfig::DEFAULT`]) and the seed of the initial
/// weights and batch order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MultiLabelConfig {
    #[serde(default = "default_model")]
    pub model: ModelConfig,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_model() -> ModelConfig {
    MultiLabelConfig::default().model
}
fn default_epochs() -> usize {
    MultiLabelConfig::default().epochs
}
fn default_batch() -> usize {
    MultiLabelConfig::default().batch
}
fn default_lr() -> f64 {
    MultiLabelConfig::default().lr
}

impl Default for MultiLabelConfig {
    /// An MLP with one hidden layer of 256, 3 epochs of batches of 128, Adam at 1e-3: a
    /// moderately good model, whose decision scores thresholds can still improve.
    fn default() -> Self {
        MultiLabelConfig {
            model: ModelConfig::Mlp { hidden: vec![256] },
            epochs: 3,
            batch: 128,
            lr: 1e-3,
            seed: 0,
        }
    }
}

impl MultiLabelConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.check()?;
        if self.model.has_batchnorm() {
            return Err(err!(
                "multilabel model: a network with BatchNorm (bn-cnn) is not supported; use \
                 mlp, resmlp, cnn or vit"
            ));
        }
        if self.epochs == 0 {
            return Err(err!("multilabel epochs must be at least 1"));
        }
        if self.batch == 0 {
            return Err(err!("multilabel batch must be at least 1"));
        }
        OptimConfig::new(OptimKind::Adam, self.lr)
            .validate()
            .map_err(|e| err!("multilabel lr: {e}"))
    }
}

/// Where [`fit`] is: after optimizer step `step` (1-based) of `steps`, in epoch `epoch`
/// (0-based), with the batch loss before that step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitProgress {
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
}

/// A trained multi-label network.
#[derive(Clone, Debug)]
pub struct MultiLabelNet {
    pub config: MultiLabelConfig,
    net: Net,
    side: usize,
    classes: usize,
    /// Mean training loss (binary cross-entropy per output) of each epoch.
    pub epoch_losses: Vec<f64>,
}

/// Binary cross-entropy of logits `z` against targets `y` in [0, 1], element-wise, in the
/// stable form max(z, 0) − z·y + ln(1 + e^(−|z|)) (no overflow for large |z|).
pub fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    z.clone().clamp_min(0.0) - z.clone() * y + z.abs().neg().exp().log1p()
}

/// A batch of grid rows `idx` as input and target tensors.
fn batch_of(g: &Grids, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
    let (d, c) = (g.dim(), g.classes);
    let mut x = Vec::with_capacity(idx.len() * d);
    let mut y = Vec::with_capacity(idx.len() * c);
    for &i in idx {
        x.extend_from_slice(g.row(i));
        y.extend(g.labels(i).iter().map(|&v| v as f32));
    }
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), d]), device),
        Tensor::from_data(TensorData::new(y, [idx.len(), c]), device),
    )
}

/// Trains `cfg.model` on `train` with the mean binary cross-entropy over every grid and
/// class, Adam at `cfg.lr`, `cfg.epochs` passes in an order drawn from `cfg.seed` (the last
/// batch of an epoch may be smaller); `progress` after each step. Same settings and grids:
/// same network.
pub fn fit(
    cfg: &MultiLabelConfig,
    train: &Grids,
    progress: &mut dyn FnMut(FitProgress),
) -> Result<MultiLabelNet> {
    cfg.validate()?;
    if train.is_empty() || train.classes == 0 {
        return Err(err!("multilabel fit: no training grids or no classes"));
    }
    let (dim, classes) = (train.dim(), train.classes);
    let image = Some((1, train.side, train.side));
    cfg.model.check_size(dim, image, classes, cfg.batch)?;
    let device = Device::flex().autodiff();
    let mut net = {
        let _g = crate::backend::seeded(&device, cfg.seed);
        cfg.model.build(dim, image, classes, &device)?
    };
    let adam = OptimConfig::new(OptimKind::Adam, cfg.lr);
    let mut opt = Optimizer::new(&adam);
    let n = train.len();
    let per_epoch = n.div_ceil(cfg.batch);
    let steps = per_epoch * cfg.epochs;
    let mut epoch_losses = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let order: Vec<usize> = Rng::keyed(cfg.seed, "multilabel-order", epoch as u64)
            .permutation(n)
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let mut total = 0.0;
        for idx in order.chunks(cfg.batch) {
            let (x, y) = batch_of(train, idx, &device);
            let loss = bce_with_logits(net.forward(x), y).mean();
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(err!(
                    "multilabel fit: the loss is {value} at step {} (lr = {} too high?)",
                    step + 1,
                    cfg.lr
                ));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = opt.step(cfg.lr, net, grads);
            step += 1;
            total += value * idx.len() as f64;
            progress(FitProgress {
                epoch,
                step,
                steps,
                loss: value,
            });
        }
        epoch_losses.push(total / n as f64);
    }
    Ok(MultiLabelNet {
        config: cfg.clone(),
        net: net.valid(),
        side: train.side,
        classes,
        epoch_losses,
    })
}

/// Grids per forward pass when scoring.
const SCORE_BATCH: usize = 256;

impl MultiLabelNet {
    /// The network (without autodiff).
    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Pixels per grid the network reads (side²).
    pub fn dim(&self) -> usize {
        self.side * self.side
    }

    /// Sigmoid probabilities of every class for grids `x` (row-major, `dim()` pixels each):
    /// grids × classes, row-major, batches of 256.
    pub fn scores(&self, x: &[f32]) -> Result<Vec<f32>> {
        let d = self.dim();
        if !x.len().is_multiple_of(d) {
            return Err(err!(
                "multilabel scores: {} values do not split into grids of {d} pixels",
                x.len()
            ));
        }
        let device = Device::flex();
        let mut out = Vec::with_capacity(x.len() / d * self.classes);
        for b in x.chunks(SCORE_BATCH * d) {
            let t = Tensor::<2>::from_data(TensorData::new(b.to_vec(), [b.len() / d, d]), &device);
            let p = burn::tensor::activation::sigmoid(self.net.forward(t));
            out.extend(crate::backend::host(p));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::multilabel_f1;

    /// `n` images of side `s`, image i filled with the value (i + 1) / 1000 so that every
    /// image is distinct, of class i % classes.
    fn fixture(n: usize, s: usize, classes: usize) -> Dataset {
        Dataset {
            name: "fixture".into(),
            x: (0..n)
                .flat_map(|i| std::iter::repeat_n((i + 1) as f32 / 1000.0, s * s))
                .collect(),
            y: (0..n).map(|i| (i % classes) as u32).collect(),
            dim: s * s,
            image: Some((1, s, s)),
            num_classes: classes,
        }
    }

    #[test]
    fn labels_are_the_classes_placed() {
        let (s, classes) = (3, 5);
        let ds = fixture(40, s, classes);
        let pool: Vec<usize> = (0..40).step_by(3).collect();
        let g = grids(&ds, &pool, 200, &GridOptions::default(), 7).unwrap();
        assert_eq!((g.len(), g.side, g.dim()), (200, 6, 36));
        assert_eq!((g.x.len(), g.y.len()), (200 * 36, 200 * classes));
        let mut counts = [0usize; CELLS + 1];
        for i in 0..g.len() {
            let mut want = vec![0u8; classes];
            let mut placed = 0;
            for (cell, src) in g.sources[i].iter().enumerate() {
                // Read the cell back from the pixels: a constant value names the image.
                let (top, left) = ((cell / 2) * s, (cell % 2) * s);
                let v = g.row(i)[top * g.side + left];
                for r in 0..s {
                    for c in 0..s {
                        assert_eq!(g.row(i)[(top + r) * g.side + left + c], v);
                    }
                }
                match src {
                    Some(img) => {
                        assert!(pool.contains(img));
                        let found = (v * 1000.0).round() as usize - 1;
                        assert_eq!(found, *img);
                        want[ds.y[found] as usize] = 1;
                        placed += 1;
                    }
                    None => assert_eq!(v, 0.0),
                }
            }
            assert_eq!(g.labels(i), &want[..]);
            counts[placed] += 1;
        }
        // 1 to 4 items, each count drawn.
        assert_eq!(counts[0], 0);
        assert!(counts[1..].iter().all(|&c| c > 20), "{counts:?}");
        // Fixed counts.
        let two = GridOptions {
            min_items: 2,
            max_items: 2,
        };
        let g = grids(&ds, &pool, 50, &two, 1).unwrap();
        assert!(g.sources.iter().all(|c| c.iter().flatten().count() == 2));
    }

    #[test]
    fn grids_are_deterministic() {
        let ds = fixture(30, 4, 3);
        let pool: Vec<usize> = (0..30).collect();
        let o = GridOptions::default();
        let a = grids(&ds, &pool, 20, &o, 3).unwrap();
        assert_eq!(a, grids(&ds, &pool, 20, &o, 3).unwrap());
        assert_ne!(a, grids(&ds, &pool, 20, &o, 4).unwrap());
    }

    #[test]
    fn bad_grid_input_is_named() {
        let ds = fixture(10, 4, 3);
        let o = GridOptions::default();
        let e = |r: Result<Grids>| r.unwrap_err().to_string();
        assert!(e(grids(&ds, &[3, 10], 5, &o, 0)).contains("pool index 10"));
        assert!(e(grids(&ds, &[], 5, &o, 0)).contains("pool"));
        assert!(e(grids(&ds, &[1], 0, &o, 0)).contains("count"));
        let bad = GridOptions {
            min_items: 3,
            max_items: 2,
        };
        assert!(e(grids(&ds, &[1], 5, &bad, 0)).contains("min-items"));
        let five = GridOptions {
            min_items: 0,
            max_items: 5,
        };
        assert!(e(grids(&ds, &[1], 5, &five, 0)).contains("max-items"));
        let mut flat = ds.clone();
        flat.image = None;
        assert!(e(grids(&flat, &[1], 5, &o, 0)).contains("square images"));
        // Empty grids are allowed when asked for.
        let none = GridOptions {
            min_items: 0,
            max_items: 0,
        };
        let g = grids(&ds, &[], 3, &none, 0).unwrap();
        assert!(g.x.iter().all(|&v| v == 0.0) && g.y.iter().all(|&v| v == 0));
    }

    #[test]
    fn standard_split_keeps_sources_apart() {
        let data = Split {
            train: fixture(60, 3, 4),
            test: fixture(20, 3, 4),
            files: vec![],
            meta: Default::default(),
        };
        let sizes = SplitSizes {
            train: 40,
            val: 30,
            test: 25,
            val_sources: 15,
        };
        let sp = standard_split(&data, &sizes, &GridOptions::default(), 9).unwrap();
        assert_eq!((sp.train.len(), sp.val.len(), sp.test.len()), (40, 30, 25));
        assert_eq!((sp.train_pool.len(), sp.val_pool.len()), (45, 15));
        assert!(sp.val_pool.iter().all(|i| !sp.train_pool.contains(i)));
        let used =
            |g: &Grids| -> Vec<usize> { g.sources.iter().flatten().flatten().copied().collect() };
        assert!(used(&sp.train).iter().all(|i| sp.train_pool.contains(i)));
        assert!(used(&sp.val).iter().all(|i| sp.val_pool.contains(i)));
        // Test grids hold test images: their pixel values are those of data.test.
        for i in 0..sp.test.len() {
            for (cell, src) in sp.test.sources[i].iter().enumerate() {
                if let Some(img) = src {
                    let (top, left) = ((cell / 2) * 3, (cell % 2) * 3);
                    assert_eq!(sp.test.row(i)[top * 6 + left], data.test.row(*img)[0]);
                }
            }
        }
        assert_eq!(
            sp,
            standard_split(&data, &sizes, &GridOptions::default(), 9).unwrap()
        );
        let mut bad = sizes.clone();
        bad.val_sources = 60;
        let e = standard_split(&data, &bad, &GridOptions::default(), 9).unwrap_err();
        assert!(e.to_string().contains("val-sources"));
        bad.val_sources = 10;
        bad.test = 0;
        let e = standard_split(&data, &bad, &GridOptions::default(), 9).unwrap_err();
        assert!(e.to_string().contains("test"));
    }

    #[test]
    fn bce_with_logits_is_stable() {
        let device = Device::flex();
        let z = Tensor::<2>::from_data(
            TensorData::new(vec![1000.0f32, 1000.0, -1000.0, -1000.0, 0.0, 2.0], [3, 2]),
            &device,
        );
        let y = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0], [3, 2]),
            &device,
        );
        let l = crate::backend::host(bce_with_logits(z, y));
        let want = [
            0.0,
            1000.0,
            1000.0,
            0.0,
            std::f32::consts::LN_2,
            (1.0 + 2f32.exp()).ln(),
        ];
        for (a, b) in l.iter().zip(want) {
            assert!(a.is_finite() && (a - b).abs() < 1e-4, "{l:?}");
        }
    }

    /// An easy task: 4×4 images, each class a bright quadrant of its own, faint noise.
    fn easy(n: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let classes = 3;
        let mut ds = fixture(n, 4, classes);
        for i in 0..n {
            let c = ds.y[i] as usize;
            for (p, v) in ds.x[i * 16..(i + 1) * 16].iter_mut().enumerate() {
                let (r, col) = (p / 4, p % 4);
                let on = match c {
                    0 => r < 2,
                    1 => col < 2,
                    _ => r == col || r + col == 3,
                };
                *v = if on { 0.9 } else { 0.1 } + 0.05 * rng.normal();
            }
        }
        ds
    }

    fn small() -> MultiLabelConfig {
        MultiLabelConfig {
            model: ModelConfig::Mlp { hidden: vec![32] },
            epochs: 8,
            batch: 32,
            lr: 3e-3,
            seed: 5,
        }
    }

    #[test]
    fn fit_learns_an_easy_task() {
        let ds = easy(90, 1);
        let train = grids(
            &ds,
            &(0..60).collect::<Vec<_>>(),
            600,
            &GridOptions::default(),
            1,
        )
        .unwrap();
        let test = grids(
            &ds,
            &(60..90).collect::<Vec<_>>(),
            300,
            &GridOptions::default(),
            2,
        )
        .unwrap();
        let mut seen = 0;
        let net = fit(&small(), &train, &mut |p| {
            seen += 1;
            assert_eq!(p.steps, 8 * 600usize.div_ceil(32));
        })
        .unwrap();
        assert_eq!(seen, 8 * 19);
        assert!(
            net.epoch_losses[7] < net.epoch_losses[0],
            "{:?}",
            net.epoch_losses
        );
        let s = net.scores(&test.x).unwrap();
        assert_eq!(s.len(), 300 * 3);
        assert!(s.iter().all(|p| (0.0..=1.0).contains(p)));
        let f = multilabel_f1(&s, &test.y, 3, &[0.5; 3]).unwrap();
        // The best constant predictor says every class is present: F1 = 2p/(1 + p) for a
        // class present in a fraction p of the grids.
        let trivial: f64 = (0..3)
            .map(|c| {
                let p = (0..300).filter(|&i| test.labels(i)[c] == 1).count() as f64 / 300.0;
                2.0 * p / (1.0 + p)
            })
            .sum::<f64>()
            / 3.0;
        assert!(
            f.macro_f1 > 0.95 && f.macro_f1 > trivial + 0.1,
            "{f:?} vs {trivial}"
        );
    }

    #[test]
    fn same_seed_same_scores() {
        let ds = easy(30, 2);
        let g = grids(
            &ds,
            &(0..30).collect::<Vec<_>>(),
            64,
            &GridOptions::default(),
            1,
        )
        .unwrap();
        let mut cfg = small();
        cfg.epochs = 2;
        let run = |cfg: &MultiLabelConfig| fit(cfg, &g, &mut |_| {}).unwrap().scores(&g.x).unwrap();
        let a = run(&cfg);
        assert_eq!(a, run(&cfg));
        cfg.seed = 6;
        assert_ne!(a, run(&cfg));
    }

    #[test]
    fn a_cnn_reads_the_grids_as_images() {
        let ds = fixture(10, 5, 3);
        let g = grids(
            &ds,
            &(0..10).collect::<Vec<_>>(),
            8,
            &GridOptions::default(),
            1,
        )
        .unwrap();
        let cfg = MultiLabelConfig {
            model: ModelConfig::Cnn {
                channels: [2, 2],
                hidden: 8,
            },
            epochs: 1,
            batch: 4,
            ..small()
        };
        let net = fit(&cfg, &g, &mut |_| {}).unwrap();
        assert_eq!(net.scores(&g.x).unwrap().len(), 8 * 3);
        assert!(net.scores(&g.x[..99]).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let ds = fixture(10, 4, 3);
        let g = grids(&ds, &[0, 1, 2], 4, &GridOptions::default(), 1).unwrap();
        let e = |cfg: MultiLabelConfig| fit(&cfg, &g, &mut |_| {}).unwrap_err().to_string();
        assert!(
            e(MultiLabelConfig {
                epochs: 0,
                ..small()
            })
            .contains("epochs")
        );
        assert!(
            e(MultiLabelConfig {
                batch: 0,
                ..small()
            })
            .contains("batch")
        );
        assert!(
            e(MultiLabelConfig {
                lr: f64::NAN,
                ..small()
            })
            .contains("lr")
        );
        assert!(
            e(MultiLabelConfig {
                lr: -1.0,
                ..small()
            })
            .contains("lr")
        );
        let bn = ModelConfig::BnCnn {
            channels: [2, 2],
            hidden: 4,
        };
        assert!(
            e(MultiLabelConfig {
                model: bn,
                ..small()
            })
            .contains("BatchNorm")
        );
        let zero = ModelConfig::Mlp { hidden: vec![0] };
        assert!(
            e(MultiLabelConfig {
                model: zero,
                ..small()
            })
            .contains("model.hidden")
        );
        // 8×8 grids are too small for the CNN: an error, not a panic.
        let cnn = ModelConfig::Cnn {
            channels: [2, 2],
            hidden: 4,
        };
        assert!(
            e(MultiLabelConfig {
                model: cnn,
                ..small()
            })
            .contains("10×10")
        );
        // Settings read from JSON refuse unknown keys and fill defaults.
        let c: MultiLabelConfig = serde_json::from_str(r#"{"epochs": 2}"#).unwrap();
        assert_eq!((c.epochs, c.batch), (2, 128));
        assert!(serde_json::from_str::<MultiLabelConfig>(r#"{"epoch": 2}"#).is_err());
    }
}
