//! Compatibility of models before a merge (`engram check`): what differs across them, and
//! what `engram merge` does with each difference, as the merge engine really behaves.
//!
//! The output of a merge follows a template ([`super::merge::plan`]): the base when there is
//! one, else the first model. Every difference is measured against it, and each finding
//! states the engine's behaviour:
//!
//! - a float tensor some model lacks: an error; with `allow_missing` and a base, the base's
//!   tensor is kept (without a base the engine still refuses: there is nothing to keep);
//! - a non-float tensor some model lacks: an error; with `allow_missing`, the template's is
//!   copied;
//! - a tensor the template lacks: an error; with `allow_missing`, left out of the output;
//! - a shape that differs (vocabulary sizes included): always an error. The engine does not
//!   pad or truncate embeddings;
//! - float dtypes that differ: merged anyway (computed in f32, written in the template's
//!   dtype unless `out_dtype` says otherwise); a non-float dtype where the template has a
//!   float one is an error; a non-float tensor must be identical everywhere (it is copied);
//! - side files (tokenizer, `config.json`): the output carries the template's, so a
//!   tokenizer file or `vocab_size` that differs is a warning, not an error.

use engram_ckpt::{Error, Model, Result, TensorView};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

/// Suffixes of tensor names whose rows are the vocabulary (input embeddings, output heads).
pub const VOCAB_SUFFIXES: &[&str] = &[
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "lm_head.weight",
    "output.weight",
    "tok_embeddings.weight",
];

/// Side files compared by content: the tokenizer's.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
];

/// Largest `config.json` read for its `vocab_size`.
const CONFIG_LIMIT: u64 = 16 << 20;

/// What differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The template has the tensor; some model lacks it.
    MissingTensor,
    /// Some model has a tensor the template lacks.
    ExtraTensor,
    /// Shapes differ (other than a vocabulary's rows).
    Shape,
    /// The rows of a vocabulary tensor, or `vocab_size` in `config.json`, differ.
    VocabSize,
    /// Dtypes differ.
    Dtype,
    /// A non-float tensor (copied, not computed) differs in its values.
    Values,
    /// A tokenizer file differs in content, or some model lacks it.
    TokenizerFile,
}

/// What the merge does with a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The merge refuses (nothing is written).
    Error,
    /// The base's tensor is kept in the output (`allow_missing`).
    KeepBase,
    /// The template's non-float tensor is copied (`allow_missing`).
    CopyTemplate,
    /// The tensor is left out of the output (`allow_missing`).
    LeaveOut,
    /// Merged in f32 and written in the output dtype.
    Convert,
    /// The output carries the template's side file (or none, if the template has none).
    TemplateFile,
}

/// One difference across the models.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// The tensor concerned, if the finding is about a tensor.
    pub tensor: Option<String>,
    /// The side file concerned (its name in the model folder), if about a file.
    pub file: Option<String>,
    /// One value per model, in [`CompatReport::models`] order; `None`: the model has no such
    /// tensor or file. Shapes as `[a, b]`, dtypes by name, vocabulary sizes as numbers,
    /// files as `fnv1a64:<16 hex digits>`.
    pub values: Vec<Option<String>>,
    pub action: Action,
    /// What the merge does, in a sentence.
    pub behaviour: String,
}

/// Everything `engram check` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompatReport {
    /// The models compared: the base first when given, then the models; values of every
    /// finding follow this order.
    pub models: Vec<String>,
    /// Whether `models[0]` is a base (else it is the first model).
    pub has_base: bool,
    /// The model the output follows (tensors, dtypes, side files): `models[0]`.
    pub template: String,
    pub allow_missing: bool,
    /// Tensors of the template.
    pub tensors: usize,
    /// Each model's vocabulary size: the rows of its first vocabulary tensor (by
    /// [`VOCAB_SUFFIXES`]), else `vocab_size` of its `config.json`; `None`: neither.
    pub vocab_sizes: Vec<Option<u64>>,
    /// No finding makes the merge fail.
    pub compatible: bool,
    pub findings: Vec<Finding>,
}

impl CompatReport {
    /// Findings whose action is [`Action::Error`].
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.action == Action::Error)
            .count()
    }
}

/// Whether a tensor name is a vocabulary tensor (its rows are tokens).
pub fn is_vocab_tensor(name: &str) -> bool {
    VOCAB_SUFFIXES.iter().any(|s| {
        name.strip_suffix(s)
            .is_some_and(|head| head.is_empty() || head.ends_with('.'))
    })
}

