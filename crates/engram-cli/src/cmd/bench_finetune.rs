//! `engram bench finetune`: the selective fine-tuning benchmark (selective_finetuning.md, "CPU
//! testbed"; issue "Selective fine-tuning and spectral analysis").
//!
//! A residual MLP (784 → 256, four blocks 256 → 512 → 256, a head) is pre-trained on
//! Fashion-MNIST (the source), then fine-tuned with a new head on each target: MNIST digits,
//! and MNIST digits with a fixed pixel permutation (a target whose inputs share nothing with
//! the source's, so the first layers must change). After fine-tuning the source test set is
//! evaluated through the *old* head. Per method: target accuracy, source accuracy kept,
//! trainable values, optimizer memory, wall time of the fine-tuning; three seeds (the seed
//! draws the pre-training, the new head, adapters and random selections).
//!
//! Methods: full fine-tuning; the head alone (the retention ceiling); LoRA r = 2, 8, 32
//! (α = 2r, all body matrices); at the budget of LoRA r = 8, K = (m + n)·8 entries per matrix,
//! LIFT (filter rank 8, refresh every 100 steps), top-|W| (no rank reduction, same refresh)
//! and random-K (fixed); LIFT at the budget of LoRA r = 32 (filter rank 32); KappaTune with N = 3 of the 9 body matrices, lowest-κ, highest-κ and
//! random; block expansion of blocks 1 and 3 (lerp α = 0.5 fixed, mse divergence, λ = 0,
//! 0.1, 1), with accuracy after folding the copies back too, and the card's continued
//! pre-training setting (learned per-example gate, cosine divergence, λ = 1).
//!
//! Optimizer: AdamW lr 1e-3, β = (0.9, 0.999), no weight decay, for every method;
//! pre-training 2 epochs of the 60,000 Fashion-MNIST training images (batch 128); fine-tuning
//! 3 epochs of the target's training digits (batch 64). Output (`--out`, default
//! `bench-out/finetune`): `results.json` and `report.html`. `--quick`: small data and
//! network, one seed, a smoke check of under a minute.

use super::util;
use crate::Ctx;
use anyhow::{Context, Result, anyhow};
use engram_learn::data::rng::Rng;
use engram_learn::data::transform::Prepared;
use engram_learn::data::{self, Dataset};
use engram_learn::finetune::adam::AdamW;
use engram_learn::finetune::expand::{Divergence, ExpandConfig, Gate};
use engram_learn::finetune::kappatune::{self, Pick};
use engram_learn::finetune::lift::{Selection, SparseConfig};
use engram_learn::finetune::lora::LoraConfig;
use engram_learn::finetune::train::{LoopConfig, accuracy};
use engram_learn::finetune::{Method, Outcome, ResMlpConfig, SOURCE_HEAD, fine_tune, pretrain};
use engram_learn::scenario::Transform;
use engram_report::finetune::{Claim, FinetuneResults, MethodSummary, render_finetune};
use engram_report::report::MeanSpread;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Small data and network, one seed: a smoke check.
    #[arg(long)]
    pub quick: bool,
    /// Output folder (default bench-out/finetune, or bench-out/finetune-quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seeds 0..N.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Pre-training epochs.
    #[arg(long, default_value_t = 2)]
    pub pretrain_epochs: usize,
    /// Learning rate of every fine-tuning run.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate of the pre-training.
    #[arg(long, default_value_t = 1e-3)]
    pub pretrain_lr: f64,
    /// Only the methods whose label contains one of these words (e.g. lift,lora).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Folder searched first for the data sets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The methods compared, in table order.
fn methods(blocks: usize) -> Vec<Method> {
    let sparse = |s: Selection| Method::Sparse(SparseConfig::new(s));
    let lora = |r: usize| {
        Method::Lora(LoraConfig {
            r,
            alpha: 2.0 * r as f32,
            targets: Vec::new(),
        })
    };
    let expand = |l: f32| {
        Method::Expand(ExpandConfig::new(
            engram_learn::finetune::expand::placement(blocks, 2),
            l,
        ))
    };
    vec![
        Method::Full,
        Method::HeadOnly,
        lora(2),
        lora(8),
        lora(32),
        sparse(Selection::Principal),
        Method::Sparse(SparseConfig {
            r_lora: 32,
            filter_rank: 32,
            ..SparseConfig::new(Selection::Principal)
        }),
        sparse(Selection::Magnitude),
        sparse(Selection::Random),
        Method::Kappa {
            pick: Pick::Lowest,
            n: 3,
        },
        Method::Kappa {
            pick: Pick::Highest,
            n: 3,
        },
        Method::Kappa {
            pick: Pick::Random,
            n: 3,
        },
        expand(0.0),
        expand(0.1),
        expand(1.0),
        // The card's continued-pretraining setting: learned per-example gate, cosine.
        Method::Expand(ExpandConfig {
            gate: Gate::Dlerp,
            divergence: Divergence::Cosine,
            ..ExpandConfig::new(engram_learn::finetune::expand::placement(blocks, 2), 1.0)
        }),
    ]
}

