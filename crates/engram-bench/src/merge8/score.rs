//! `engram study merge8-score`: one merged backbone scored on a merge-8 study's validation
//! (or test) sets with each task's own head, as the study chooses λ (merging.md, selection
//! protocol): a score command for `engram evolve` and for grids outside the study.
//!
//! Scoring is called once per candidate, so the first call writes what every later call
//! needs into the study folder, `score-cache.safetensors`: the validation and test examples
//! of the eight tasks (untransformed, only those the tasks use), the tasks' classes and
//! transforms, and the fine-tuned models' accuracies (the normalizer). The cache records the
//! study's settings and the checksums of the heads and fine-tunes it was made from; a cache
//! that does not match them is made anew, so a retrained study is never scored against stale
//! data.

use super::Settings;
use super::tasks::{TASKS, build_scenario};
use super::training::{Study, read_values};
use super::weights::{Evaluator, Normalizer};
use anyhow::{Context, Result, anyhow, bail};
use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use engram_learn::data::{Dataset, fashion_mnist, mnist_digits};
use engram_learn::model::ModelConfig;
use engram_learn::scenario::{EvalMode, EvalPlan, Part, Scenario, Task, Transform};
use engram_learn::train::stage::Values;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cache's file name in the study folder.
pub const CACHE_FILE: &str = "score-cache.safetensors";
/// The cache's metadata key (its [`CacheInfo`] as JSON).
const CACHE_KEY: &str = "engram.merge8_score";

/// What the score is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Mean over tasks of accuracy / the fine-tuned model's accuracy, in percent (the
    /// study's selection score).
    Normalized,
    /// Mean Task-IL accuracy over tasks, in percent.
    Accuracy,
}

/// Settings of one scoring.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    /// The study folder (`engram study merge8 --out`).
    pub study: PathBuf,
    /// The merged backbone: a safetensors file or a model folder.
    pub model: PathBuf,
    /// `Valid` or `Test`.
    pub part: Part,
    pub metric: Metric,
    /// Where the data sets are, if the cache must be made (default: the system packages').
    pub data_dir: Option<PathBuf>,
}

/// One task's result.
#[derive(Clone, Debug, Serialize)]
pub struct TaskScore {
    pub task: String,
    /// Task-IL accuracy, percent.
    pub accuracy: f64,
    /// Accuracy / the fine-tuned model's, percent.
    pub normalized: f64,
}

/// A backbone's score.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub model: PathBuf,
    pub part: String,
    pub metric: Metric,
    /// The number the metric asks for.
    pub score: f64,
    pub mean_accuracy: f64,
    pub normalized_accuracy: f64,
    pub tasks: Vec<TaskScore>,
    /// Whether this call made the cache.
    pub cache_made: bool,
}

/// What identifies the cache's contents, and what it holds beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheInfo {
    settings: Settings,
    /// Each head's and fine-tune's file (relative to the study) with its metadata (engram
    /// writes the tensors' checksums there).
    inputs: BTreeMap<String, BTreeMap<String, String>>,
    dim: usize,
    image: Option<(usize, usize, usize)>,
    num_outputs: usize,
    tasks: Vec<CachedTask>,
    ft_val: Vec<f64>,
    ft_test: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CachedTask {
    name: String,
    classes: Vec<u32>,
    transform: Transform,
}

fn part_name(part: Part) -> Result<&'static str> {
    match part {
        Part::Valid => Ok("valid"),
        Part::Test => Ok("test"),
        Part::Train => bail!("a merged model is scored on the validation or the test split"),
    }
}

fn head_file(task: &str) -> String {
    format!("models/heads/{task}.safetensors")
}

fn finetuned_file(task: &str) -> String {
    format!("models/finetuned/{task}.safetensors")
}

