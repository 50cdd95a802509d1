//! Training and measuring the character-level language model ([`crate::model::char_lm`]) for
//! Deep Ignorance's text analogue (card `shared/methods/robustness_safety.md`): descent on
//! next-byte cross-entropy (pretraining, fine-tuning attacks), ascent (unlearning), and the
//! loss per character on named document sets, on chosen characters of them, and with a
//! prompt before them (the in-context test).
//!
//! Steps use the trainer's fused optimizer ([`crate::train::fused::Optimizer`]) and
//! [`OptimConfig`] (its schedule over the steps of one [`Lm::fit`], its gradient clipping),
//! so the same settings mean what they mean in `engram train`.

use crate::model::char_lm::{CharLm, CharLmConfig, windows};
use crate::optim::OptimConfig;
use crate::train::fused::Optimizer;
use crate::{Result, err};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// Documents as one byte stream, from which training windows are drawn uniformly.
#[derive(Clone, Debug, Default)]
pub struct TextSet {
    bytes: Vec<u8>,
}

impl TextSet {
    pub fn new<S: AsRef<str>>(docs: &[S]) -> TextSet {
        TextSet {
            bytes: docs.iter().flat_map(|d| d.as_ref().bytes()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `n` windows of `len` bytes at uniform positions.
    fn sample(&self, rng: &mut Rng, n: usize, len: usize) -> Vec<&[u8]> {
        let top = self.bytes.len() - len;
        (0..n)
            .map(|_| {
                let at = rng.below(top + 1);
                &self.bytes[at..at + len]
            })
            .collect()
    }
}

/// One stretch of optimisation: `steps` steps of `batch` windows of `window + 1` bytes (the
/// model reads `window` bytes and predicts each next one).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fit {
    pub steps: usize,
    pub batch: usize,
    /// Bytes of context per window (at most the model's context).
    pub window: usize,
    pub optim: OptimConfig,
    /// Ascend the loss instead of descending it (unlearning by gradient ascent).
    pub ascend: bool,
}

impl Fit {
    pub fn validate(&self, model: &CharLmConfig) -> Result<()> {
        if self.batch == 0 || self.window < 2 {
            return Err(err!("lm fit: batch must be ≥ 1 and window ≥ 2"));
        }
        if self.window > model.context {
            return Err(err!(
                "lm fit: window {} is longer than the model's context {}",
                self.window,
                model.context
            ));
        }
        self.optim.validate()
    }
}

/// A language model being trained: the network, its optimizer state and its sampling
/// stream. Same seed, same data, same settings: same bytes out.
pub struct Lm {
    pub config: CharLmConfig,
    net: CharLm,
    opt: Optimizer,
    rng: Rng,
    /// Optimizer steps taken, all fits together.
    pub steps: usize,
}

/// A loss over a set of characters: nats per character and the number of characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Loss {
    pub nats: f64,
    pub chars: usize,
}

impl Lm {
    /// A fresh network of `config`, drawn from `seed`.
    pub fn new(config: CharLmConfig, optim: &OptimConfig, seed: u64) -> Result<Lm> {
        let device = Device::flex().autodiff();
        let net = {
            let _g = crate::backend::seeded(&device, seed);
            config.init(&device)?
        };
        Ok(Lm {
            config,
            net,
            opt: Optimizer::new(optim),
            rng: Rng::keyed(seed, "lm-windows", 0),
            steps: 0,
        })
    }

    /// This model's weights with a fresh optimizer and a sampling stream of `seed` (a
    /// fine-tune starting from a saved model).
    pub fn fork(&self, optim: &OptimConfig, seed: u64) -> Lm {
        Lm {
            config: self.config,
            net: self.net.clone(),
            opt: Optimizer::new(optim),
            rng: Rng::keyed(seed, "lm-windows", 1),
            steps: 0,
        }
    }

    /// The network without autodiff, for measuring.
    pub fn net(&self) -> CharLm {
        self.net.valid()
    }