/// Compares `models` (at least one besides the base; at least two without one) as a merge
/// of them onto `base` would, with or without `allow_missing`. Reads tensor headers, the
/// bytes of non-float tensors, and the side files; never the float data.
pub fn check(base: Option<&Model>, models: &[&Model], allow_missing: bool) -> Result<CompatReport> {
    let all: Vec<&Model> = base.into_iter().chain(models.iter().copied()).collect();
    if models.is_empty() || all.len() < 2 {
        return Err(Error::Invalid(
            "a check needs two models, or a base and a model".into(),
        ));
    }
    let template = all[0];
    let ctx = Ctx {
        template: &template.source().display().to_string(),
        has_base: base.is_some(),
        allow_missing,
    };
    let mut findings = Vec::new();
    for v in template.tensors() {
        let views: Vec<Option<TensorView>> = all.iter().map(|m| m.get(v.name())).collect();
        tensor_findings(&ctx, &all, &v, &views, &mut findings);
    }
    // Tensors the template lacks, in the order the models hold them.
    let mut seen = BTreeSet::new();
    for m in &all[1..] {
        for n in m.names().filter(|n| template.get(n).is_none()) {
            if seen.insert(n.to_string()) {
                findings.push(extra(&ctx, &all, n));
            }
        }
    }
    let configs = all
        .iter()
        .map(|m| config_vocab(m))
        .collect::<Result<Vec<_>>>()?;
    if configs.iter().any(|c| *c != configs[0]) {
        let values = configs.iter().map(|c| c.map(|n| n.to_string())).collect();
        let behaviour = match configs[0] {
            Some(n) => format!(
                "the output carries {}'s config.json (vocab_size {n}); the others' vocab_size is not used",
                ctx.template
            ),
            None => format!(
                "the output carries {}'s config.json, which has no vocab_size",
                ctx.template
            ),
        };
        findings.push(Finding {
            kind: Kind::VocabSize,
            tensor: None,
            file: Some("config.json".into()),
            values,
            action: Action::TemplateFile,
            behaviour,
        });
    }
    for file in TOKENIZER_FILES {
        let hashes = all
            .iter()
            .map(|m| side_file(m, file).map(|p| file_hash(&p)).transpose())
            .collect::<Result<Vec<_>>>()?;
        if hashes.iter().all(|h| *h == hashes[0]) {
            continue;
        }
        let behaviour = match &hashes[0] {
            Some(_) => format!(
                "the output carries {}'s {file}; the other models' is not used (models trained with other tokens merge into nonsense: align the tokenizers first)",
                ctx.template
            ),
            None => format!(
                "the output has no {file}: {} has none, and the output carries the template's side files only",
                ctx.template
            ),
        };
        findings.push(Finding {
            kind: Kind::TokenizerFile,
            tensor: None,
            file: Some(file.to_string()),
            values: hashes,
            action: Action::TemplateFile,
            behaviour,
        });
    }
    let vocab_sizes = all
        .iter()
        .zip(&configs)
        .map(|(m, c)| {
            m.tensors()
                .find(|v| is_vocab_tensor(v.name()) && !v.shape().is_empty())
                .map(|v| v.shape()[0] as u64)
                .or(*c)
        })
        .collect();
    let compatible = !findings.iter().any(|f| f.action == Action::Error);
    Ok(CompatReport {
        models: all
            .iter()
            .map(|m| m.source().display().to_string())
            .collect(),
        has_base: base.is_some(),
        template: ctx.template.to_string(),
        allow_missing,
        tensors: template.len(),
        vocab_sizes,
        compatible,
        findings,
    })
}

struct Ctx<'a> {
    template: &'a str,
    has_base: bool,
    allow_missing: bool,
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn tensor(
    kind: Kind,
    name: &str,
    values: Vec<Option<String>>,
    action: Action,
    b: String,
) -> Finding {
    Finding {
        kind,
        tensor: Some(name.to_string()),
        file: None,
        values,
        action,
        behaviour: b,
    }
}