/// Scores `o.model` on the study's `o.part` with each task's own head.
pub fn score(o: &ScoreOptions) -> Result<Score> {
    let part = part_name(o.part)?;
    let settings: Settings = serde_json::from_value(
        crate::machine::read_json(&o.study.join("study.json")).with_context(|| {
            format!(
                "{} is not a merge-8 study folder (engram study merge8 --out)",
                o.study.display()
            )
        })?,
    )
    .with_context(|| {
        format!(
            "{}: not a merge-8 study's settings",
            o.study.join("study.json").display()
        )
    })?;
    let inputs = input_ids(&o.study)?;
    let cache = o.study.join(CACHE_FILE);
    let (mut info, mut made) = (read_info(&cache), false);
    if info
        .as_ref()
        .is_none_or(|i| i.settings != settings || i.inputs != inputs)
    {
        make_cache(&o.study, &settings, inputs, o.data_dir.as_deref())?;
        info = read_info(&cache);
        made = true;
    }
    let info = info.with_context(|| format!("{} could not be read back", cache.display()))?;
    let (study, heads) = load(&o.study, &cache, &info, o.part)?;
    let backbone = read_values(&o.model)?;
    let ev = Evaluator {
        st: &study,
        heads: &heads,
    };
    let accs = ev.all(&backbone, o.part)?;
    let reference = match o.part {
        Part::Test => &info.ft_test,
        _ => &info.ft_val,
    };
    let norm = Normalizer {
        ft_val: reference.clone(),
        ft_test: Vec::new(),
    };
    let normalized_accuracy = norm.val(&accs);
    let mean_accuracy = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
    let tasks = accs
        .iter()
        .zip(reference)
        .zip(&info.tasks)
        .map(|((&a, &r), t)| TaskScore {
            task: t.name.clone(),
            accuracy: a,
            normalized: if r > 0.0 { 100.0 * a / r } else { 0.0 },
        })
        .collect();
    Ok(Score {
        model: o.model.clone(),
        part: part.into(),
        metric: o.metric,
        score: match o.metric {
            Metric::Normalized => normalized_accuracy,
            Metric::Accuracy => mean_accuracy,
        },
        mean_accuracy,
        normalized_accuracy,
        tasks,
        cache_made: made,
    })
}

/// The metadata of every head and fine-tune the score depends on.
fn input_ids(study: &Path) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut ids = BTreeMap::new();
    for (task, _, _) in TASKS {
        for f in [head_file(task), finetuned_file(task)] {
            let p = study.join(&f);
            let m = Model::open(&p).with_context(|| {
                format!(
                    "cannot open {} (has `engram study merge8` finished in {}?)",
                    p.display(),
                    study.display()
                )
            })?;
            ids.insert(f, m.metadata());
        }
    }
    Ok(ids)
}

fn read_info(cache: &Path) -> Option<CacheInfo> {
    let m = Model::open(cache).ok()?;
    serde_json::from_str(m.metadata().get(CACHE_KEY)?).ok()
}

/// Rows `idx` of `ds`, as a data set of their own.
fn rows(ds: &Dataset, idx: &[usize]) -> Dataset {
    let mut x = Vec::with_capacity(idx.len() * ds.dim);
    for &i in idx {
        x.extend_from_slice(&ds.x[i * ds.dim..(i + 1) * ds.dim]);
    }
    Dataset {
        name: ds.name.clone(),
        x,
        y: idx.iter().map(|&i| ds.y[i]).collect(),
        dim: ds.dim,
        image: ds.image,
        num_classes: ds.num_classes,
    }
}

