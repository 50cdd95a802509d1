//! Synthetic model families for tests and benchmarks (`engram synth`).
//!
//! A base with the tensor names and shapes of a Llama-style decoder-only transformer, and N
//! fine-tunes = base + deltas with realistic structure: a component shared by all fine-tunes
//! (common drift) plus a task-specific one; per-tensor magnitudes drawn log-normally (some
//! tensors move much more than others, deeper layers and norms differently), and a share of
//! tensors whose delta is sparse. Every value is a pure function of (seed, tensor, chunk), so
//! the output is byte-identical whatever the thread count.

use crate::rng::Rng;
use engram_ckpt::{DType, Error, ModelWriter, Result, TensorSpec, WriteOptions};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ArchConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
}

impl ArchConfig {
    /// A named size: tiny (~0.2M parameters), small (~0.1B), medium (~0.5B), 1b, 3b, 7b.
    pub fn preset(name: &str) -> Option<ArchConfig> {
        let p = match name {
            "tiny" => return Some(ArchConfig::new(512, 64, 2)),
            "small" => 100e6,
            "medium" => 500e6,
            "1b" => 1e9,
            "3b" => 3e9,
            "7b" => 7e9,
            _ => return None,
        };
        ArchConfig::for_params(p as u64).ok()
    }

