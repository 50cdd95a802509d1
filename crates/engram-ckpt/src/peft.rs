//! PEFT LoRA adapter folders: `adapter_config.json` plus `adapter_model.safetensors`, read and
//! validated like models (every module's factors, ranks and shapes), and written atomically.
//!
//! The layout is PEFT's (`save_pretrained` of a `LoraConfig` model): tensors
//! `base_model.model.<module>.lora_A.weight` (r × in) and `...lora_B.weight` (out × r) for
//! linear layers, `...lora_embedding_A` (r × vocab) and `...lora_embedding_B` (dim × r) for
//! embeddings, and full tensors `base_model.model.<module>.weight` for `modules_to_save`. A
//! module's update is ΔW = s·B·A (transposed for embeddings and `fan_in_fan_out`), with
//! s = α/r, or α/√r with `use_rslora`; `rank_pattern` and `alpha_pattern` override r and α per
//! module (a key matches a module whose name is the key or ends in `.key`).

use crate::error::{Error, Result};
use crate::file::TensorView;
use crate::model::Model;
use crate::writer::{ModelWriter, TensorSpec, WriteOptions, write_atomic};
use crate::{DType, Staged};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "adapter_config.json";
pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// The prefix PEFT gives every tensor of a `PeftModel` of a model with a head.
pub const PREFIX: &str = "base_model.model.";
/// Largest adapter_config.json read.
const CONFIG_LIMIT: u64 = 1 << 20;

/// `target_modules`: module names (or name suffixes), or one regular expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    List(Vec<String>),
    Regex(String),
}

/// The fields of `adapter_config.json` engram reads; every other field is kept as it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<Targets>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Every other key, written back unchanged.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn bias_none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// A config for a LoRA of rank `r` and scale α on the named modules, with the fields
    /// PEFT writes (inference mode, no dropout, no bias).
    pub fn new(r: usize, lora_alpha: f64, modules: Vec<String>) -> AdapterConfig {
        let mut other = Map::new();
        for (k, v) in [
            ("inference_mode", Value::Bool(true)),
            ("lora_dropout", Value::from(0.0)),
            ("init_lora_weights", Value::Bool(true)),
            ("task_type", Value::Null),
            ("revision", Value::Null),
            ("layers_to_transform", Value::Null),
            ("layers_pattern", Value::Null),
        ] {
            other.insert(k.into(), v);
        }
        AdapterConfig {
            peft_type: "LORA".into(),
            r,
            lora_alpha,
            target_modules: Some(Targets::List(modules)),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
            bias: bias_none(),
            modules_to_save: None,
            base_model_name_or_path: None,
            other,
        }
    }

    /// The rank and α of module `name` (patterns first, then `r` and `lora_alpha`).
    pub fn rank_alpha(&self, name: &str) -> (usize, f64) {
        let r = pattern(&self.rank_pattern, name).unwrap_or(self.r);
        let a = pattern(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        (r, a)
    }

    /// The scale s of module `name`: α/r, or α/√r with rsLoRA.
    pub fn scaling(&self, name: &str) -> f64 {
        let (r, a) = self.rank_alpha(name);
        if self.use_rslora {
            a / (r as f64).sqrt()
        } else {
            a / r as f64
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::format(path, msg));
        if self.peft_type != "LORA" {
            return bad(format!(
                "peft_type is '{}'; engram reads LoRA adapters (\"LORA\") only",
                self.peft_type
            ));
        }
        if self.r == 0 {
            return bad("r is 0; a LoRA rank is at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return bad(format!("lora_alpha is {}", self.lora_alpha));
        }
        if self.use_dora {
            return bad(
                "use_dora is true: DoRA's magnitude vectors are not supported by engram".into(),
            );
        }
        if self.bias != "none" {
            return bad(format!(
                "bias is '{}': adapters that train biases are not supported (bias must be \"none\")",
                self.bias
            ));
        }
        for (k, &r) in &self.rank_pattern {
            if r == 0 {
                return bad(format!("rank_pattern['{k}'] is 0"));
            }
        }
        for (k, a) in &self.alpha_pattern {
            if !a.is_finite() {
                return bad(format!("alpha_pattern['{k}'] is {a}"));
            }
        }
        // PEFT reads pattern keys as regular expressions; engram matches names and suffixes,
        // which agree only while a key has no metacharacter but '.'.
        for k in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            if let Some(c) = k.chars().find(|c| "\\^$*+?()[]{}|".contains(*c)) {
                return bad(format!(
                    "pattern key '{k}' is a regular expression ('{c}'); engram matches module \
                     names and name suffixes only"
                ));
            }
        }
        Ok(())
    }
}

