// Ker-VLJEPA (arXiv 2603.23308): anisotropy of embeddings and PCA whitening.
// Card: shared/methods/robustness_safety.md, "Ker-VLJEPA parts" (steps 1–2).

//! The `whiten` part of `engram bench binary`: how anisotropic two kinds of learned features
//! are, and what PCA whitening (engram-weights [`embed`](engram_weights::embed)) does to them.
//!
//! - **CNN features**: the penultimate features of a CNN trained on Fashion-MNIST; the
//!   whitening is fitted on features of training images and measured on them and on test
//!   images; d′ compares same-class with other-class pairs.
//! - **Language-model features**: a character language model (the Deep Ignorance model's
//!   shape, [`engram_learn::model::char_lm`]) trained on Shakespeare; each line's final
//!   hidden state averaged over its characters; half the lines fit the whitening, the other
//!   half measure it; d′ compares same-play with other-play pairs.
//!
//! Measures ([`engram_weights::embed::anisotropy`]): c̄, the mean cosine between distinct rows;
//! d′, the separation of matched-pair cosines from non-matched ones (the card's engram
//! definition); and the effective dimensionality (participation ratio of the covariance's
//! eigenvalues), which the issue also calls d′. The card's claim: |c̄| < 0.01 after
//! whitening, and d′ rises (paper: c̄ 0.949 → −0.001, d′ 1.36 → 16.03).

use super::{Ctx, PartOut, Verdict};
use crate::Progress;
use crate::machine::spread;
use crate::robust::common::{accuracy, subset, train_values};
use anyhow::{Context, Result, bail};
use engram_learn::data::shakespeare;
use engram_learn::lm::{Fit, Lm, TextSet, mean_hidden};
use engram_learn::model::ModelConfig;
use engram_learn::model::char_lm::CharLmConfig;
use engram_learn::optim::{OptimConfig, OptimKind, Schedule};
use engram_report::html::Page;
use engram_weights::embed::{Anisotropy, Whitening, anisotropy};
use engram_weights::rng::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// Bumped when a change to this file changes the numbers a cached unit holds.
const UNIT: u32 = 1;
/// The card's claim: |c̄| below this after whitening.
const FLAT: f64 = 0.01;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub cnn: ModelConfig,
    /// Training images per class for the CNN.
    pub train_per_class: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    /// Training images whose features fit the whitening (per class).
    pub fit_per_class: usize,
    /// Test images whose features measure it (per class).
    pub eval_per_class: usize,
    pub lm: CharLmConfig,
    pub lm_fit: Fit,
    /// Lines drawn (half fit, half measure), at least `min_line` bytes each.
    pub lines: usize,
    pub min_line: usize,
    /// Whitening: components kept and ε on the spectrum.
    pub k: usize,
    pub eps: f64,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            cnn: ModelConfig::Cnn {
                channels: [32, 64],
                hidden: 128,
            },
            train_per_class: if quick { 200 } else { 2000 },
            epochs: if quick { 1 } else { 3 },
            lr: 1e-3,
            batch: 64,
            fit_per_class: if quick { 100 } else { 1000 },
            eval_per_class: if quick { 50 } else { 200 },
            lm: CharLmConfig {
                d_model: 128,
                layers: 2,
                heads: 4,
                context: 128,
            },
            lm_fit: Fit {
                steps: if quick { 40 } else { 400 },
                batch: 32,
                window: 128,
                optim: OptimConfig {
                    schedule: Schedule::Cosine,
                    ..OptimConfig::new(OptimKind::Adam, 3e-3)
                },
                ascend: false,
            },
            lines: if quick { 400 } else { 2000 },
            min_line: 30,
            k: 32,
            eps: 1e-5,
        }
    }
}

/// c̄, d′ and the effective dimensionality of one set of rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measure {
    pub mean_cos: f64,
    pub d_prime: Option<f64>,
    pub eff_dim: f64,
}