/// The findings of one template tensor `v` (`views`: each model's, template first), in the
/// order the engine checks them.
fn tensor_findings(
    ctx: &Ctx,
    all: &[&Model],
    v: &TensorView,
    views: &[Option<TensorView>],
    out: &mut Vec<Finding>,
) {
    let name = v.name();
    let float = v.dtype().is_float();
    let present: Vec<&TensorView> = views.iter().flatten().collect();
    let lacking: Vec<String> = all
        .iter()
        .zip(views)
        .filter(|(_, x)| x.is_none())
        .map(|(m, _)| m.source().display().to_string())
        .collect();
    if !lacking.is_empty() {
        let values = views
            .iter()
            .map(|x| x.as_ref().map(|x| shape(x.shape())))
            .collect();
        let who = lacking.join(", ");
        let (action, b) = match (float, ctx.allow_missing, ctx.has_base) {
            (true, true, true) => (
                Action::KeepBase,
                format!("keep base: {who} lacks it; the output keeps the base's tensor"),
            ),
            (true, true, false) => (
                Action::Error,
                format!(
                    "error: {who} lacks it; the merge refuses (--allow-missing keeps the base's tensor, and there is no base: give one)"
                ),
            ),
            (true, false, base) => (
                Action::Error,
                format!(
                    "error: {who} lacks it; the merge refuses{}",
                    if base {
                        " (--allow-missing keeps the base's tensor)"
                    } else {
                        " (--allow-missing would keep a base's tensor; there is no base)"
                    }
                ),
            ),
            (false, true, _) => (
                Action::CopyTemplate,
                format!(
                    "copy: {who} lacks this {} tensor; the output copies {}'s",
                    v.dtype(),
                    ctx.template
                ),
            ),
            (false, false, _) => (
                Action::Error,
                format!(
                    "error: {who} lacks this {} tensor; the merge refuses (--allow-missing copies {}'s)",
                    v.dtype(),
                    ctx.template
                ),
            ),
        };
        out.push(tensor(Kind::MissingTensor, name, values, action, b));
    }
    if present.iter().any(|x| x.shape() != v.shape()) {
        let rows_only = present.iter().all(|x| {
            !x.shape().is_empty()
                && x.shape().len() == v.shape().len()
                && x.shape()[1..] == v.shape()[1..]
        });
        if is_vocab_tensor(name) && rows_only {
            let values: Vec<Option<String>> = views
                .iter()
                .map(|x| x.as_ref().map(|x| x.shape()[0].to_string()))
                .collect();
            let mut sizes: Vec<usize> = present.iter().map(|x| x.shape()[0]).collect();
            sizes.dedup();
            let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
            let b = format!(
                "error: vocabulary sizes differ ({}); the merge refuses (it neither pads nor truncates embeddings): align the vocabularies first (one tokenizer, embeddings resized to it)",
                sizes.join(" vs ")
            );
            out.push(tensor(Kind::VocabSize, name, values, Action::Error, b));
        } else {
            let values = views
                .iter()
                .map(|x| x.as_ref().map(|x| shape(x.shape())))
                .collect();
            let b =
                "error: shapes differ; the merge refuses (--allow-missing does not change this)"
                    .to_string();
            out.push(tensor(Kind::Shape, name, values, Action::Error, b));
        }
    }
    if present.iter().any(|x| x.dtype() != v.dtype()) {
        let values = views
            .iter()
            .map(|x| x.as_ref().map(|x| x.dtype().name().to_string()))
            .collect();
        let (action, b) = if !float {
            (
                Action::Error,
                format!(
                    "error: a {} tensor is copied from {}, so every model's must be the same; the merge refuses",
                    v.dtype(),
                    ctx.template
                ),
            )
        } else if let Some(x) = present.iter().find(|x| !x.dtype().is_float()) {
            (
                Action::Error,
                format!(
                    "error: dtype {} is not a float type; the merge refuses",
                    x.dtype()
                ),
            )
        } else {
            (
                Action::Convert,
                format!(
                    "merge: computed in f32, written as {} (the template's dtype; out_dtype / --out-dtype changes it)",
                    v.dtype()
                ),
            )
        };
        out.push(tensor(Kind::Dtype, name, values, action, b));
    }
    if !float
        && present
            .iter()
            .any(|x| (x.dtype(), x.shape()) == (v.dtype(), v.shape()) && x.bytes != v.bytes)
    {
        let values = views
            .iter()
            .map(|x| {
                x.as_ref()
                    .map(|x| format!("fnv1a64:{:016x}", fnv1a(FNV_OFFSET, x.bytes)))
            })
            .collect();
        let b = format!(
            "error: this {} tensor is copied from {}, not computed, so the others' values would be lost; the merge refuses",
            v.dtype(),
            ctx.template
        );
        out.push(tensor(Kind::Values, name, values, Action::Error, b));
    }
}