/// PEFT's pattern rule (`get_pattern_key`): a key applies to a module named `key` or ending in
/// `.key`; of several keys the first in the config's order applies, which for a saved config
/// is sorted order (PEFT writes it with sorted keys), the order of this map.
fn pattern<T: Copy>(map: &BTreeMap<String, T>, name: &str) -> Option<T> {
    map.iter()
        .find(|(k, _)| name == k.as_str() || name.ends_with(&format!(".{k}")))
        .map(|(_, &v)| v)
}

/// How a module's update is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// ΔW (out × in) = s·B·A, or its transpose with `fan_in_fan_out`.
    Linear,
    /// ΔW (vocab × dim) = s·(B·A)ᵀ.
    Embedding,
}

/// One adapted module: the names of its two factors in the adapter file.
#[derive(Clone, Debug, Serialize)]
pub struct LoraModule {
    /// The module's name in the base model (its weight is `<name>.weight`).
    pub name: String,
    pub kind: ModuleKind,
    pub a: String,
    pub b: String,
    pub rank: usize,
    /// The shape of the base weight this module updates.
    pub weight_shape: [usize; 2],
    pub scaling: f64,
}

impl LoraModule {
    /// The base tensor this module updates.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
}

/// An opened, validated adapter folder.
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// The adapter's tensors.
    pub weights: Model,
    /// Modules in the file's tensor order.
    pub modules: Vec<LoraModule>,
    /// Full tensors the adapter replaces (`modules_to_save`): (file tensor, base tensor).
    pub saved: Vec<(String, String)>,
}

/// Whether `dir` looks like a PEFT adapter folder (holds `adapter_config.json`).
pub fn is_adapter(dir: &Path) -> bool {
    dir.join(CONFIG_NAME).is_file()
}

impl Adapter {
    /// Opens `dir`, validating the config, every tensor name, each module's pair of factors
    /// (both present, ranks agreeing with the config, float dtypes, finite values) and the
    /// checksums engram records.
    pub fn open(dir: &Path) -> Result<Adapter> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::format(
                dir,
                format!(
                    "is {}; a PEFT adapter is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}",
                    crate::file::kind_of(&meta)
                ),
            ));
        }
        let cpath = dir.join(CONFIG_NAME);
        let (bytes, _guard) = crate::commit::read_input(&cpath, "an adapter config", CONFIG_LIMIT)?;
        let config: AdapterConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&cpath, format!("not a LoRA adapter config: {e}")))?;
        config.validate(&cpath)?;
        let wpath = dir.join(WEIGHTS_NAME);
        if !wpath.exists() && dir.join("adapter_model.bin").exists() {
            return Err(Error::format(
                dir,
                "holds adapter_model.bin (a pickle), not adapter_model.safetensors; engram reads \
                 safetensors only (re-save with safe_serialization=True)",
            ));
        }
        let weights = Model::open(&wpath)?;
        weights.verify()?;
        let (modules, saved) = modules_of(&config, &weights, &wpath)?;
        if modules.is_empty() {
            return Err(Error::format(
                &wpath,
                "holds no LoRA factors (lora_A/lora_B tensors)",
            ));
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            config,
            weights,
            modules,
            saved,
        })
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.weights.require(name)
    }

    /// The module named `name`.
    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// Parameters held by the factors.
    pub fn param_count(&self) -> u64 {
        self.weights.param_count()
    }
}

/// A factor's role, parsed from a tensor name without the prefix.
fn factor_of(rest: &str) -> Option<(&str, ModuleKind, bool)> {
    for (suffix, kind, is_a) in [
        (".lora_A.weight", ModuleKind::Linear, true),
        (".lora_B.weight", ModuleKind::Linear, false),
        (".lora_embedding_A", ModuleKind::Embedding, true),
        (".lora_embedding_B", ModuleKind::Embedding, false),
    ] {
        if let Some(m) = rest.strip_suffix(suffix) {
            return Some((m, kind, is_a));
        }
    }
    None
}

type Modules = (Vec<LoraModule>, Vec<(String, String)>);