    /// Runs `fit` on `set`; `each(step, loss)` after every step (the loss of that batch,
    /// before the update). Returns the mean batch loss.
    pub fn fit(
        &mut self,
        set: &TextSet,
        fit: &Fit,
        each: &mut dyn FnMut(usize, f64),
    ) -> Result<f64> {
        fit.validate(&self.config)?;
        if set.len() < fit.window + 1 {
            return Err(err!(
                "lm fit: the text ({} bytes) is shorter than one window ({} bytes)",
                set.len(),
                fit.window + 1
            ));
        }
        let device = Device::flex().autodiff();
        let mut total = 0.0;
        for s in 0..fit.steps {
            let rows = set.sample(&mut self.rng, fit.batch, fit.window + 1);
            let (x, y) = windows(&rows, &device);
            let loss = self.net.nll(x, y).mean();
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(err!("lm fit: the loss is {value} at step {s}"));
            }
            let objective = if fit.ascend { loss.neg() } else { loss };
            let grads = GradientsParams::from_grads(objective.backward(), &self.net);
            let lr = fit.optim.lr_at(s, fit.steps, 0);
            self.net = self.opt.step(lr, self.net.clone(), grads);
            self.steps += 1;
            total += value;
            each(s, value);
        }
        Ok(total / fit.steps.max(1) as f64)
    }

    /// Writes the network as safetensors (names from burn's module tree).
    pub fn save(&self, out: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        crate::model::io::save(&self.net(), out, metadata)
            .map_err(|e| err!("{}: {e}", out.display()))
    }

    /// A model of `config` with the weights saved in `path` (optimizer fresh).
    pub fn load(config: CharLmConfig, optim: &OptimConfig, seed: u64, path: &Path) -> Result<Lm> {
        let mut lm = Lm::new(config, optim, seed)?;
        lm.net = crate::model::io::load(lm.net, path)?;
        Ok(lm)
    }
}

/// Windows measured per forward pass.
const EVAL_BATCH: usize = 64;

/// The negative log-likelihood of every byte of `text` after the first, each predicted from
/// the bytes before it in its window: `text` is cut into windows of `window + 1` bytes that
/// overlap by one, so every byte but the first is a target exactly once.
pub fn byte_nll(net: &CharLm, text: &[u8], window: usize) -> Vec<f32> {
    // A window the model cannot read is read at the nearest length it can.
    let window = window.clamp(1, net.context());
    let mut rows: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at + 1 < text.len() {
        rows.push(&text[at..(at + window + 1).min(text.len())]);
        at += window;
    }
    let device = Device::flex();
    let mut out = Vec::with_capacity(text.len().saturating_sub(1));
    // Full windows in batches; the last, shorter one alone.
    let full = rows.iter().take_while(|r| r.len() == window + 1).count();
    for b in rows[..full].chunks(EVAL_BATCH) {
        let (x, y) = windows(b, &device);
        out.extend(crate::backend::host(net.nll(x, y)));
    }
    if let Some(last) = rows.get(full) {
        let (x, y) = windows(&[last], &device);
        out.extend(crate::backend::host(net.nll(x, y)));
    }
    out
}

/// The final hidden state averaged over the positions of each text (its first `context`
/// bytes; texts must not be empty): n × model width on host, and the width. Texts of one
/// length share a forward pass. The sentence embeddings whose anisotropy `engram bench
/// binary` measures (card: Ker-VLJEPA parts).
pub fn mean_hidden<S: AsRef<str>>(net: &CharLm, texts: &[S]) -> Result<(Vec<f32>, usize)> {
    let rows: Vec<&[u8]> = texts
        .iter()
        .map(|t| {
            let b = t.as_ref().as_bytes();
            &b[..b.len().min(net.context())]
        })
        .collect();
    if let Some(i) = rows.iter().position(|r| r.is_empty()) {
        return Err(err!("mean hidden state: text {i} is empty"));
    }
    let device = Device::flex();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].len(), i));
    let mut by_text: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    let mut width = 0;
    for group in order.chunk_by(|&a, &b| rows[a].len() == rows[b].len()) {
        for ids in group.chunks(EVAL_BATCH) {
            let s = rows[ids[0]].len();
            let x: Vec<i64> = ids
                .iter()
                .flat_map(|&i| rows[i].iter().map(|&c| c as i64))
                .collect();
            let x = Tensor::<2, Int>::from_data(TensorData::new(x, [ids.len(), s]), &device);
            let h = net.hidden(x).mean_dim(1);
            width = h.dims()[2];
            let h = crate::backend::host(h);
            for (k, &i) in ids.iter().enumerate() {
                by_text[i] = h[k * width..(k + 1) * width].to_vec();
            }
        }
    }
    Ok((by_text.concat(), width))
}

