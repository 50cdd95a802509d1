//! Shared pieces of the regularization strategies (ewc, online-ewc, si, l2, classp): quadratic
//! penalties Σ_i w_i·(θ_i − a_i)² toward anchors, host parameters, state helpers. Card: shared/methods/regularization.md.

use crate::model::Net;
use crate::model::params::{flat_params, host_params};
use crate::strategy::State;
use crate::{Result, err};
use burn::prelude::*;
use std::collections::BTreeMap;

/// Host copies of the parameters: (name, shape, values), in visiting order.
pub type Host = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn host(net: &Net) -> Host {
    host_params(net)
        .into_iter()
        .map(|(i, v)| (i.name, i.shape, v))
        .collect()
}

/// One quadratic term: per parameter slot an optional weight (None: 1) and an anchor.
#[derive(Clone, Debug, Default)]
pub struct Term {
    pub weight: Option<Vec<Vec<f32>>>,
    pub anchor: Vec<Vec<f32>>,
}

/// Σ_terms Σ_slots w·(θ − a)² over the parameters named in `names` (a subset of the model's,
/// in visiting order). Constants are copied to the device once and cached.
#[derive(Default)]
pub struct Quadratic {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub terms: Vec<Term>,
    cache: Vec<Vec<(Option<Tensor<1>>, Tensor<1>)>>,
}

impl Quadratic {
    /// Sets the parameter slots (clears the terms).
    pub fn set_slots(&mut self, names: Vec<String>, shapes: Vec<Vec<usize>>) {
        self.names = names;
        self.shapes = shapes;
        self.terms.clear();
        self.cache.clear();
    }