impl From<&Anisotropy> for Measure {
    fn from(a: &Anisotropy) -> Measure {
        Measure {
            mean_cos: a.mean_cos,
            d_prime: a.d_prime,
            eff_dim: a.eff_dim,
        }
    }
}

/// One kind of features, before and after whitening, on the fitting rows and held-out rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Features {
    pub dim: usize,
    pub fit_rows: usize,
    pub eval_rows: usize,
    /// Share of the fitting rows' variance in the kept components.
    pub retained: f64,
    pub fit_before: Measure,
    pub fit_after: Measure,
    pub eval_before: Measure,
    pub eval_after: Measure,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SeedResult {
    pub seed: u64,
    pub cnn: Features,
    /// The CNN's test accuracy (percent) on the measured images.
    pub cnn_accuracy: f64,
    pub lm: Features,
    /// Plays the drawn lines come from.
    pub plays: usize,
    pub seconds: f64,
}

/// Fits the whitening on `fit` and measures both sets before and after.
pub fn measure(
    fit: (&[f32], &[u32]),
    eval: (&[f32], &[u32]),
    dim: usize,
    k: usize,
    eps: f64,
) -> Result<Features> {
    let (nf, ne) = (fit.1.len(), eval.1.len());
    let w = Whitening::fit(fit.0, nf, dim, k, eps)?;
    let m = |x: &[f32], y: &[u32], d: usize| -> Result<Measure> {
        Ok(Measure::from(&anisotropy(x, y.len(), d, Some(y))?))
    };
    Ok(Features {
        dim,
        fit_rows: nf,
        eval_rows: ne,
        retained: w.retained,
        fit_before: m(fit.0, fit.1, dim)?,
        fit_after: m(&w.apply(fit.0, nf)?, fit.1, k)?,
        eval_before: m(eval.0, eval.1, dim)?,
        eval_after: m(&w.apply(eval.0, ne)?, eval.1, k)?,
    })
}

fn cnn_features(
    z: &Settings,
    sp: &engram_learn::data::Split,
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Features, f64)> {
    let train = subset(&sp.train, z.train_per_class, seed);
    progress(Progress::Message(format!(
        "whiten: CNN on {} Fashion-MNIST images, {} epochs (seed {seed})",
        train.len(),
        z.epochs
    )));
    let values = train_values(&z.cnn, &train, None, z.epochs, z.lr, z.batch, seed)?;
    // The fitting rows are training images the CNN saw; the measured rows are test images.
    let fit = subset(&train, z.fit_per_class, seed ^ 1);
    let eval = subset(&sp.test, z.eval_per_class, seed);
    let (fx, dim) = engram_learn::eval::values_features(&z.cnn, &values, &fit)?;
    let (ex, _) = engram_learn::eval::values_features(&z.cnn, &values, &eval)?;
    let acc = accuracy(&z.cnn, &values, &eval)?;
    let f = measure((&fx, &fit.y), (&ex, &eval.y), dim, z.k, z.eps)?;
    Ok((f, acc))
}

/// `lines` distinct lines of at least `min_line` bytes, drawn uniformly (seeded) from every
/// document, with the index of their play.
pub fn draw_lines(
    docs: &[shakespeare::Doc],
    lines: usize,
    min_line: usize,
    seed: u64,
) -> Result<(Vec<String>, Vec<u32>, usize)> {
    let mut plays: Vec<&str> = docs.iter().map(|d| d.play.as_str()).collect();
    plays.sort_unstable();
    plays.dedup();
    let mut all: Vec<(&str, u32)> = Vec::new();
    for d in docs {
        let p = plays.binary_search(&d.play.as_str()).unwrap_or(0) as u32;
        all.extend(
            d.text
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= min_line)
                .map(|l| (l, p)),
        );
    }
    all.sort_unstable();
    all.dedup_by(|a, b| a.0 == b.0);
    if all.len() < lines {
        bail!(
            "whiten: {} lines of at least {min_line} bytes, {lines} asked for",
            all.len()
        );
    }
    let ids: Vec<usize> = (0..all.len()).collect();
    let mut pick = Rng::keyed(seed, "whiten-lines", 0).choose_sorted(&ids, lines);
    Rng::keyed(seed, "whiten-order", 0).shuffle(&mut pick);
    Ok((
        pick.iter().map(|&i| all[i].0.to_string()).collect(),
        pick.iter().map(|&i| all[i].1).collect(),
        plays.len(),
    ))
}