/// Nats per character over `docs`, every byte after each document's first.
pub fn loss<S: AsRef<str>>(net: &CharLm, docs: &[S], window: usize) -> Loss {
    masked_loss(net, docs, window, |_, _| true)
}

/// Nats per character over the bytes of `docs` for which `keep(doc, byte index)` holds (the
/// byte at index i is predicted from those before it).
pub fn masked_loss<S: AsRef<str>>(
    net: &CharLm,
    docs: &[S],
    window: usize,
    keep: impl Fn(usize, usize) -> bool,
) -> Loss {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (d, doc) in docs.iter().enumerate() {
        let nll = byte_nll(net, doc.as_ref().as_bytes(), window);
        for (i, v) in nll.iter().enumerate() {
            if keep(d, i + 1) {
                sum += *v as f64;
                n += 1;
            }
        }
    }
    Loss {
        nats: if n == 0 { f64::NAN } else { sum / n as f64 },
        chars: n,
    }
}

/// Nats per character of each `target` (all of one length) read after its `prompt` (all of
/// one length; prompt + target at most the model's context).
pub fn prompted_loss(net: &CharLm, pairs: &[(&[u8], &[u8])]) -> Result<Loss> {
    let Some(&(p0, t0)) = pairs.first() else {
        return Ok(Loss {
            nats: f64::NAN,
            chars: 0,
        });
    };
    let (pl, tl) = (p0.len(), t0.len());
    if pairs.iter().any(|(p, t)| p.len() != pl || t.len() != tl) || tl == 0 || pl == 0 {
        return Err(err!(
            "prompted loss: prompts and targets must be non-empty, with one length each"
        ));
    }
    if pl + tl > net.context() + 1 {
        return Err(err!(
            "prompted loss: prompt {pl} + target {tl} bytes exceed the context {} + 1",
            net.context()
        ));
    }
    let device = Device::flex();
    let rows: Vec<Vec<u8>> = pairs.iter().map(|(p, t)| [*p, *t].concat()).collect();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for b in rows.chunks(EVAL_BATCH) {
        let refs: Vec<&[u8]> = b.iter().map(Vec::as_slice).collect();
        let (x, y) = windows(&refs, &device);
        let s = pl + tl - 1;
        let nll = crate::backend::host(net.nll(x, y));
        for r in 0..b.len() {
            // Targets are the bytes at pl.. of the row: outputs pl-1 .. s-1.
            for v in &nll[r * s + pl.saturating_sub(1)..(r + 1) * s] {
                sum += *v as f64;
                n += 1;
            }
        }
    }
    Ok(Loss {
        nats: sum / n.max(1) as f64,
        chars: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimKind;

    fn tiny() -> CharLmConfig {
        CharLmConfig {
            d_model: 32,
            layers: 1,
            heads: 2,
            context: 32,
        }
    }

    fn fit(steps: usize, ascend: bool, lr: f64) -> Fit {
        Fit {
            steps,
            batch: 8,
            window: 32,
            optim: OptimConfig::new(OptimKind::Adam, lr),
            ascend,
        }
    }

    const TEXT: &str = "the quick brown fox jumps over the lazy dog. ";

    /// Texts batched by length give each text's own mean hidden state, in the texts' order;
    /// an empty text is refused.
    #[test]
    fn mean_hidden_states_are_per_text_whatever_the_batching() {
        let lm = Lm::new(tiny(), &OptimConfig::new(OptimKind::Adam, 1e-3), 3).unwrap();
        let texts = ["to be", "or not", "to be!", "x", &TEXT.repeat(3)];
        let (all, w) = mean_hidden(&lm.net(), &texts).unwrap();
        assert_eq!((w, all.len()), (32, 5 * 32));
        for (i, t) in texts.iter().enumerate() {
            let (one, _) = mean_hidden(&lm.net(), &[t]).unwrap();
            for (a, b) in one.iter().zip(&all[i * w..(i + 1) * w]) {
                assert!((a - b).abs() < 1e-5, "text {i}: {a} vs {b}");
            }
        }
        assert_ne!(all[..w], all[w..2 * w]);
        assert!(mean_hidden(&lm.net(), &["a", ""]).is_err());
    }

    #[test]
    fn descent_learns_a_text_and_ascent_unlearns_it() {
        let set = TextSet::new(&[TEXT.repeat(20)]);
        let adam = OptimConfig::new(OptimKind::Adam, 3e-3);
        let mut lm = Lm::new(tiny(), &adam, 1).unwrap();
        let before = loss(&lm.net(), &[TEXT.repeat(3)], 32).nats;
        lm.fit(&set, &fit(60, false, 3e-3), &mut |_, _| {}).unwrap();
        let learned = loss(&lm.net(), &[TEXT.repeat(3)], 32).nats;
        assert!(learned < before - 1.0, "{before} -> {learned}");
        // Gradient ascent raises the target loss.
        let mut up = lm.fork(&adam, 2);
        up.fit(&set, &fit(10, true, 1e-3), &mut |_, _| {}).unwrap();
        let unlearned = loss(&up.net(), &[TEXT.repeat(3)], 32).nats;
        assert!(unlearned > learned + 0.3, "{learned} -> {unlearned}");
        assert_eq!((lm.steps, up.steps), (60, 10));
    }

    #[test]
    fn same_seed_same_model() {
        let set = TextSet::new(&[TEXT.repeat(5)]);
        let adam = OptimConfig::new(OptimKind::Adam, 1e-3);
        let run = || {
            let mut lm = Lm::new(tiny(), &adam, 7).unwrap();
            lm.fit(&set, &fit(3, false, 1e-3), &mut |_, _| {}).unwrap();
            crate::backend::host(lm.net().head.weight.val())
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn every_byte_after_the_first_is_measured_once() {
        let lm = Lm::new(tiny(), &OptimConfig::default(), 3).unwrap();
        let net = lm.net();
        for n in [2usize, 33, 34, 100] {
            let t = TEXT.repeat(3);
            assert_eq!(byte_nll(&net, &t.as_bytes()[..n], 32).len(), n - 1);
        }
        // Masks pick characters; a prompt changes the loss of what follows it.
        let l = masked_loss(&net, &[TEXT], 32, |_, i| i % 2 == 0);
        assert_eq!(l.chars, (TEXT.len() - 1) / 2);
        let t = &TEXT.as_bytes()[..16];
        let a = prompted_loss(&net, &[(&TEXT.as_bytes()[16..32], t)]).unwrap();
        let b = prompted_loss(&net, &[(&b"zzzzzzzzzzzzzzzz"[..], t)]).unwrap();
        assert_eq!((a.chars, b.chars), (16, 16));
        assert_ne!(a.nats, b.nats);
        assert!(prompted_loss(&net, &[(&[0u8; 20][..], &[0u8; 20][..])]).is_err());
        assert!(prompted_loss(&net, &[(&[][..], &[0u8; 20][..])]).is_err());
    }

    #[test]
    fn a_text_shorter_than_a_window_is_refused() {
        let mut lm = Lm::new(tiny(), &OptimConfig::default(), 0).unwrap();
        let e = lm
            .fit(
                &TextSet::new(&["short"]),
                &fit(1, false, 1e-3),
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(e.to_string().contains("shorter than one window"));
        let mut f = fit(1, false, 1e-3);
        f.window = 64;
        assert!(f.validate(&tiny()).is_err());
    }
}