/// A tensor some model has and the template lacks.
fn extra(ctx: &Ctx, all: &[&Model], name: &str) -> Finding {
    let values = all
        .iter()
        .map(|m| m.get(name).map(|x| shape(x.shape())))
        .collect();
    let (action, b) = if ctx.allow_missing {
        (
            Action::LeaveOut,
            format!(
                "leave out: not in {}; the output does not have it",
                ctx.template
            ),
        )
    } else {
        (
            Action::Error,
            format!(
                "error: not in {}; the merge refuses (--allow-missing leaves it out of the output)",
                ctx.template
            ),
        )
    };
    tensor(Kind::ExtraTensor, name, values, action, b)
}

/// The side file `name` of model `m`, if it has one.
fn side_file(m: &Model, name: &str) -> Option<std::path::PathBuf> {
    m.side_files()
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .cloned()
}

/// `vocab_size` of the model's `config.json` (top level, or under `text_config`), if any.
fn config_vocab(m: &Model) -> Result<Option<u64>> {
    let Some(p) = side_file(m, "config.json") else {
        return Ok(None);
    };
    let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
    let mut bytes = Vec::new();
    f.take(CONFIG_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&p, e))?;
    if bytes.len() as u64 > CONFIG_LIMIT {
        return Err(Error::format(&p, "larger than 16 MiB: not a model config"));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(&p, format!("not valid JSON: {e}")))?;
    let size = v
        .get("vocab_size")
        .or_else(|| v.get("text_config").and_then(|t| t.get("vocab_size")));
    match size {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or_else(|| {
            Error::format(&p, format!("vocab_size {n} is not a non-negative integer"))
        }),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, continued from `h`: the content hash of side files and non-float
/// tensors (tells files apart; not a defence against someone forging a collision).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `fnv1a64:<hex>` of a file's content, read in pieces.
fn file_hash(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut h = FNV_OFFSET;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(p, e))?;
        if n == 0 {
            break;
        }
        h = fnv1a(h, &buf[..n]);
    }
    Ok(format!("fnv1a64:{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::write_model;
    use engram_ckpt::DType;

    #[test]
    fn vocab_names() {
        assert!(is_vocab_tensor("model.embed_tokens.weight"));
        assert!(is_vocab_tensor("lm_head.weight") && is_vocab_tensor("transformer.wte.weight"));
        assert!(!is_vocab_tensor("model.layers.0.mlp.output.weight.x"));
        assert!(!is_vocab_tensor("my_lm_head.weight"));
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn findings_follow_the_engine() {
        let d = tempfile::tempdir().unwrap();
        let f = |_: &str, i: usize| i as f32;
        let a = write_model(
            &d.path().join("a"),
            DType::F32,
            &[
                ("embed_tokens.weight", &[10, 4]),
                ("w", &[2, 2]),
                ("x", &[3]),
            ],
            &f,
        );
        let b = write_model(
            &d.path().join("b"),
            DType::BF16,
            &[
                ("embed_tokens.weight", &[12, 4]),
                ("w", &[2, 2]),
                ("y", &[3]),
            ],
            &f,
        );
        let r = check(None, &[&a, &b], false).unwrap();
        let kinds: Vec<(Kind, Action)> = r.findings.iter().map(|f| (f.kind, f.action)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::VocabSize, Action::Error),
                (Kind::Dtype, Action::Convert),
                (Kind::Dtype, Action::Convert),
                (Kind::MissingTensor, Action::Error),
                (Kind::ExtraTensor, Action::Error),
            ]
        );
        assert!(
            r.findings[0].behaviour.contains("10 vs 12"),
            "{:?}",
            r.findings[0]
        );
        assert_eq!(r.vocab_sizes, [Some(10), Some(12)]);
        assert!(!r.compatible && r.errors() == 3);
        // With a base and allow_missing: keep the base's, leave the extra out.
        let r = check(Some(&a), &[&a], true).unwrap();
        assert!(r.compatible && r.findings.is_empty());
        let c = write_model(&d.path().join("c"), DType::F32, &[("w", &[2, 2])], &f);
        let r = check(Some(&a), &[&c], true).unwrap();
        let acts: Vec<Action> = r.findings.iter().map(|f| f.action).collect();
        assert_eq!(acts, [Action::KeepBase, Action::KeepBase]);
        assert!(r.compatible);
        let r = check(None, &[&a, &c], true).unwrap();
        assert!(!r.compatible, "no base: nothing to keep");
        assert!(check(None, &[&a], false).is_err());
    }
}