/// `n` examples of `d` drawn with a seeded generator, in their original order (all when `n`
/// ≥ its size).
fn sample(d: &Dataset, n: usize, key: &str) -> Dataset {
    if n >= d.len() {
        return d.clone();
    }
    let all: Vec<usize> = (0..d.len()).collect();
    d.subset(&Rng::keyed(0, key, 0).choose_sorted(&all, n))
}

/// `d` with its pixels permuted by `perm` (the scenarios' `Transform::Permute`).
fn permuted(d: &Dataset, perm: &[u32], name: &str) -> Result<Dataset> {
    let t = Transform::Permute(perm.to_vec());
    let p = Prepared::new(&t, d.dim, d.image).map_err(|e| anyhow!("{e}"))?;
    let mut out = d.clone();
    out.name = name.to_string();
    for (i, row) in out.x.chunks_mut(d.dim).enumerate() {
        p.apply(d.row(i), row);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx, a: FinetuneArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.quick {
            "bench-out/finetune-quick"
        } else {
            "bench-out/finetune"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let dd = a.data_dir.as_deref();
    let fm = data::load("fashion-mnist", dd).map_err(|e| anyhow!("{e}"))?;
    let mn = data::load("mnist", dd).map_err(|e| anyhow!("{e}"))?;
    let (cfg, seeds, src_train, src_test, tgt_train_n, tgt_test_n) = if a.quick {
        let c = ResMlpConfig {
            width: 64,
            hidden: 128,
            ..ResMlpConfig::default()
        };
        (c, 1, 3000, 1000, 1500, 500)
    } else {
        (
            ResMlpConfig::default(),
            a.seeds.max(1),
            usize::MAX,
            usize::MAX,
            usize::MAX,
            usize::MAX,
        )
    };
    let source_train = sample(&fm.train, src_train, "source-train");
    let source_test = sample(&fm.test, src_test, "source-test");
    let digits = (
        sample(&mn.train, tgt_train_n, "target-train"),
        sample(&mn.test, tgt_test_n, "target-test"),
    );
    let perm = Rng::keyed(0, "mnist-permuted", 0).permutation(digits.0.dim);
    let shuffled = (
        permuted(&digits.0, &perm, "mnist-permuted")?,
        permuted(&digits.1, &perm, "mnist-permuted")?,
    );
    let targets = [("mnist", &digits), ("mnist-permuted", &shuffled)];
    let adam = AdamW {
        lr: a.lr,
        ..AdamW::default()
    };
    let pre = LoopConfig {
        epochs: a.pretrain_epochs,
        batch: 128,
        adam: AdamW {
            lr: a.pretrain_lr,
            ..AdamW::default()
        },
    };
    let ft = LoopConfig {
        epochs: a.epochs,
        batch: 64,
        adam,
    };
    let all = methods(cfg.blocks);
    let chosen: Vec<Method> = all
        .into_iter()
        .filter(|m| a.only.is_empty() || a.only.iter().any(|w| m.label().contains(w.as_str())))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only matches no method");
    }
    let settings = json!({
        "network": cfg,
        "source": {"data": "fashion-mnist", "train": source_train.len(), "test": source_test.len()},
        "targets": targets.iter().map(|(n, d)| json!({"name": n, "train": d.0.len(), "test": d.1.len()})).collect::<Vec<_>>(),
        "pretrain": pre,
        "finetune": ft,
        "seeds": seeds,
        "threads": rayon::current_num_threads(),
        "quick": a.quick,
    });
    let started = Instant::now();
    let runs_total = seeds as usize * targets.len() * chosen.len();
    let mut source_before = Vec::new();
    let mut kappas = Vec::new();
    let mut runs: Vec<(String, u64, Outcome)> = Vec::new();
    for seed in 0..seeds {
        let pb = crate::progress::bar(ctx, 1, &format!("pre-training, seed {seed}"));
        let t0 = Instant::now();
        let p = pretrain(&cfg, &source_train, &pre, seed, &mut |s, n| {
            pb.set_length(n as u64);
            pb.set_position(s as u64);
        })
        .map_err(|e| anyhow!("pre-training: {e}"))?;
        pb.finish_and_clear();
        let before = accuracy(&p, 0.0, SOURCE_HEAD, &source_test).map_err(|e| anyhow!("{e}"))?;
        source_before.push(before);
        kappas.push(kappatune::kappas(&p, &cfg.body_weights()).map_err(|e| anyhow!("κ: {e}"))?);
        if !ctx.quiet {
            eprintln!(
                "seed {seed}: pre-trained in {:.1} s, source accuracy {before:.1}%",
                t0.elapsed().as_secs_f64()
            );
        }
        for (tname, (train, test)) in &targets {
            for m in &chosen {
                let pb = crate::progress::bar(ctx, 1, &format!("{tname} {} s{seed}", m.label()));
                let o = fine_tune(
                    m,
                    &cfg,
                    &p,
                    (train, test),
                    &source_test,
                    &ft,
                    seed,
                    &mut |s, n| {
                        pb.set_length(n as u64);
                        pb.set_position(s as u64);
                    },
                )
                .map_err(|e| anyhow!("{tname} {}: {e}", m.label()))?;
                pb.finish_and_clear();
                if !ctx.quiet {
                    eprintln!(
                        "[{}/{runs_total}] {tname:15} {:28} target {:5.1}%  source {:5.1}%  {:.1} s",
                        runs.len() + 1,
                        o.method,
                        o.target_accuracy,
                        o.source_accuracy,
                        o.seconds
                    );
                }
                runs.push((tname.to_string(), seed, o));
            }
        }
    }
    let summary = summarize(&targets.map(|t| t.0.to_string()), &chosen, &runs)?;
    let claims = judge(&summary);
    let results = FinetuneResults {
        settings,
        source_before,
        kappas,
        summary,
        claims,
        runs: json!(
            runs.iter()
                .map(|(t, s, o)| json!({"target": t, "seed": s, "outcome": o}))
                .collect::<Vec<_>>()
        ),
    };
    util::write_json_file(&out.join("results.json"), &results)?;
    engram_report::report::write_atomic(
        &out.join("report.html"),
        render_finetune(&results).as_bytes(),
    )?;
    print_table(&results);
    println!(
        "{} runs in {:.0} s; results: {}, report: {}",
        runs.len(),
        started.elapsed().as_secs_f64(),
        out.join("results.json").display(),
        out.join("report.html").display()
    );
    Ok(())
}

fn summarize(
    targets: &[String],
    methods: &[Method],
    runs: &[(String, u64, Outcome)],
) -> Result<Vec<MethodSummary>> {
    let mut out = Vec::new();
    for t in targets {
        for m in methods {
            let label = m.label();
            let rs: Vec<&Outcome> = runs
                .iter()
                .filter(|(tt, _, o)| tt == t && o.method == label)
                .map(|(_, _, o)| o)
                .collect();
            let of = |f: &dyn Fn(&Outcome) -> Option<f64>| {
                let v: Vec<f64> = rs.iter().filter_map(|o| f(o)).collect();
                MeanSpread::of(&v)
            };
            let need = |x: Option<MeanSpread>| x.ok_or_else(|| anyhow!("{t} {label}: no runs"));
            out.push(MethodSummary {
                target: t.clone(),
                method: label.clone(),
                trainable: rs.iter().map(|o| o.trainable).min().unwrap_or(0),
                trainable_max: rs.iter().map(|o| o.trainable).max().unwrap_or(0),
                optimizer_bytes: rs.iter().map(|o| o.optimizer_bytes).max().unwrap_or(0),
                target_accuracy: need(of(&|o| Some(o.target_accuracy)))?,
                source_accuracy: need(of(&|o| Some(o.source_accuracy)))?,
                merged_target_accuracy: of(&|o| o.merged.as_ref().map(|m| m.target_accuracy)),
                merged_source_accuracy: of(&|o| o.merged.as_ref().map(|m| m.source_accuracy)),
                seconds: need(of(&|o| Some(o.seconds)))?,
                selected: rs.iter().map(|o| o.selected.clone()).collect(),
            });
        }
    }
    Ok(out)
}

/// Whether `a` beats `b` by more than their seeds' spread: |Δmean| above the combined sample
/// standard deviation √(sd_a² + sd_b²) (never with a single seed).
fn clear(a: &MeanSpread, b: &MeanSpread) -> bool {
    match (a.spread, b.spread) {
        (Some(x), Some(y)) => (a.mean - b.mean).abs() > (x * x + y * y).sqrt(),
        _ => false,
    }
}

/// The λ of a block-expansion label ("expand 1+3 lerp λ=0.1").
fn lambda_of(label: &str) -> Option<f64> {
    label.rsplit_once("λ=").and_then(|(_, l)| l.parse().ok())
}

/// The papers' claims, judged on the means of each target: a claim holds when every
/// comparison it makes has the predicted sign (and its guards on target accuracy pass); it is
/// `clear` when every comparison also exceeds the seeds' spread. The evidence gives the
/// numbers.
fn judge(summary: &[MethodSummary]) -> Vec<Claim> {
    let mut out = Vec::new();
    let mut targets: Vec<&str> = summary.iter().map(|m| m.target.as_str()).collect();
    targets.dedup();
    for t in targets {
        let get = |prefix: &str| {
            summary
                .iter()
                .find(|m| m.target == t && m.method.starts_with(prefix))
        };
        let g = |m: &MethodSummary| m.target_accuracy.mean;
        let fmt = |m: &MethodSummary| {
            format!(
                "{}: target {}, source {}",
                m.method,
                m.target_accuracy.format_with(|x| format!("{x:.1}")),
                m.source_accuracy.format_with(|x| format!("{x:.1}"))
            )
        };
        // `keeps`: pairs (a, b) where a must keep more of the source than b; `learns`: pairs
        // where a must reach a higher target accuracy; `guard`: further conditions.
        let mut claim = |text: &str,
                         keeps: &[(&MethodSummary, &MethodSummary)],
                         learns: &[(&MethodSummary, &MethodSummary)],
                         guard: bool,
                         ms: &[&MethodSummary]| {
            let pairs = keeps
                .iter()
                .map(|(a, b)| (&a.source_accuracy, &b.source_accuracy))
                .chain(
                    learns
                        .iter()
                        .map(|(a, b)| (&a.target_accuracy, &b.target_accuracy)),
                );
            let holds = guard && pairs.clone().all(|(a, b)| a.mean > b.mean);
            out.push(Claim {
                target: t.to_string(),
                claim: text.to_string(),
                holds,
                clear: holds && pairs.clone().all(|(a, b)| clear(a, b)),
                evidence: ms.iter().map(|m| fmt(m)).collect::<Vec<_>>().join("; "),
            });
        };
        for r in [8, 32] {
            let (lift, lora) = (get(&format!("lift r{r}")), get(&format!("lora r{r}")));
            if let (Some(lift), Some(full), Some(lora)) = (lift, get("full"), lora) {
                claim(
                    &format!(
                        "LIFT keeps more source accuracy than full fine-tuning and LoRA at the \
                         same budget (r = {r}), at a similar target accuracy (within 2 points \
                         of full)"
                    ),
                    &[(lift, full), (lift, lora)],
                    &[],
                    g(full) - g(lift) <= 2.0,
                    &[lift, full, lora],
                );
            }
        }
        if let (Some(lift), Some(top), Some(rnd)) =
            (get("lift r8"), get("top-|W|"), get("random-K"))
        {
            claim(
                "Magnitude selection without the rank reduction (top-|W|) and random entries do \
                 worse than LIFT: less source kept at the same K and a similar target accuracy \
                 (within 2 points)",
                &[(lift, top), (lift, rnd)],
                &[],
                (g(lift) - g(top)).abs() <= 2.0 && (g(lift) - g(rnd)).abs() <= 2.0,
                &[lift, top, rnd],
            );
            claim(
                "LIFT reaches a higher target accuracy than top-|W| at the same K",
                &[],
                &[(lift, top)],
                true,
                &[lift, top],
            );
        }
        if let (Some(lo), Some(hi), Some(rnd)) = (
            get("kappatune lowest"),
            get("kappatune highest"),
            get("kappatune random"),
        ) {
            claim(
                "KappaTune: the lowest-κ tensors forget less than the highest-κ or random ones \
                 at the same N (no condition on target accuracy: see the table)",
                &[(lo, hi), (lo, rnd)],
                &[],
                true,
                &[lo, hi, rnd],
            );
        }
        let lerp: Vec<&MethodSummary> = summary
            .iter()
            .filter(|m| {
                m.target == t && m.method.starts_with("expand") && m.method.contains(" lerp λ")
            })
            .collect();
        if let Some(full) = get("full")
            && !lerp.is_empty()
        {
            let best_target = lerp.iter().map(|m| g(m)).fold(f64::NEG_INFINITY, f64::max);
            let keeps: Vec<_> = lerp.iter().map(|m| (*m, full)).collect();
            claim(
                "Block expansion keeps more source accuracy than full fine-tuning (every λ) \
                 with a small target cost (best λ within 2 points of full)",
                &keeps,
                &[],
                g(full) - best_target <= 2.0,
                &[&[full][..], &lerp[..]].concat(),
            );
        }
        let zero = lerp.iter().find(|m| lambda_of(&m.method) == Some(0.0));
        let largest = lerp
            .iter()
            .filter(|m| lambda_of(&m.method).is_some_and(|l| l > 0.0))
            .max_by(|a, b| {
                lambda_of(&a.method)
                    .partial_cmp(&lambda_of(&b.method))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        if let (Some(e0), Some(e1)) = (zero, largest) {
            claim(
                "Block expansion: a divergence loss (largest λ) keeps more source accuracy than \
                 λ = 0",
                &[(e1, e0)],
                &[],
                true,
                &[e0, e1],
            );
        }
    }
    out
}

/// "holds", "holds (within seed noise)" or "does not hold".
fn verdict(c: &Claim) -> &'static str {
    engram_report::finetune::verdict(c)
}

fn print_table(r: &FinetuneResults) {
    let f = |m: &MeanSpread| m.format_with(|x| format!("{x:.1}"));
    if let Some(k) = r.kappas.first() {
        println!("κ of the pre-trained body (seed 0):");
        for (n, v) in k {
            println!("  {n:24} {v:10.3e}");
        }
    }
    let mut target = "";
    for m in &r.summary {
        if m.target != target {
            target = &m.target;
            println!(
                "\ntarget {target} (source before: {})",
                r.source_before
                    .iter()
                    .map(|a| format!("{a:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "{:30} {:>15} {:>12} {:>13} {:>13} {:>8}",
                "method", "trainable", "optim state", "target %", "source kept %", "seconds"
            );
        }
        println!(
            "{:30} {:>15} {:>12} {:>13} {:>13} {:>8.1}",
            m.method,
            if m.trainable == m.trainable_max {
                m.trainable.to_string()
            } else {
                format!("{}–{}", m.trainable, m.trainable_max)
            },
            util::bytes(m.optimizer_bytes as u64),
            f(&m.target_accuracy),
            f(&m.source_accuracy),
            m.seconds.mean
        );
    }
    println!();
    for c in &r.claims {
        println!(
            "[{}] {}: {}\n      {}",
            verdict(c),
            c.target,
            c.claim,
            c.evidence
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, target: f64, source: &[f64]) -> MethodSummary {
        let one = |v: f64| MeanSpread::of(&[v]).expect("value");
        MethodSummary {
            target: "t".into(),
            method: method.into(),
            trainable: 1,
            trainable_max: 1,
            optimizer_bytes: 1,
            target_accuracy: MeanSpread::of(&[target, target]).unwrap_or(one(target)),
            source_accuracy: MeanSpread::of(source).unwrap_or(one(0.0)),
            merged_target_accuracy: None,
            merged_source_accuracy: None,
            seconds: one(1.0),
            selected: Vec::new(),
        }
    }

    #[test]
    fn claims_need_the_predicted_sign_and_say_when_it_is_within_noise() {
        assert_eq!(lambda_of("expand 1+3 lerp λ=0.1"), Some(0.1));
        assert_eq!(lambda_of("full"), None);
        let s = vec![
            row("full", 92.0, &[50.0, 52.0]),
            row("expand 1+3 lerp λ=0", 91.0, &[80.0, 82.0]),
            row("expand 1+3 lerp λ=1", 91.5, &[79.0, 85.0]),
        ];
        let c = judge(&s);
        let keep = c
            .iter()
            .find(|c| c.claim.contains("every λ"))
            .expect("claim");
        assert!(keep.holds && keep.clear, "{keep:?}");
        let lam = c.iter().find(|c| c.claim.contains("λ = 0")).expect("claim");
        // 82 vs 81: the right sign, but well inside the spread.
        assert!(lam.holds && !lam.clear, "{lam:?}");
        assert_eq!(
            engram_report::finetune::verdict(lam),
            "holds (within seed noise)"
        );
        // Without a λ = 0 row there is nothing to compare: no claim.
        let c = judge(&s[..1].iter().chain(&s[2..]).cloned().collect::<Vec<_>>());
        assert!(c.iter().all(|c| !c.claim.contains("λ = 0")));
        // A target cost over 2 points fails the first claim whatever the retention.
        let s = vec![
            row("full", 95.0, &[50.0, 52.0]),
            row("expand 1+3 lerp λ=0", 90.0, &[80.0, 82.0]),
        ];
        let keep = judge(&s)
            .into_iter()
            .find(|c| c.claim.contains("every λ"))
            .expect("claim");
        assert!(!keep.holds);
    }
}
