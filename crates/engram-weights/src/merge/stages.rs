//! Multi-stage merges (as mergekit-multi does): one YAML file of several `---`-separated merge
//! configs, each naming its output with `name`, later stages merging earlier stages' outputs.
//!
//! Each document is a config [`super::config::parse`] accepts, plus `name`. A model reference
//! (`base_model`, `models[].model`) equal to a stage's name is that stage's output,
//! `OUTDIR/<name>` (a stage name wins over a folder of the same name). Stages run in dependency
//! order (documents in file order where the graph leaves a choice); a cycle is an error naming
//! its stages. Unlike mergekit-multi, every stage is named and written under OUTDIR (mergekit
//! writes one unnamed stage to `--out-path`); the final product is the last document's stage.
//!
//! A stage whose output exists is skipped when that output is complete (it opens and its
//! checksums verify) and records ([`STAGE_KEY`]) the same stage: the same document, the same
//! resolved model paths, the same merge options, and the same outputs of the stages it reads
//! (by their checksum identity). Otherwise it is merged again, atomically.

use super::config::{MergeConfig, parse_value};
use super::engine::MergeReport;
use engram_ckpt::{Error, Model, Result};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Metadata key of a stage's output: its record (JSON), compared to decide a skip.
pub const STAGE_KEY: &str = "engram.stage";

/// One document of a multi-stage config.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: String,
    /// The document without `name`: a plain merge config.
    pub doc: Value,
    /// Names of the stages it reads, in the order it refers to them.
    pub deps: Vec<String>,
}

/// The non-empty YAML documents of `text` (an empty one, like after a trailing `---`, is
/// left out).
pub fn documents(text: &str) -> std::result::Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v =
            Value::deserialize(d).map_err(|e| format!("document {}: invalid YAML: {e}", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Whether `text` is a multi-stage config: more than one YAML document. A single document
/// (or text that is not valid YAML) is an ordinary config, read as before.
pub fn is_multi_stage(text: &str) -> bool {
    match documents(text) {
        Ok(d) => d.len() > 1,
        // A document separator after the first line: read as stages, so that the error
        // names the document it is in.
        Err(_) => text.lines().skip(1).any(|l| l.trim_end() == "---"),
    }
}

/// Checks a stage name: it becomes the folder `OUTDIR/<name>`, so it must be one plain path
/// component (not empty, no `/` or `\`, not `.` or `..`, no control characters).
pub fn check_name(name: &str) -> Result<()> {
    engram_ckpt::names::plain_name("stage name", name)
}

/// The model references of a config document: `base_model`, then each `models[].model`.
fn references(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = doc.get("base_model").and_then(Value::as_str) {
        out.push(b.to_string());
    }
    if let Some(Value::Sequence(list)) = doc.get("models") {
        for e in list {
            if let Some(m) = e.get("model").and_then(Value::as_str) {
                out.push(m.to_string());
            }
        }
    }
    out
}

/// Splits a multi-stage config into its stages, in file order: each document must be a
/// mapping with a string `name`, a valid and unique stage name.
pub fn parse(text: &str) -> Result<Vec<Stage>> {
    let docs = documents(text).map_err(Error::Invalid)?;
    let mut stages: Vec<Stage> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        let Value::Mapping(mut map) = doc else {
            return Err(Error::Invalid(format!(
                "document {}: a stage must be a YAML mapping (a merge config with 'name')",
                i + 1
            )));
        };
        let name = match map.remove("name") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "document {}: 'name' must be a string, found {other:?}",
                    i + 1
                )));
            }
            None => {
                return Err(Error::Invalid(format!(
                    "document {}: no 'name' (every stage of a multi-stage config names its output, OUTDIR/<name>)",
                    i + 1
                )));
            }
        };
        check_name(&name).map_err(|e| Error::Invalid(format!("document {}: {e}", i + 1)))?;
        if stages.iter().any(|s| s.name == name) {
            return Err(Error::Invalid(format!(
                "document {}: stage name '{name}' is used twice; names must be unique",
                i + 1
            )));
        }
        stages.push(Stage {
            name,
            doc: Value::Mapping(map),
            deps: Vec::new(),
        });
    }
    let names: BTreeSet<String> = stages.iter().map(|s| s.name.clone()).collect();
    for s in &mut stages {
        let mut deps = Vec::new();
        for r in references(&s.doc) {
            if names.contains(&r) && !deps.contains(&r) {
                deps.push(r);
            }
        }
        s.deps = deps;
    }
    Ok(stages)
}