fn modules_of(config: &AdapterConfig, w: &Model, path: &Path) -> Result<Modules> {
    struct Pair {
        kind: ModuleKind,
        a: Option<String>,
        b: Option<String>,
    }
    let mut pairs: Vec<(String, Pair)> = Vec::new();
    let mut saved = Vec::new();
    for t in w.tensors() {
        let name = t.name();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return Err(Error::tensor(
                path,
                name,
                format!("does not start with '{PREFIX}', as PEFT names adapter tensors"),
            ));
        };
        if !t.dtype().is_float() {
            return Err(Error::tensor(
                path,
                name,
                format!("dtype {} is not a float dtype", t.dtype().name()),
            ));
        }
        t.check_finite()?;
        if rest.contains(".lora_") && factor_of(rest).is_none() {
            return Err(Error::tensor(
                path,
                name,
                "is not a LoRA factor engram knows (lora_A.weight, lora_B.weight, \
                 lora_embedding_A, lora_embedding_B); DoRA and other variants are not supported",
            ));
        }
        let Some((module, kind, is_a)) = factor_of(rest) else {
            saved.push((name.to_string(), rest.to_string()));
            continue;
        };
        if t.shape().len() != 2 {
            return Err(Error::tensor(
                path,
                name,
                format!("shape {:?}: a LoRA factor is a matrix", t.shape()),
            ));
        }
        let i = match pairs.iter().position(|(m, _)| m == module) {
            Some(i) => i,
            None => {
                pairs.push((
                    module.to_string(),
                    Pair {
                        kind,
                        a: None,
                        b: None,
                    },
                ));
                pairs.len() - 1
            }
        };
        let p = &mut pairs[i].1;
        if p.kind != kind {
            return Err(Error::tensor(
                path,
                name,
                "mixes linear and embedding factors for one module",
            ));
        }
        let slot = if is_a { &mut p.a } else { &mut p.b };
        *slot = Some(name.to_string());
    }
    let mut modules = Vec::new();
    for (module, p) in pairs {
        let (Some(a), Some(b)) = (p.a, p.b) else {
            return Err(Error::Invalid(format!(
                "{}: module '{module}' has only one of its two LoRA factors",
                path.display()
            )));
        };
        let (sa, sb) = (
            w.require(&a)?.shape().to_vec(),
            w.require(&b)?.shape().to_vec(),
        );
        let rank = sa[0];
        if sb[1] != rank {
            return Err(Error::tensor(
                path,
                &b,
                format!("shape {sb:?} does not fit its lora_A {sa:?} (rank {rank})"),
            ));
        }
        let (want, _) = config.rank_alpha(&module);
        if want != rank {
            return Err(Error::tensor(
                path,
                &a,
                format!("rank {rank}, but the config gives this module rank {want}"),
            ));
        }
        let weight_shape = match (p.kind, config.fan_in_fan_out) {
            (ModuleKind::Linear, false) => [sb[0], sa[1]],
            (ModuleKind::Linear, true) => [sa[1], sb[0]],
            // PEFT's embedding factors: A is r × vocab, B is dim × r.
            (ModuleKind::Embedding, _) => [sa[1], sb[0]],
        };
        modules.push(LoraModule {
            scaling: config.scaling(&module),
            name: module,
            kind: p.kind,
            a,
            b,
            rank,
            weight_shape,
        });
    }
    Ok((modules, saved))
}

/// One module of an adapter being written: its name and factor shapes.
#[derive(Clone, Debug)]
pub struct ModuleSpec {
    pub name: String,
    pub rank: usize,
    /// The base weight's shape (out × in).
    pub weight_shape: [usize; 2],
}

impl ModuleSpec {
    pub fn a_name(&self) -> String {
        format!("{PREFIX}{}.lora_A.weight", self.name)
    }
    pub fn b_name(&self) -> String {
        format!("{PREFIX}{}.lora_B.weight", self.name)
    }
}

/// Writes a linear-layer LoRA adapter folder: create, write every module's factors (in any
/// order, from any thread), finish. The folder appears complete or not at all; an earlier
/// adapter there is replaced as a whole (its adapter files), other files stay.
pub struct AdapterWriter {
    staged: Staged,
    writer: ModelWriter,
    config: AdapterConfig,
}