fn lm_features(
    z: &Settings,
    docs: &[shakespeare::Doc],
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Features, usize)> {
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let set = TextSet::new(&texts);
    let mut lm = Lm::new(z.lm, &z.lm_fit.optim, seed)?;
    let total = z.lm_fit.steps as u64;
    progress(Progress::Start {
        label: format!("whiten: language model (seed {seed})"),
        total,
    });
    lm.fit(&set, &z.lm_fit, &mut |s, _| {
        progress(Progress::Advance {
            pos: s as u64 + 1,
            total,
        })
    })?;
    progress(Progress::Finish);
    let (lines, plays, n_plays) = draw_lines(docs, z.lines, z.min_line, seed)?;
    let (x, dim) = mean_hidden(&lm.net(), &lines)?;
    let half = lines.len() / 2;
    let f = measure(
        (&x[..half * dim], &plays[..half]),
        (&x[half * dim..], &plays[half..]),
        dim,
        z.k,
        z.eps,
    )?;
    Ok((f, n_plays))
}

/// Runs the part: every seed (cached), then the verdicts.
pub fn run(cx: &Ctx, progress: &mut dyn FnMut(Progress)) -> Result<PartOut> {
    let t0 = Instant::now();
    let z = Settings::new(cx.quick);
    // One seed by default (the language model's training is most of the part's time).
    let seeds = cx.seeds_or(&[0], 1);
    let mut data = None;
    let rs = cx.per_seed("whiten", UNIT, &z, &seeds, |seed| {
        if data.is_none() {
            let sp = engram_learn::data::load("fashion-mnist", cx.data_dir)
                .context("whiten: loading Fashion-MNIST")?;
            let corpus =
                shakespeare::load(cx.data_dir).context("whiten: the Shakespeare corpus")?;
            data = Some((sp, corpus));
        }
        let Some((sp, corpus)) = data.as_ref() else {
            bail!("whiten: no data");
        };
        let t = Instant::now();
        let (cnn, cnn_accuracy) = cnn_features(&z, sp, seed, progress)?;
        let (lm, plays) = lm_features(&z, &corpus.docs, seed, progress)?;
        Ok(SeedResult {
            seed,
            cnn,
            cnn_accuracy,
            lm,
            plays,
            seconds: t.elapsed().as_secs_f64(),
        })
    })?;
    Ok(PartOut {
        verdicts: verdicts(&rs),
        text: text(&rs),
        results: json!({
            "settings": z,
            "quick": cx.quick,
            "seeds": rs,
            "wall_s": t0.elapsed().as_secs_f64(),
        }),
    })
}

fn mean(rs: &[SeedResult], f: impl Fn(&SeedResult) -> f64) -> f64 {
    spread(&rs.iter().map(f).collect::<Vec<_>>()).mean
}

fn dp(m: &Measure) -> f64 {
    m.d_prime.unwrap_or(f64::NAN)
}