/// The stages to run, as indices into `stages` in dependency order: all of them, or with
/// `target` that stage and the stages it needs. A cycle is an error naming its stages, an
/// unknown `target` one naming it.
pub fn order(stages: &[Stage], target: Option<&str>) -> Result<Vec<usize>> {
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let roots: Vec<usize> = match target {
        None => (0..stages.len()).collect(),
        Some(t) => vec![*index.get(t).ok_or_else(|| {
            Error::Invalid(format!(
                "--stage '{t}': no such stage (stages: {})",
                stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?],
    };
    // Depth-first, dependencies before dependants; `path` holds the stages being visited.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    let mut mark = vec![Mark::New; stages.len()];
    let mut out = Vec::new();
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        stages: &[Stage],
        index: &BTreeMap<&str, usize>,
        mark: &mut [Mark],
        path: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        match mark[i] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..]
                    .iter()
                    .map(|&p| stages[p].name.as_str())
                    .collect();
                cycle.push(&stages[i].name);
                return Err(Error::Invalid(format!(
                    "stages form a cycle: {} (a stage cannot use its own output)",
                    cycle.join(" -> ")
                )));
            }
            Mark::New => {}
        }
        mark[i] = Mark::Visiting;
        path.push(i);
        for d in &stages[i].deps {
            visit(index[d.as_str()], stages, index, mark, path, out)?;
        }
        path.pop();
        mark[i] = Mark::Done;
        out.push(i);
        Ok(())
    }
    for r in roots {
        visit(r, stages, &index, &mut mark, &mut path, &mut out)?;
    }
    Ok(out)
}

/// The output folder of stage `name` under `out_dir`. The name is checked again, so that no
/// stage writes outside `out_dir`.
pub fn output_path(out_dir: &Path, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let p = out_dir.join(name);
    // A link would lead the stage's output out of OUTDIR.
    if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::format(
            &p,
            format!(
                "the output of stage '{name}' is a symbolic link; stage outputs stay inside the output folder"
            ),
        ));
    }
    Ok(p)
}

/// Every stage's output path, by name.
pub fn outputs(stages: &[Stage], out_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    stages
        .iter()
        .map(|s| Ok((s.name.clone(), output_path(out_dir, &s.name)?)))
        .collect()
}