impl AdapterWriter {
    /// `config.r` is the common rank; modules of another rank get `rank_pattern` entries, and
    /// with them `alpha_pattern` entries keeping each module's scale α/r as `alpha_of` says.
    pub fn create(
        dir: &Path,
        mut config: AdapterConfig,
        modules: &[ModuleSpec],
        alpha_of: &dyn Fn(usize) -> f64,
        dtype: DType,
        metadata: BTreeMap<String, String>,
    ) -> Result<AdapterWriter> {
        if !dtype.is_float() {
            return Err(Error::Invalid(format!(
                "adapter dtype {} is not a float dtype",
                dtype.name()
            )));
        }
        let mut specs = Vec::new();
        for m in modules {
            if m.rank != config.r {
                config.rank_pattern.insert(m.name.clone(), m.rank);
                config
                    .alpha_pattern
                    .insert(m.name.clone(), alpha_of(m.rank));
            }
            let [out, inp] = m.weight_shape;
            specs.push(TensorSpec::new(m.a_name(), dtype, &[m.rank, inp]));
            specs.push(TensorSpec::new(m.b_name(), dtype, &[out, m.rank]));
        }
        config.validate(dir)?;
        // A pattern key also matches longer names ending in `.key`: every module must read
        // back with its own rank and scale, or PEFT would load another shape.
        for m in modules {
            let (r, a) = config.rank_alpha(&m.name);
            if r != m.rank || a != alpha_of(m.rank) {
                return Err(Error::Invalid(format!(
                    "module '{}' (rank {}) would read back as rank {r}, alpha {a}: a \
                     rank_pattern key of another module also matches its name; extract the \
                     two with separate --targets",
                    m.name, m.rank
                )));
            }
        }
        let staged = Staged::new(dir)?;
        let opts = WriteOptions {
            max_shard_bytes: None,
            metadata,
        };
        let writer = ModelWriter::create(&staged.path().join(WEIGHTS_NAME), specs, &opts)?;
        Ok(AdapterWriter {
            staged,
            writer,
            config,
        })
    }

    /// Writes one module's factors (A: r × in, B: out × r, row-major f32).
    pub fn write(&self, m: &ModuleSpec, a: &[f32], b: &[f32]) -> Result<()> {
        self.writer.write_f32(&m.a_name(), a)?;
        self.writer.write_f32(&m.b_name(), b)
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// Seals the weights, writes the config, and switches the folder into place.
    pub fn finish(self) -> Result<()> {
        self.writer.finish(&[])?;
        let text = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| Error::Invalid(format!("adapter config: {e}")))?;
        write_atomic(&self.staged.path().join(CONFIG_NAME), &text)?;
        self.staged
            .commit(&|n| n == WEIGHTS_NAME || n == CONFIG_NAME || n == "adapter_model.bin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_adapter(dir: &Path, cfg: &Value, tensors: &[(&str, Vec<usize>)]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CONFIG_NAME), cfg.to_string()).unwrap();
        let specs: Vec<_> = tensors
            .iter()
            .map(|(n, s)| TensorSpec::new(*n, DType::F32, s))
            .collect();
        let w =
            ModelWriter::create(&dir.join(WEIGHTS_NAME), specs, &WriteOptions::default()).unwrap();
        for (n, s) in tensors {
            let k: usize = s.iter().product();
            w.write_f32(n, &vec![0.5; k]).unwrap();
        }
        w.finish(&[]).unwrap();
    }

    fn cfg(extra: Value) -> Value {
        let mut c = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"});
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    }

    #[test]
    fn reads_modules_scaling_patterns_and_saved_tensors() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ad");
        write_adapter(
            &dir,
            &cfg(serde_json::json!({"rank_pattern": {"layers.1.q_proj": 2},
                                     "alpha_pattern": {"q_proj": 2}})),
            &[
                ("base_model.model.layers.0.q_proj.lora_A.weight", vec![4, 6]),
                ("base_model.model.layers.0.q_proj.lora_B.weight", vec![5, 4]),
                ("base_model.model.layers.1.q_proj.lora_A.weight", vec![2, 6]),
                ("base_model.model.layers.1.q_proj.lora_B.weight", vec![5, 2]),
                ("base_model.model.embed.lora_embedding_A", vec![4, 10]),
                ("base_model.model.embed.lora_embedding_B", vec![3, 4]),
                ("base_model.model.score.weight", vec![2, 3]),
            ],
        );
        let a = Adapter::open(&dir).unwrap();
        assert_eq!(a.modules.len(), 3);
        let m0 = a.module("layers.0.q_proj").unwrap();
        assert_eq!((m0.rank, m0.weight_shape), (4, [5, 6]));
        assert_eq!(m0.scaling, 2.0 / 4.0); // alpha_pattern's 2 over r = 4
        let m1 = a.module("layers.1.q_proj").unwrap();
        assert_eq!((m1.rank, m1.scaling), (2, 1.0));
        let e = a.module("embed").unwrap();
        assert_eq!((e.kind, e.weight_shape), (ModuleKind::Embedding, [10, 3]));
        assert_eq!(e.scaling, 2.0);
        assert_eq!(
            a.saved,
            vec![(
                "base_model.model.score.weight".into(),
                "score.weight".into()
            )]
        );
        assert_eq!(a.config.other["task_type"], "CAUSAL_LM");
    }