/// The sorted union of the tasks' indices into one split, and each task's indices into it.
fn compact(lists: &[&[usize]]) -> (Vec<usize>, Vec<Vec<u32>>) {
    let mut all: Vec<usize> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    let at: BTreeMap<usize, u32> = all
        .iter()
        .enumerate()
        .map(|(k, &i)| (i, k as u32))
        .collect();
    let per = lists
        .iter()
        .map(|l| l.iter().map(|i| at[i]).collect())
        .collect();
    (all, per)
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds the study's scenario from the data sets, evaluates the fine-tunes and writes the
/// cache (atomically: concurrent first calls each write a whole file).
fn make_cache(
    dir: &Path,
    settings: &Settings,
    inputs: BTreeMap<String, BTreeMap<String, String>>,
    data_dir: Option<&Path>,
) -> Result<()> {
    let fashion = fashion_mnist::load(data_dir)?;
    let digits = mnist_digits::load(data_dir)?;
    let s = build_scenario(
        &fashion.train,
        &fashion.test,
        &digits.train,
        &digits.test,
        settings,
    )?;
    drop((fashion, digits));
    if s.tasks.len() != TASKS.len() {
        bail!(
            "the merge-8 scenario has {} tasks, not {}",
            s.tasks.len(),
            TASKS.len()
        );
    }
    if let Some(t) = s
        .tasks
        .iter()
        .find(|t| matches!(t.transform, Transform::Corrupt { .. }))
    {
        // A corruption draws per example index, which compaction would change.
        bail!("task {}: corrupted tasks cannot be cached", t.name);
    }
    let valid: Vec<&[usize]> = s.tasks.iter().map(|t| t.valid.as_slice()).collect();
    let test: Vec<&[usize]> = s.tasks.iter().map(|t| t.test.as_slice()).collect();
    let (valid_rows, valid_idx) = compact(&valid);
    let (test_rows, test_idx) = compact(&test);
    let vd = rows(&s.train, &valid_rows);
    let td = rows(&s.test, &test_rows);
    // The normalizer: each fine-tune with its own head, on the full scenario.
    let (study, heads) = study_of(dir, settings, s.clone(), &|t| {
        let v = read_values(&dir.join(head_file(TASKS[t].0)))?;
        Ok(v)
    })?;
    let ev = Evaluator {
        st: &study,
        heads: &heads,
    };
    let (mut ft_val, mut ft_test) = (Vec::new(), Vec::new());
    for (t, (task, _, _)) in TASKS.iter().enumerate() {
        let v = read_values(&dir.join(finetuned_file(task)))?;
        ft_val.push(ev.acc(&v, t, Part::Valid)?);
        ft_test.push(ev.acc(&v, t, Part::Test)?);
    }
    let info = CacheInfo {
        settings: settings.clone(),
        inputs,
        dim: s.train.dim,
        image: s.train.image,
        num_outputs: s.num_outputs,
        tasks: s
            .tasks
            .iter()
            .map(|t| CachedTask {
                name: t.name.clone(),
                classes: t.classes.clone(),
                transform: t.transform.clone(),
            })
            .collect(),
        ft_val,
        ft_test,
    };
    let mut specs = vec![
        TensorSpec::new("valid.x", DType::F32, &[vd.len(), vd.dim]),
        TensorSpec::new("valid.y", DType::U32, &[vd.len()]),
        TensorSpec::new("test.x", DType::F32, &[td.len(), td.dim]),
        TensorSpec::new("test.y", DType::U32, &[td.len()]),
    ];
    for t in 0..TASKS.len() {
        specs.push(TensorSpec::new(
            format!("task.{t}.valid"),
            DType::U32,
            &[valid_idx[t].len()],
        ));
        specs.push(TensorSpec::new(
            format!("task.{t}.test"),
            DType::U32,
            &[test_idx[t].len()],
        ));
    }
    let opts = WriteOptions {
        max_shard_bytes: None,
        metadata: BTreeMap::from([(CACHE_KEY.to_string(), serde_json::to_string(&info)?)]),
    };
    let w = ModelWriter::create(&dir.join(CACHE_FILE), specs, &opts)?;
    w.write_f32("valid.x", &vd.x)?;
    w.write_bytes("valid.y", &u32_bytes(&vd.y))?;
    w.write_f32("test.x", &td.x)?;
    w.write_bytes("test.y", &u32_bytes(&td.y))?;
    for t in 0..TASKS.len() {
        w.write_bytes(&format!("task.{t}.valid"), &u32_bytes(&valid_idx[t]))?;
        w.write_bytes(&format!("task.{t}.test"), &u32_bytes(&test_idx[t]))?;
    }
    w.finish(&[])?;
    Ok(())
}

/// The study's network and evaluation over scenario `s`, with every task's head from `head`.
fn study_of(
    dir: &Path,
    settings: &Settings,
    s: Scenario,
    head: &dyn Fn(usize) -> Result<Values>,
) -> Result<(Study, Vec<Values>)> {
    let study = Study {
        dir: dir.to_path_buf(),
        head: format!("fc.{}.", settings.hidden.len()),
        s,
        model: ModelConfig::Mlp {
            hidden: settings.hidden.clone(),
        },
        shapes: BTreeMap::new(),
    };
    let heads = (0..TASKS.len())
        .map(|t| Ok(study.split_head(&head(t)?).1))
        .collect::<Result<Vec<_>>>()?;
    Ok((study, heads))
}

fn read_u32(m: &Model, name: &str) -> Result<Vec<u32>> {
    let t = m.require(name)?;
    if t.dtype() != DType::U32 {
        bail!("{}: {name} is {:?}, not U32", m_path(m), t.dtype());
    }
    Ok(t.bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn m_path(m: &Model) -> String {
    m.tensors()
        .next()
        .map_or(String::new(), |t| t.path.display().to_string())
}

/// The study (a scenario over the cached examples of `part` only) and the heads.
fn load(dir: &Path, cache: &Path, info: &CacheInfo, part: Part) -> Result<(Study, Vec<Values>)> {
    let m = Model::open(cache)?;
    m.verify()?;
    let key = part_name(part)?;
    let x = m.require(&format!("{key}.x"))?.to_f32()?;
    let y = read_u32(&m, &format!("{key}.y"))?;
    let n = y.len();
    if x.len() != n * info.dim {
        bail!(
            "{}: {key}.x does not hold {n} rows of {}",
            cache.display(),
            info.dim
        );
    }
    let data = Dataset {
        name: "merge-8 (cached)".into(),
        x,
        y,
        dim: info.dim,
        image: info.image,
        num_classes: info.num_outputs,
    };
    let empty = Dataset {
        x: Vec::new(),
        y: Vec::new(),
        ..data.clone()
    };
    let mut tasks = Vec::new();
    for (t, ct) in info.tasks.iter().enumerate() {
        let idx: Vec<usize> = read_u32(&m, &format!("task.{t}.{key}"))?
            .into_iter()
            .map(|i| i as usize)
            .collect();
        if let Some(i) = idx.iter().find(|&&i| i >= n) {
            bail!("{}: task {t} names example {i} of {n}", cache.display());
        }
        let mut task = Task::new(
            &ct.name,
            ct.classes.clone(),
            Vec::new(),
            Vec::new(),
            ct.transform.clone(),
        );
        match part {
            Part::Test => task.test = idx,
            _ => task.valid = idx,
        }
        tasks.push(task);
    }
    let (train, test) = match part {
        Part::Test => (empty, data),
        _ => (data, empty),
    };
    let s = Scenario {
        name: "merge-8".into(),
        seed: info.settings.seed,
        eval: EvalMode::TaskIl,
        plan: EvalPlan::EveryTask,
        num_outputs: info.num_outputs,
        train,
        test,
        tasks,
    };
    study_of(dir, &info.settings, s, &|t| {
        read_values(&dir.join(head_file(TASKS[t].0)))
    })
    .map_err(|e| anyhow!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each task's indices point, in the compact split, at the example they named before.
    #[test]
    fn compaction_keeps_every_tasks_examples() {
        let a = [7usize, 2, 9];
        let b = [2usize, 4];
        let (all, per) = compact(&[&a, &b]);
        assert_eq!(all, [2, 4, 7, 9]);
        for (list, idx) in [(&a[..], &per[0]), (&b[..], &per[1])] {
            let back: Vec<usize> = idx.iter().map(|&k| all[k as usize]).collect();
            assert_eq!(back, list);
        }
        let ds = Dataset {
            name: "d".into(),
            x: (0..20).map(|v| v as f32).collect(),
            y: (0..10).collect(),
            dim: 2,
            image: None,
            num_classes: 10,
        };
        let r = rows(&ds, &[3, 1]);
        assert_eq!((r.x, r.y), (vec![6.0, 7.0, 2.0, 3.0], vec![3, 1]));
    }
}