/// Checks, before anything runs, that every model reference of every stage is a stage or an
/// existing path (as written, or relative to `dir`, the config's folder); the error names
/// the stage and the reference.
pub fn check_references(stages: &[Stage], dir: &Path) -> Result<()> {
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for s in stages {
        for r in references(&s.doc) {
            if names.contains(&r.as_str()) || Path::new(&r).exists() || dir.join(&r).exists() {
                continue;
            }
            return Err(Error::Invalid(format!(
                "stage '{}': model '{r}' is neither a stage of this file (stages: {}) nor a model path (looked in the current folder and in {})",
                s.name,
                names.join(", "),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The merge config of stage `s`: its document parsed as one config, with references to
/// stages resolved to their outputs (`outputs`), other paths relative to `dir`.
pub fn config(s: &Stage, dir: &Path, outputs: &BTreeMap<String, PathBuf>) -> Result<MergeConfig> {
    parse_value(s.doc.clone(), dir, outputs)
        .map_err(|e| Error::Invalid(format!("stage '{}': {e}", s.name)))
}

/// The checksum identity of a model written by engram (`engram.output`), if it has one.
pub fn identity(m: &Model) -> Option<String> {
    m.metadata().get(engram_ckpt::checksum::OUTPUT_KEY).cloned()
}

/// The record of a stage, as stored under [`STAGE_KEY`] and compared for a skip: the stage's
/// name and document, its resolved models, the merge `options` that change its output, and
/// the identity of each input stage's output (`inputs`: name to identity).
pub fn record(
    s: &Stage,
    cfg: &MergeConfig,
    options: &serde_json::Value,
    inputs: &BTreeMap<String, Option<String>>,
) -> Result<String> {
    let doc = serde_json::to_value(&s.doc).map_err(|e| {
        Error::Invalid(format!(
            "stage '{}': the config cannot be recorded as JSON: {e}",
            s.name
        ))
    })?;
    // The models that are not stage outputs, by content: a model retrained in place under
    // the same path makes the stage run again.
    let external: BTreeMap<String, String> = cfg
        .base
        .iter()
        .chain(&cfg.models)
        .map(|p| (p.display().to_string(), fingerprint(p)))
        .collect();
    let v = serde_json::json!({
        "name": s.name,
        "config": doc,
        "base": cfg.base,
        "models": cfg.models,
        "options": options,
        "inputs": inputs,
        "fingerprints": external,
    });
    Ok(v.to_string())
}

/// What identifies a model's content cheaply: engram's checksum identity when it has one,
/// else each weight file's size and modification time (nanoseconds).
pub fn fingerprint(path: &Path) -> String {
    let Ok(m) = Model::open(path) else {
        return "unreadable".into();
    };
    if let Some(id) = identity(&m) {
        return id;
    }
    m.files()
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f.path()).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}:{len}:{mtime}", f.path().display())
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Why a stage runs, or that it is skipped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum Status {
    /// The output is complete and records this very stage.
    UpToDate,
    /// No output yet.
    Missing,
    /// The output does not open or does not verify (the error).
    Incomplete(String),
    /// The output records another config, other options or other inputs.
    Changed,
    /// The folder holds a model that no stage wrote (a user's model): never replaced.
    Foreign,
}

impl Status {
    pub fn describe(&self) -> String {
        match self {
            Status::UpToDate => "up to date".into(),
            Status::Missing => "no output yet".into(),
            Status::Incomplete(e) => format!("output incomplete ({e})"),
            Status::Changed => "config, options or inputs changed".into(),
            Status::Foreign => "holds a model no stage wrote".into(),
        }
    }
}

/// Whether the output at `out` is a complete output of the stage recorded as `record`.
pub fn status(out: &Path, record: &str) -> Status {
    if std::fs::symlink_metadata(out).is_err() {
        return Status::Missing;
    }
    let m = match Model::open(out) {
        Ok(m) => m,
        Err(e) => return Status::Incomplete(e.to_string()),
    };
    if let Err(e) = m.verify() {
        return Status::Incomplete(e.to_string());
    }
    // One shard of a sharded output whose index and other shards are gone opens on its own
    // and verifies: it is not the output.
    if let [f] = m.files()
        && lone_shard(f.path())
    {
        return Status::Incomplete(format!(
            "{} is one shard of a sharded output without its index",
            f.path().display()
        ));
    }
    match m.metadata().get(STAGE_KEY) {
        Some(r) if r == record => Status::UpToDate,
        Some(_) => Status::Changed,
        None => Status::Foreign,
    }
}

/// `model-0000i-of-0000n.safetensors` with n > 1.
fn lone_shard(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_suffix(".safetensors")
        .and_then(|n| n.split_once("-of-"))
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .is_some_and(|n| n > 1)
}

/// What happened to one stage.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageReport {
    pub name: String,
    pub output: String,
    /// `merged` or `skipped`.
    pub action: String,
    /// The state found before: why it was merged, or that it was up to date.
    pub status: Status,
    /// The stages it reads.
    pub inputs: Vec<String>,
    /// The merge's report; `None` when skipped.
    pub report: Option<MergeReport>,
}

/// Runs the stages `order` (from [`order`]) of `stages` into `out_dir`: each one is skipped if
/// [`status`] says it is up to date, else merged by `merge(stage, config, output, record)`,
/// which must store `record` under [`STAGE_KEY`] in the output's metadata. `options` are the
/// merge options recorded with each stage; `dir` is the config's folder; `on_stage` sees
/// each report as soon as the stage is done.
pub fn run(
    stages: &[Stage],
    order: &[usize],
    dir: &Path,
    out_dir: &Path,
    options: &serde_json::Value,
    merge: &mut dyn FnMut(&Stage, MergeConfig, &Path, &str) -> Result<MergeReport>,
    on_stage: &mut dyn FnMut(&StageReport),
) -> Result<Vec<StageReport>> {
    let outs = outputs(stages, out_dir)?;
    check_references(stages, dir)?;
    let mut reports = Vec::with_capacity(order.len());
    for &i in order {
        let s = &stages[i];
        let cfg = config(s, dir, &outs)?;
        let mut inputs = BTreeMap::new();
        for d in &s.deps {
            let m = Model::open(&outs[d]).map_err(|e| {
                Error::Invalid(format!("stage '{}': its input stage '{d}': {e}", s.name))
            })?;
            inputs.insert(d.clone(), identity(&m));
        }
        let rec = record(s, &cfg, options, &inputs)?;
        let out = &outs[&s.name];
        let st = status(out, &rec);
        let report = match st {
            Status::UpToDate => None,
            Status::Foreign => {
                return Err(Error::Invalid(format!(
                    "stage '{}': {} holds a model that no stage wrote; engram does not replace \
                     it (move it, or write the stages to another -o folder)",
                    s.name,
                    out.display()
                )));
            }
            _ => Some(
                merge(s, cfg, out, &rec)
                    .map_err(|e| Error::Invalid(format!("stage '{}': {e}", s.name)))?,
            ),
        };
        let r = StageReport {
            name: s.name.clone(),
            output: out.display().to_string(),
            action: if report.is_some() {
                "merged"
            } else {
                "skipped"
            }
            .into(),
            status: st,
            inputs: s.deps.clone(),
            report,
        };
        on_stage(&r);
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(stages: &[Stage], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| stages[i].name.clone()).collect()
    }

    const THREE: &str = "
name: c
merge_method: linear
models: [{model: a}, {model: b}]
---
name: a
merge_method: linear
models: [{model: x}, {model: y}]
---
name: b
merge_method: task_arithmetic
base_model: a
models: [{model: y}]
---
";

    #[test]
    fn splits_documents_and_orders_dependencies_first() {
        assert!(!is_multi_stage("merge_method: linear\nmodels: []\n"));
        assert!(!is_multi_stage("---\nmerge_method: linear\n---\n"));
        assert!(is_multi_stage(THREE));
        let s = parse(THREE).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].deps, ["a", "b"]);
        assert_eq!(s[2].deps, ["a"]);
        assert!(s.iter().all(|s| s.doc.get("name").is_none()));
        assert_eq!(names(&s, &order(&s, None).unwrap()), ["a", "b", "c"]);
        assert_eq!(names(&s, &order(&s, Some("b")).unwrap()), ["a", "b"]);
        let e = order(&s, Some("zz")).unwrap_err().to_string();
        assert!(e.contains("'zz'") && e.contains("a, b"), "{e}");
    }

    #[test]
    fn cycles_are_named() {
        let text = "name: a\nmerge_method: linear\nmodels: [{model: b}]\n---\n\
                    name: b\nmerge_method: linear\nmodels: [{model: c}]\n---\n\
                    name: c\nmerge_method: linear\nmodels: [{model: a}, {model: x}]\n";
        let s = parse(text).unwrap();
        let e = order(&s, None).unwrap_err().to_string();
        assert!(e.contains("a -> b -> c -> a"), "{e}");
        let own = "name: a\nmerge_method: linear\nmodels: [{model: a}]\n---\nname: b\nmerge_method: linear\nmodels: [{model: a}]\n";
        let s = parse(own).unwrap();
        let e = order(&s, None).unwrap_err().to_string();
        assert!(e.contains("a -> a"), "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        let doc = |name: &str| {
            format!("name: {name}\nmerge_method: linear\n---\nname: ok\nmerge_method: linear\n")
        };
        for (name, why) in [
            ("'a/b'", "separator"),
            ("'..'", "not a plain name"),
            ("''", "empty"),
            ("'.hidden'", "starts"),
            ("'x\\\\y'", "separator"),
            ("3", "must be a string"),
            ("ok", "used twice"),
        ] {
            let e = parse(&doc(name)).unwrap_err().to_string();
            let doc = if why == "used twice" {
                "document 2"
            } else {
                "document 1"
            };
            assert!(e.contains(why) && e.contains(doc), "{name}: {e}");
        }
        let e = parse("merge_method: linear\n---\nname: b\nmerge_method: linear\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 1") && e.contains("no 'name'"), "{e}");
        let e = parse("name: a\nmerge_method: linear\n---\n- 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 2") && e.contains("mapping"), "{e}");
        assert!(output_path(Path::new("o"), "..").is_err());
        assert_eq!(
            output_path(Path::new("o"), "s1").unwrap(),
            Path::new("o/s1")
        );
    }

    #[test]
    fn unknown_references_are_named_and_stage_names_resolve_to_outputs() {
        let d = tempfile::tempdir().unwrap();
        let text = "name: a\nmerge_method: linear\nmodels: [{model: m1}]\n---\n\
                    name: b\nmerge_method: linear\nmodels: [{model: a}, {model: nowhere}]\n";
        std::fs::create_dir(d.path().join("m1")).unwrap();
        let s = parse(text).unwrap();
        let e = check_references(&s, d.path()).unwrap_err().to_string();
        assert!(e.contains("stage 'b'") && e.contains("'nowhere'"), "{e}");
        let outs = outputs(&s, Path::new("OUT")).unwrap();
        let cfg = config(&s[0], d.path(), &outs).unwrap();
        assert_eq!(cfg.models, [d.path().join("m1")]);
        std::fs::create_dir(d.path().join("nowhere")).unwrap();
        check_references(&s, d.path()).unwrap();
        // `a` is the stage's output (which does not exist yet), not a folder named `a`.
        let cfg = config(&s[1], d.path(), &outs).unwrap();
        assert_eq!(cfg.models[0], Path::new("OUT/a"));
        // A record changes with the inputs' identity.
        let opts = serde_json::json!({});
        let mut inputs = BTreeMap::from([("a".to_string(), Some("1/1".to_string()))]);
        let r1 = record(&s[1], &cfg, &opts, &inputs).unwrap();
        inputs.insert("a".into(), Some("2/1".into()));
        assert_ne!(r1, record(&s[1], &cfg, &opts, &inputs).unwrap());
        assert_eq!(status(&d.path().join("none"), &r1), Status::Missing);
        assert!(matches!(
            status(&d.path().join("m1"), &r1),
            Status::Incomplete(_)
        ));
    }
}