    #[test]
    fn refuses_bad_adapters_with_the_file_and_tensor() {
        let d = tempfile::tempdir().unwrap();
        let good = [
            ("base_model.model.q.lora_A.weight", vec![4, 6]),
            ("base_model.model.q.lora_B.weight", vec![5, 4]),
        ];
        type Case<'a> = (Value, Vec<(&'a str, Vec<usize>)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                cfg(serde_json::json!({"peft_type": "IA3"})),
                good.to_vec(),
                "peft_type",
            ),
            (
                cfg(serde_json::json!({"use_dora": true})),
                good.to_vec(),
                "DoRA",
            ),
            (
                cfg(serde_json::json!({"bias": "all"})),
                good.to_vec(),
                "bias",
            ),
            (
                cfg(serde_json::json!({"r": 0})),
                good.to_vec(),
                "rank is at least 1",
            ),
            (
                cfg(serde_json::json!({"r": 8})),
                good.to_vec(),
                "config gives this module rank 8",
            ),
            (cfg(Value::Null), good[..1].to_vec(), "only one of its two"),
            (
                cfg(Value::Null),
                vec![
                    ("base_model.model.q.lora_A.weight", vec![4, 6]),
                    ("base_model.model.q.lora_B.weight", vec![5, 3]),
                ],
                "does not fit",
            ),
            (
                cfg(Value::Null),
                vec![("q.lora_A.weight", vec![4, 6])],
                "does not start with",
            ),
            (
                cfg(Value::Null),
                vec![("base_model.model.q.lora_magnitude_vector", vec![5])],
                "not a LoRA factor",
            ),
            (
                cfg(Value::Null),
                vec![("base_model.model.q.weight", vec![5])],
                "no LoRA factors",
            ),
        ];
        for (i, (c, t, want)) in cases.into_iter().enumerate() {
            let dir = d.path().join(format!("a{i}"));
            write_adapter(&dir, &c, &t);
            let err = Adapter::open(&dir).err().unwrap().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
        let dir = d.path().join("bad-json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONFIG_NAME), "{").unwrap();
        let err = Adapter::open(&dir).err().unwrap().to_string();
        assert!(err.contains(CONFIG_NAME), "{err}");
        let err = Adapter::open(&d.path().join("none"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn writes_an_adapter_that_reads_back_with_patterns() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("out");
        let mods = vec![
            ModuleSpec {
                name: "l.0.q".into(),
                rank: 4,
                weight_shape: [5, 6],
            },
            ModuleSpec {
                name: "l.0.k".into(),
                rank: 2,
                weight_shape: [2, 6],
            },
        ];
        let cfg = AdapterConfig::new(4, 4.0, mods.iter().map(|m| m.name.clone()).collect());
        let w = AdapterWriter::create(&dir, cfg, &mods, &|r| r as f64, DType::F32, BTreeMap::new())
            .unwrap();
        w.write(&mods[0], &[0.25; 24], &[1.0; 20]).unwrap();
        w.write(&mods[1], &[0.5; 12], &[2.0; 4]).unwrap();
        w.finish().unwrap();
        let a = Adapter::open(&dir).unwrap();
        assert_eq!(a.config.rank_pattern["l.0.k"], 2);
        assert_eq!(a.module("l.0.k").unwrap().scaling, 1.0);
        assert_eq!(a.module("l.0.q").unwrap().scaling, 1.0);
        let b = a.tensor(&mods[1].b_name()).unwrap().to_f32().unwrap();
        assert_eq!(b, vec![2.0; 4]);
        let text = std::fs::read_to_string(dir.join(CONFIG_NAME)).unwrap();
        assert!(text.contains("\"inference_mode\": true"), "{text}");
        // A module named as another's suffix would read back with the other's rank.
        let clash = vec![
            ModuleSpec {
                name: "proj".into(),
                rank: 2,
                weight_shape: [2, 6],
            },
            ModuleSpec {
                name: "block.proj".into(),
                rank: 4,
                weight_shape: [5, 6],
            },
        ];
        let cfg = AdapterConfig::new(4, 4.0, vec!["proj".into(), "block.proj".into()]);
        let e = AdapterWriter::create(
            &d.path().join("clash"),
            cfg,
            &clash,
            &|r| r as f64,
            DType::F32,
            BTreeMap::new(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("block.proj") && e.contains("rank 2"), "{e}");
        assert!(!d.path().join("clash").exists());
    }
}
