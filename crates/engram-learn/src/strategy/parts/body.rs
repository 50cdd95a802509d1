//! What the selective fine-tuning strategies choose from and how they freeze the rest: the
//! "body" weights of a network (every parameter of two or more dimensions, seen as a matrix
//! of `shape[0]` rows, except the output layer's weight, embeddings (the card keeps them
//! frozen: a ViT's `patch_embed` and `pos_embed`) and a feedback input (`fb.*`, IDER's), and
//! dropping the gradients of the
//! parameters a strategy does not train, so that the run's optimizer leaves them alone.

use crate::model::Net;
use crate::model::params::{ParamInfo, drop_grad, param_infos};
use burn::optim::GradientsParams;

/// A body weight: its parameter and its matrix view (rows × cols = numel).
#[derive(Clone, Debug)]
pub struct BodyWeight {
    pub info: ParamInfo,
    pub rows: usize,
    pub cols: usize,
}

/// The body weights of `net` in visiting order.
pub fn body_weights(net: &Net) -> Vec<BodyWeight> {
    let (head_w, _) = net.head_names();
    param_infos(net)
        .into_iter()
        .filter(|p| {
            p.shape.len() >= 2
                && p.name != head_w
                && !p.name.contains("embed")
                && !p.name.starts_with("fb.")
        })
        .map(|p| {
            let rows = p.shape[0];
            let cols = p.numel() / rows.max(1);
            BodyWeight {
                info: p,
                rows,
                cols,
            }
        })
        .collect()
}

/// Values of the parameters named by `which` (e.g. the output layer's, for the strategies
/// that train it besides their own).
pub fn values_of(net: &Net, which: impl Fn(&str) -> bool) -> usize {
    param_infos(net)
        .iter()
        .filter(|p| which(&p.name))
        .map(|p| p.numel())
        .sum()
}

/// Whether `name` is a parameter of the output layer.
pub fn is_head(net: &Net, name: &str) -> bool {
    let (w, b) = net.head_names();
    name == w || name == b
}

/// Writes weights a strategy computed after the optimizer step (`pending`, by name) into the
/// network. The names come from this same network, so the write cannot miss; should it, the
/// network stays as the optimizer left it and the error is recorded in `failed`, for the
/// strategy to report at the end of the task (`after_step` cannot fail).
pub fn write_back(
    net: Net,
    pending: Option<std::collections::BTreeMap<String, Vec<f32>>>,
    failed: &mut Option<crate::Error>,
) -> Net {
    match pending {
        Some(w) => {
            let keep = net.clone();
            match crate::model::params::set_params(net, &w) {
                Ok(n) => n,
                Err(e) => {
                    failed.get_or_insert(e);
                    keep
                }
            }
        }
        None => net,
    }
}

/// Drops the gradient of every parameter for which `keep` is false.
pub fn keep_grads(net: &Net, grads: &mut GradientsParams, keep: impl Fn(&str) -> bool) {
    for p in param_infos(net) {
        if !keep(&p.name) {
            drop_grad(grads, &p);
        }
    }
}