/// The card's claim for each kind of features, on the held-out rows.
pub fn verdicts(rs: &[SeedResult]) -> Vec<Verdict> {
    type Get = fn(&SeedResult) -> &Features;
    let kinds: [(&str, Get); 2] = [("CNN features", |r| &r.cnn), ("LM features", |r| &r.lm)];
    kinds
        .iter()
        .map(|(name, get)| {
            let c0 = mean(rs, |r| get(r).eval_before.mean_cos);
            let c1 = mean(rs, |r| get(r).eval_after.mean_cos);
            let d0 = mean(rs, |r| dp(&get(r).eval_before));
            let d1 = mean(rs, |r| dp(&get(r).eval_after));
            let worst = rs
                .iter()
                .map(|r| get(r).eval_after.mean_cos.abs())
                .fold(0.0, f64::max);
            Verdict {
                part: "whiten".into(),
                claim: format!(
                    "{name}: whitening gives |c̄| < {FLAT} and raises d′ (held-out rows; paper \
                     c̄ 0.949 → −0.001, d′ 1.36 → 16.03)"
                ),
                holds: (!rs.is_empty() && d0.is_finite() && d1.is_finite())
                    .then_some(worst < FLAT && d1 > d0),
                detail: format!(
                    "c̄ {c0:.3} → {c1:.4} (largest |c̄| over seeds {worst:.4}), d′ {d0:.2} → \
                     {d1:.2}, {} seed(s)",
                    rs.len()
                ),
            }
        })
        .collect()
}

fn text(rs: &[SeedResult]) -> String {
    let mut s =
        String::from("whiten: c̄ / d′ / effective dimensionality, before → after (held-out rows)\n");
    for r in rs {
        for (name, f) in [("cnn", &r.cnn), ("lm", &r.lm)] {
            s += &format!(
                "  seed {} {name:<3} c̄ {:.3} → {:.4}  d′ {:.2} → {:.2}  eff. dim {:.1} → {:.1}  \
                 (kept {:.1} % of variance)\n",
                r.seed,
                f.eval_before.mean_cos,
                f.eval_after.mean_cos,
                dp(&f.eval_before),
                dp(&f.eval_after),
                f.eval_before.eff_dim,
                f.eval_after.eff_dim,
                100.0 * f.retained
            );
        }
    }
    s
}