    fn new(vocab: usize, hidden: usize, layers: usize) -> ArchConfig {
        let heads = (hidden / 64).max(1);
        // Grouped-query attention from 2048 wide on, as in current open models.
        let kv = if hidden >= 2048 {
            (heads / 4).max(1)
        } else {
            heads
        };
        ArchConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: (hidden * 8 / 3).div_ceil(64) * 64,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
        }
    }

    /// The shape closest to `params` parameters with a usual depth-to-width ratio; more than
    /// [`MAX_PARAMS`] is refused before the tensor list is built, and a count no shape comes
    /// within 10% of is refused.
    pub fn for_params(params: u64) -> Result<ArchConfig> {
        if params > MAX_PARAMS {
            return Err(Error::Invalid(format!(
                "{params} parameters: synthetic models hold at most {MAX_PARAMS}"
            )));
        }
        let widths = [
            128usize, 256, 384, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192,
        ];
        let mut best: Option<(f64, ArchConfig)> = None;
        for h in widths {
            let vocab = if h < 512 { 8192 } else { 32000 };
            let base = ArchConfig::new(vocab, h, 1);
            let per_layer = base.layer_params() as f64;
            let fixed = base.param_count() as f64 - per_layer;
            let layers = ((params as f64 - fixed) / per_layer).round();
            if layers < 1.0 {
                continue;
            }
            let ideal = h as f64 / 96.0;
            let score = (layers / ideal).ln().abs();
            if best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, ArchConfig::new(vocab, h, layers as usize)));
            }
        }
        // A size no shape comes near is refused, never replaced by another model.
        match best {
            Some((_, a)) if a.param_count().abs_diff(params) <= params / 10 => Ok(a),
            near => Err(Error::Invalid(format!(
                "{params} parameters: no synthetic shape comes within 10% ({}); use --size tiny for a small model",
                near.map_or("none has a layer at that size".into(), |(_, a)| format!(
                    "the nearest has {}",
                    a.param_count()
                ))
            ))),
        }
    }

    fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let kv = (self.num_key_value_heads * (self.hidden_size / self.num_attention_heads)) as u64;
        let i = self.intermediate_size as u64;
        2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    }

    pub fn param_count(&self) -> u64 {
        self.tensors().iter().map(|t| t.numel() as u64).sum()
    }

    /// Tensor specs in the usual order (embeddings, layers, final norm, head), as F32.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden_size;
        let kv = self.num_key_value_heads * (h / self.num_attention_heads);
        let i = self.intermediate_size;
        let mut v = vec![TensorSpec::new(
            "model.embed_tokens.weight",
            DType::F32,
            &[self.vocab_size, h],
        )];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            v.push(TensorSpec::new(
                format!("{p}.input_layernorm.weight"),
                DType::F32,
                &[h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.self_attn.q_proj.weight"),
                DType::F32,
                &[h, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.self_attn.k_proj.weight"),
                DType::F32,
                &[kv, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.self_attn.v_proj.weight"),
                DType::F32,
                &[kv, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.self_attn.o_proj.weight"),
                DType::F32,
                &[h, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.post_attention_layernorm.weight"),
                DType::F32,
                &[h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.mlp.gate_proj.weight"),
                DType::F32,
                &[i, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.mlp.up_proj.weight"),
                DType::F32,
                &[i, h],
            ));
            v.push(TensorSpec::new(
                format!("{p}.mlp.down_proj.weight"),
                DType::F32,
                &[h, i],
            ));
        }
        v.push(TensorSpec::new("model.norm.weight", DType::F32, &[h]));
        v.push(TensorSpec::new(
            "lm_head.weight",
            DType::F32,
            &[self.vocab_size, h],
        ));
        v
    }

    /// A Hugging Face style config.json for the folder.
    pub fn config_json(&self, dtype: DType) -> serde_json::Value {
        let torch_dtype = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
            "engram_synthetic": true,
        })
    }
}

/// Largest synthetic model (1T parameters, ten times the largest preset family member).
pub const MAX_PARAMS: u64 = 1_000_000_000_000;
/// Most fine-tunes of one family (every model's writer is open at once).
pub const MAX_FINETUNES: usize = 1024;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub arch: ArchConfig,
    pub finetunes: usize,
    pub dtype: DType,
    pub seed: u64,
    /// Typical relative size of a fine-tuning delta (|δ| / |θ₀| per tensor).
    pub delta_scale: f32,
    pub max_shard_bytes: Option<u64>,
}

/// How one fine-tune moves one tensor.
struct DeltaPlan {
    /// Standard deviation of the delta entries.
    std: f32,
    /// Share of entries that move (1.0 = dense).
    density: f32,
    /// Weight of the component shared by all fine-tunes, in [0, 1].
    shared: f32,
}

fn is_norm(name: &str) -> bool {
    name.contains("norm")
}

fn base_value(name: &str, r: &mut Rng) -> f32 {
    if is_norm(name) {
        1.0 + 0.05 * r.bell()
    } else {
        0.02 * r.bell()
    }
}

fn delta_plan(seed: u64, name: &str, task: usize, scale: f32) -> DeltaPlan {
    let mut r = Rng::keyed(seed ^ 0xde17a, name, task as u64);
    // Log-normal magnitude: some tensors move ten times more than others.
    let lognormal = (1.0 * r.normal()).exp();
    let base_std = if is_norm(name) { 0.05 } else { 0.02 };
    // A third of the tensors get a sparse delta (5-30% of entries move).
    let density = if r.uniform() < 0.33 {
        0.05 + 0.25 * r.uniform()
    } else {
        1.0
    };
    DeltaPlan {
        std: base_std * scale * lognormal / density.sqrt(),
        density,
        shared: 0.2 + 0.4 * r.uniform(),
    }
}

const SYNTH_CHUNK: usize = 1 << 18;

/// Writes `out/base` and `out/ft-1` ... `out/ft-N` (model folders with config.json).
/// `progress` receives the number of parameters finished (per model set) as work proceeds.
pub fn write_family(
    out: &Path,
    opts: &SynthOptions,
    metadata: &std::collections::BTreeMap<String, String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PathBuf>> {
    if opts.finetunes > MAX_FINETUNES {
        return Err(Error::Invalid(format!(
            "{} fine-tunes: a synthetic family holds at most {MAX_FINETUNES}",
            opts.finetunes
        )));
    }
    if !(opts.delta_scale.is_finite() && opts.delta_scale >= 0.0) {
        return Err(Error::Invalid(format!(
            "delta scale {} must be a finite number >= 0",
            opts.delta_scale
        )));
    }
    let specs: Vec<TensorSpec> = opts
        .arch
        .tensors()
        .into_iter()
        .map(|mut s| {
            s.dtype = opts.dtype;
            s
        })
        .collect();
    let wopts = WriteOptions {
        max_shard_bytes: opts.max_shard_bytes,
        metadata: metadata.clone(),
    };
    let mut dirs = vec![out.join("base")];
    dirs.extend((1..=opts.finetunes).map(|t| out.join(format!("ft-{t}"))));
    let writers = dirs
        .iter()
        .map(|d| ModelWriter::create(d, specs.clone(), &wopts))
        .collect::<Result<Vec<_>>>()?;
    let plans: Vec<Vec<DeltaPlan>> = specs
        .iter()
        .map(|s| {
            (1..=opts.finetunes)
                .map(|t| delta_plan(opts.seed, &s.name, t, opts.delta_scale))
                .collect()
        })
        .collect();
    // Work items: (tensor, chunk), each independent and deterministic.
    let items: Vec<(usize, usize)> = specs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.numel().div_ceil(SYNTH_CHUNK)).map(move |c| (i, c)))
        .collect();
    items.par_iter().try_for_each(|&(ti, c)| -> Result<()> {
        let s = &specs[ti];
        let start = c * SYNTH_CHUNK;
        let n = SYNTH_CHUNK.min(s.numel() - start);
        let mut r = Rng::keyed(opts.seed, &s.name, c as u64);
        let base: Vec<f32> = (0..n).map(|_| base_value(&s.name, &mut r)).collect();
        // A scale too large for the dtype (`--delta-scale 1e30` in f16) is an error, not an
        // infinity written.
        let check = |d: &Path, v: &[f32]| {
            crate::output::check_values(d, &s.name, s.dtype, start, v, false, &|_| true)
        };
        check(&dirs[0], &base)?;
        writers[0].write_f32_at(&s.name, start, &base)?;
        let mut shared_rng = Rng::keyed(opts.seed ^ 0x5a4ed, &s.name, c as u64);
        let shared: Vec<f32> = (0..n).map(|_| shared_rng.bell()).collect();
        let mut ft = vec![0f32; n];
        for (t, w) in writers.iter().enumerate().skip(1) {
            let plan = &plans[ti][t - 1];
            let mut r = Rng::keyed(opts.seed ^ (t as u64) << 32, &s.name, c as u64);
            let own_w = (1.0 - plan.shared * plan.shared).sqrt();
            for k in 0..n {
                let keep = plan.density >= 1.0 || r.uniform() < plan.density;
                let d = plan.shared * shared[k] + own_w * r.bell();
                ft[k] = if keep {
                    base[k] + plan.std * d
                } else {
                    base[k]
                };
            }
            check(&dirs[t], &ft)?;
            w.write_f32_at(&s.name, start, &ft)?;
        }
        progress(n as u64);
        Ok(())
    })?;
    let config = serde_json::to_vec_pretty(&opts.arch.config_json(opts.dtype)).unwrap_or_default();
    let mut written = Vec::new();
    for (w, d) in writers.into_iter().zip(&dirs) {
        written.extend(w.finish(&[])?);
        let cfg = d.join("config.json");
        engram_ckpt::write_atomic(&cfg, &config)?;
        written.push(cfg);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_ckpt::Model;

    #[test]
    fn presets_hit_their_sizes() {
        for (name, p) in [
            ("small", 100e6),
            ("medium", 500e6),
            ("1b", 1e9),
            ("3b", 3e9),
            ("7b", 7e9),
        ] {
            let a = ArchConfig::preset(name).unwrap();
            let got = a.param_count() as f64;
            assert!((got / p - 1.0).abs() <= 0.1, "{name}: {got}");
        }
    }

    /// A count is built within 10%, or refused: never another size silently.
    #[test]
    fn counts_are_honoured_or_refused() {
        for p in [1u64, 1000, 2_000_000] {
            let e = ArchConfig::for_params(p).unwrap_err().to_string();
            assert!(e.contains("within 10%"), "{p}: {e}");
        }
        let mut p = 3_000_000u64;
        while p < 20_000_000_000 {
            let got = ArchConfig::for_params(p).unwrap().param_count();
            assert!(got.abs_diff(p) <= p / 10, "{p}: {got}");
            p = p * 3 / 2;
        }
    }

    #[test]
    fn family_is_deterministic_and_structured() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            arch: ArchConfig::preset("tiny").unwrap(),
            finetunes: 2,
            dtype: DType::BF16,
            seed: 3,
            delta_scale: 0.05,
            max_shard_bytes: None,
        };
        let md = Default::default();
        write_family(&dir.path().join("a"), &opts, &md, &|_| {}).unwrap();
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| write_family(&dir.path().join("b"), &opts, &md, &|_| {}))
            .unwrap();
        for m in ["base", "ft-1", "ft-2"] {
            let a = std::fs::read(dir.path().join("a").join(m).join("model.safetensors")).unwrap();
            let b = std::fs::read(dir.path().join("b").join(m).join("model.safetensors")).unwrap();
            assert_eq!(a, b, "{m} differs between thread counts");
        }
        let base = Model::open(&dir.path().join("a/base")).unwrap();
        let ft = Model::open(&dir.path().join("a/ft-1")).unwrap();
        assert_eq!(base.side_files().len(), 1); // config.json
        let mut rel = Vec::new();
        for t in base.tensors() {
            let b = t.to_f32().unwrap();
            let f = ft.require(t.name()).unwrap().to_f32().unwrap();
            let d: f32 = b
                .iter()
                .zip(&f)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt();
            let n: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            rel.push(d / n);
        }
        let max = rel.iter().cloned().fold(0.0, f32::max);
        let min = rel.iter().cloned().fold(f32::MAX, f32::min);
        assert!(
            min > 0.0 && max > 3.0 * min,
            "deltas should vary across tensors: {min} {max}"
        );
    }
}