    /// Forget the device copies (after the terms changed).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    pub fn floats(&self) -> usize {
        self.terms
            .iter()
            .map(|t| {
                t.anchor.iter().map(Vec::len).sum::<usize>()
                    + t.weight
                        .as_ref()
                        .map_or(0, |w| w.iter().map(Vec::len).sum::<usize>())
            })
            .sum()
    }

    /// `loss + scale·penalty`; just `loss` while there are no terms (the first task).
    pub fn add_to(&mut self, loss: Tensor<1>, net: &Net, device: &Device, scale: f64) -> Tensor<1> {
        match self.penalty(net, device) {
            Some(p) => loss + p.mul_scalar(scale as f32),
            None => loss,
        }
    }

    /// The penalty on the autodiff graph, or None when there are no terms.
    pub fn penalty(&mut self, net: &Net, device: &Device) -> Option<Tensor<1>> {
        if self.terms.is_empty() {
            return None;
        }
        if self.cache.len() != self.terms.len() {
            let up = |v: &Vec<f32>| {
                Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device)
            };
            self.cache = self
                .terms
                .iter()
                .map(|t| {
                    (0..self.names.len())
                        .map(|s| (t.weight.as_ref().map(|w| up(&w[s])), up(&t.anchor[s])))
                        .collect()
                })
                .collect();
        }
        let slot: BTreeMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut total: Option<Tensor<1>> = None;
        for (info, theta) in flat_params(net) {
            let Some(&s) = slot.get(info.name.as_str()) else {
                continue;
            };
            for c in &self.cache {
                let (w, a) = &c[s];
                let d2 = (theta.clone() - a.clone()).square();
                let term = match w {
                    Some(w) => (d2 * w.clone()).sum(),
                    None => d2.sum(),
                };
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
            }
        }
        total
    }

    /// The gradient of the (unscaled) penalty, Σ_terms 2·w·(θ − a), per slot, from host values.
    pub fn grad_host(&self, theta: &Host) -> Vec<Vec<f32>> {
        let by_name: BTreeMap<&str, &Vec<f32>> =
            theta.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
        self.names
            .iter()
            .enumerate()
            .map(|(s, n)| {
                let th = by_name.get(n.as_str()).map_or(&[][..], |v| v.as_slice());
                let mut g = vec![0f32; th.len()];
                for t in &self.terms {
                    for (i, gi) in g.iter_mut().enumerate() {
                        let w = t.weight.as_ref().map_or(1.0, |w| w[s][i]);
                        *gi += 2.0 * w * (th[i] - t.anchor[s][i]);
                    }
                }
                g
            })
            .collect()
    }

    /// Writes the terms as `{prefix}{k}.w.{name}` and `{prefix}{k}.a.{name}`.
    pub fn save(&self, prefix: &str, out: &mut State) {
        if let Some(o) = out.json.as_object_mut() {
            o.insert(format!("{prefix}slots"), serde_json::json!(self.names));
        }
        for (k, t) in self.terms.iter().enumerate() {
            for (s, n) in self.names.iter().enumerate() {
                if let Some(w) = &t.weight {
                    out.tensors.push((
                        format!("{prefix}{k}.w.{n}"),
                        self.shapes[s].clone(),
                        w[s].clone(),
                    ));
                }
                out.tensors.push((
                    format!("{prefix}{k}.a.{n}"),
                    self.shapes[s].clone(),
                    t.anchor[s].clone(),
                ));
            }
        }
    }

    /// Reads `terms` terms back (slots from the saved names, in order of first appearance).
    pub fn load(&mut self, prefix: &str, terms: usize, weighted: bool, st: &State) -> Result<()> {
        let map: BTreeMap<&str, (&Vec<usize>, &Vec<f32>)> = st
            .tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), (s, v)))
            .collect();
        let key = format!("{prefix}slots");
        let mut names: Vec<String> = st
            .json
            .get(&key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| err!("strategy state lacks '{key}'"))?;
        let first = format!("{prefix}0.a.");
        let mut shapes = Vec::with_capacity(names.len());
        if terms > 0 {
            for n in &names {
                let (s, _) = map
                    .get(format!("{first}{n}").as_str())
                    .ok_or_else(|| err!("strategy state lacks tensor '{first}{n}'"))?;
                shapes.push((*s).clone());
            }
        }
        let mut out = Vec::with_capacity(terms);
        for k in 0..terms {
            let get = |kind: &str, n: &str, shape: &[usize]| -> Result<Vec<f32>> {
                let key = format!("{prefix}{k}.{kind}.{n}");
                let (s, v) = map
                    .get(key.as_str())
                    .ok_or_else(|| err!("strategy state lacks tensor '{key}'"))?;
                let numel: usize = shape.iter().product();
                if s.as_slice() != shape || v.len() != numel {
                    return Err(err!("strategy state tensor '{key}' has the wrong shape"));
                }
                Ok((*v).clone())
            };
            let mut t = Term::default();
            let mut w = Vec::new();
            for (n, s) in names.iter().zip(&shapes) {
                t.anchor.push(get("a", n, s)?);
                if weighted {
                    w.push(get("w", n, s)?);
                }
            }
            t.weight = weighted.then_some(w);
            out.push(t);
        }
        if terms == 0 {
            names.clear();
            shapes.clear();
        }
        self.names = names;
        self.shapes = shapes;
        self.terms = out;
        self.cache.clear();
        Ok(())
    }
}

/// A named tensor of a saved state, checked against the expected length.
pub fn take(st: &State, name: &str, len: Option<usize>) -> Result<Vec<f32>> {
    let (_, _, v) = st
        .tensors
        .iter()
        .find(|(n, _, _)| n == name)
        .ok_or_else(|| err!("strategy state lacks tensor '{name}'"))?;
    if let Some(l) = len
        && v.len() != l
    {
        return Err(err!(
            "strategy state tensor '{name}' has {} values, expected {l}",
            v.len()
        ));
    }
    Ok(v.clone())
}

/// A non-negative finite number parameter, or an error naming it.
pub fn check_nonneg(strategy: &str, name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(err!(
            "strategy {strategy}: {name} must be a finite number >= 0, got {v}"
        ))
    }
}

/// The saved json field as u64, or an error.
pub fn json_usize(st: &State, key: &str) -> Result<usize> {
    st.json
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| err!("strategy state lacks '{key}'"))
}