/// The report's whitening section.
pub fn section(p: &mut Page, v: &Value) -> Result<()> {
    let z: Settings = serde_json::from_value(v["settings"].clone())?;
    let rs: Vec<SeedResult> = serde_json::from_value(v["seeds"].clone())?;
    p.heading("Anisotropy and whitening (Ker-VLJEPA)");
    let (ch, hid) = match &z.cnn {
        ModelConfig::Cnn { channels, hidden } => (format!("{channels:?}"), *hidden),
        _ => (String::new(), 0),
    };
    p.para(&format!(
        "CNN features: a CNN (channels {ch}, {hid}-d features) trained on {} Fashion-MNIST \
         images per class for {} epochs (Adam lr {}); its penultimate features of {} training \
         images per class fit the whitening, those of {} test images per class measure it. \
         Language-model features: a character language model ({} layers, width {}) trained \
         for {} steps on Shakespeare; {} lines of at least {} bytes, each line's final hidden \
         state averaged over its characters; half fit the whitening, half measure it, pairs \
         matched by play. Whitening: top k = {} components, ε = {} (card). c̄: mean cosine of \
         distinct rows; d′: (mean matched cosine − mean non-matched) / pooled standard \
         deviation (the card's engram definition); effective dimensionality: participation \
         ratio of the covariance's eigenvalues. Paper (CT embeddings): c̄ 0.949 → −0.001, d′ \
         1.36 → 16.03, 97.3 % of variance kept.",
        z.train_per_class,
        z.epochs,
        z.lr,
        z.fit_per_class,
        z.eval_per_class,
        z.lm.layers,
        z.lm.d_model,
        z.lm_fit.steps,
        z.lines,
        z.min_line,
        z.k,
        z.eps,
    ));
    let mut rows = Vec::new();
    for r in &rs {
        for (name, f) in [("CNN", &r.cnn), ("LM", &r.lm)] {
            for (set, b, a) in [
                ("fitting rows", &f.fit_before, &f.fit_after),
                ("held-out rows", &f.eval_before, &f.eval_after),
            ] {
                rows.push(vec![
                    r.seed.to_string(),
                    name.into(),
                    set.into(),
                    format!("{:.3} → {:.4}", b.mean_cos, a.mean_cos),
                    format!("{:.2} → {:.2}", dp(b), dp(a)),
                    format!("{:.1} → {:.1}", b.eff_dim, a.eff_dim),
                    format!("{:.1}", 100.0 * f.retained),
                ]);
            }
        }
    }
    p.table(
        &[
            "seed",
            "features",
            "rows",
            "c̄",
            "d′",
            "effective dimensionality",
            "variance kept (%)",
        ],
        &rows,
    );
    let accs: Vec<String> = rs
        .iter()
        .map(|r| format!("{:.1} %", r.cnn_accuracy))
        .collect();
    p.para(&format!(
        "CNN test accuracy on the measured images: {}. Lines came from {} plays.",
        accs.join(", "),
        rs.first().map_or(0, |r| r.plays)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anisotropic two-class rows: whitening flattens c̄ and separates the classes on held-out
    /// rows; the verdict follows the numbers.
    #[test]
    fn whitening_flattens_anisotropic_features_and_the_verdict_reads_it() {
        let dim = 12;
        let rows = |n: usize, seed: u64| -> (Vec<f32>, Vec<u32>) {
            let mut g = Rng::new(seed);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for i in 0..n {
                let c = (i % 2) as u32;
                // A large common offset (anisotropy), a loud nuisance direction over dims
                // 1.., and a small class signal on dim 0.
                let nuisance = 3.0 * g.normal();
                for j in 0..dim {
                    let v = match j {
                        0 => c as f32 - 0.5,
                        _ => nuisance * (1.0 - 2.0 * (j - 1) as f32 / (dim - 2) as f32),
                    };
                    x.push(5.0 + v + 0.3 * g.normal());
                }
                y.push(c);
            }
            (x, y)
        };
        let (fx, fy) = rows(400, 1);
        let (ex, ey) = rows(200, 2);
        let f = measure((&fx, &fy), (&ex, &ey), dim, 8, 1e-5).unwrap();
        assert!(f.eval_before.mean_cos > 0.8, "{:?}", f.eval_before);
        assert!(f.eval_after.mean_cos.abs() < 0.05, "{:?}", f.eval_after);
        assert!(dp(&f.eval_after) > dp(&f.eval_before));
        let r = SeedResult {
            seed: 0,
            cnn: f.clone(),
            cnn_accuracy: 0.0,
            lm: f,
            plays: 2,
            seconds: 0.0,
        };
        let v = verdicts(std::slice::from_ref(&r));
        assert_eq!(v.len(), 2);
        let expect = r.cnn.eval_after.mean_cos.abs() < FLAT;
        assert_eq!(v[0].holds, Some(expect), "{}", v[0].detail);
    }

    /// Lines are distinct, long enough, labelled by play and seeded.
    #[test]
    fn lines_are_drawn_from_every_document_by_seed() {
        let doc = |play: &str, text: &str| shakespeare::Doc {
            id: format!("{play}/1"),
            play: play.into(),
            text: text.into(),
        };
        let docs = [
            doc(
                "a",
                "short\nthe first long line of play a, surely\nanother long line of play a, here",
            ),
            doc("b", "the first long line of play b, surely\nshort\n"),
        ];
        let (l, p, n) = draw_lines(&docs, 3, 30, 4).unwrap();
        assert_eq!((l.len(), n), (3, 2));
        for (t, &q) in l.iter().zip(&p) {
            assert!(t.len() >= 30);
            assert_eq!(q, if t.contains("play b") { 1 } else { 0 }, "{t}");
        }
        assert_eq!(draw_lines(&docs, 3, 30, 4).unwrap().0, l);
        assert!(draw_lines(&docs, 4, 30, 4).is_err());
    }
}
