//! L2 anchor: the F ≡ 1 baseline of EWC (Kirkpatrick et al. 2017, their "L2" comparison).
//! Card: shared/methods/regularization.md (L2 anchor).
//!
//! Loss L_t + (λ/2)·‖θ_S − θ*_S‖², θ* the weights at the end of the previous task, S the
//! parameters whose names start with one of `params` (default: all). The penalty is coupled
//! (added to the loss, so Adam rescales its gradient); decoupled decay toward θ* is a
//! different method and is not what runs here.

use super::parts::penalty::{Quadratic, Term, check_nonneg, host, json_usize};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// λ, half convention (engram choice: 1; sweep in decades).
    #[serde(default = "default_lambda")]
    lambda: f64,
    /// Name prefixes of the anchored parameters (empty: all).
    #[serde(default)]
    params: Vec<String>,
}

fn default_lambda() -> f64 {
    1.0
}

pub struct L2 {
    pub lambda: f64,
    pub prefixes: Vec<String>,
    pub quad: Quadratic,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("l2", v)?;
    check_nonneg("l2", "lambda", p.lambda)?;
    if p.params.iter().any(String::is_empty) {
        return Err("strategy l2: params entries must be non-empty name prefixes".into());
    }
    Ok(Box::new(L2 {
        lambda: p.lambda,
        prefixes: p.params,
        quad: Quadratic::default(),
    }))
}

impl L2 {
    fn selected(&self, name: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

impl Strategy for L2 {
    fn name(&self) -> &'static str {
        "l2"
    }

    fn params(&self) -> serde_json::Value {
        let (lambda, params) = (self.lambda, self.prefixes.clone());
        serde_json::to_value(Params { lambda, params }).unwrap_or_default()
    }

    fn before_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        let h = host(&net);
        if let Some(p) = self
            .prefixes
            .iter()
            .find(|p| !h.iter().any(|(n, _, _)| n.starts_with(p.as_str())))
        {
            return Err(err!(
                "strategy l2: no parameter name starts with '{p}'; names: {}",
                h.iter()
                    .map(|(n, _, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        _batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.quad.add_to(loss, net, cx.device, self.lambda / 2.0)
    }

    fn after_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        let h: Vec<_> = host(&net)
            .into_iter()
            .filter(|(n, _, _)| self.selected(n))
            .collect();
        self.quad.set_slots(
            h.iter().map(|(n, _, _)| n.clone()).collect(),
            h.iter().map(|(_, s, _)| s.clone()).collect(),
        );
        self.quad.terms.push(Term {
            weight: None,
            anchor: h.into_iter().map(|(_, _, v)| v).collect(),
        });
        Ok(net)
    }

    fn state_bytes(&self) -> u64 {
        4 * self.quad.floats() as u64
    }

    fn state(&self) -> State {
        let mut st = State {
            tensors: Vec::new(),
            json: serde_json::json!({"terms": self.quad.terms.len()}),
        };
        self.quad.save("l2.", &mut st);
        st
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let terms = json_usize(&st, "terms")?;
        if terms > 1 {
            return Err(err!(
                "strategy l2: state has {terms} anchors, expected at most 1"
            ));
        }
        self.quad.load("l2.", terms, false, &st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{
        assert_close, batch, blobs, ctx, device, grads_host, mlp,
    };
    use serde_json::json;

    fn make(v: serde_json::Value) -> L2 {
        let p: Params = parse_params("l2", &v).expect("params");
        L2 {
            lambda: p.lambda,
            prefixes: p.params,
            quad: Quadratic::default(),
        }
    }

    /// Moves every parameter by +0.25·(k+1) (k: its index), so θ ≠ θ*.
    fn moved(net: Net) -> Net {
        let h = host(&net);
        let m = h
            .iter()
            .enumerate()
            .map(|(k, (n, _, v))| {
                (
                    n.clone(),
                    v.iter().map(|x| x + 0.25 * (k + 1) as f32).collect(),
                )
            })
            .collect();
        crate::model::params::load_params(net, &m).expect("load")
    }

    #[test]
    fn gradient_is_lambda_delta_on_the_chosen_subset() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        for (prefixes, all) in [(json!([]), true), (json!(["fc.1"]), false)] {
            let mut l2 = make(json!({"lambda": 4.0, "params": prefixes}));
            let net = mlp(&s, 5, &dev);
            let net = l2.before_task(&ctx(&s, 0, &dev), net).expect("before");
            let anchor = host(&net);
            let net = l2.after_task(&ctx(&s, 0, &dev), net).expect("after");
            let net = moved(net);
            let b = batch(&s, 1, 3, &dev);
            let zero = Tensor::<1>::zeros([1], &dev);
            let logits = net.forward(b.x.clone());
            let loss = l2.loss(&ctx(&s, 1, &dev), &net, &b, logits, zero);
            let g = grads_host(&net, loss);
            for (k, (n, _, a)) in anchor.iter().enumerate() {
                let on = all || n.starts_with("fc.1");
                let want: Vec<f32> = a
                    .iter()
                    .map(|_| if on { 4.0 * 0.25 * (k + 1) as f32 } else { 0.0 })
                    .collect();
                assert_close(&g[k], &want, 1e-5, n);
            }
        }
    }

    #[test]
    fn params_state_and_errors() {
        assert!(build(&json!({"lambda": -1.0})).is_err());
        assert!(build(&json!({"lambda": 1.0, "decay": 1})).is_err());
        assert!(build(&json!({"params": [""]})).is_err());
        assert_eq!(
            build(&json!(null)).expect("defaults").params()["lambda"],
            1.0
        );
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let mut bad = make(json!({"params": ["nope"]}));
        assert!(
            bad.before_task(&ctx(&s, 0, &dev), mlp(&s, 3, &dev))
                .is_err()
        );
        let mut l2 = make(json!({"lambda": 2.0}));
        let net = l2
            .after_task(&ctx(&s, 0, &dev), mlp(&s, 3, &dev))
            .expect("after");
        let st = l2.state();
        let mut back = make(json!({"lambda": 2.0}));
        back.load_state(st.clone()).expect("load");
        assert_eq!(back.state().tensors, st.tensors);
        assert_eq!(back.state_bytes(), l2.state_bytes());
        let moved = moved(net);
        let pa = l2
            .quad
            .penalty(&moved, &dev)
            .expect("p")
            .into_scalar::<f32>();
        let pb = back
            .quad
            .penalty(&moved, &dev)
            .expect("p")
            .into_scalar::<f32>();
        assert_eq!(pa, pb);
        assert!(pa > 0.0);
        let mut trunc = st;
        trunc.tensors.pop();
        assert!(make(json!({})).load_state(trunc).is_err());
    }
}
