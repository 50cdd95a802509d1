//! Merge parameters: what each method accepts, the one check of given values, and values
//! resolved for one tensor.

use super::MergeMethod;
use std::collections::BTreeMap;

/// The values a parameter takes. Out of the domain is an error, never clamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Any finite number (weights, λ, slerp's t: negative values and extrapolation mean
    /// something).
    Real,
    /// A share in [0, 1].
    Unit,
    /// A switch: 0 or 1 (`false` or `true`).
    Flag,
}

/// A parameter a method accepts, with mergekit's name and default.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    /// `None`: required.
    pub default: Option<f64>,
    /// Given per model (`models[i].parameters`) rather than globally.
    pub per_model: bool,
    pub domain: Domain,
    pub help: &'static str,
}

impl ParamSpec {
    /// Checks one value of this parameter against its domain.
    pub fn check(&self, v: f64) -> Result<(), String> {
        let ok = match self.domain {
            _ if !v.is_finite() => return Err(format!("{v} is not a finite number")),
            Domain::Real => true,
            Domain::Unit => (0.0..=1.0).contains(&v),
            Domain::Flag => v == 0.0 || v == 1.0,
        };
        match (ok, self.domain) {
            (true, _) => Ok(()),
            (false, Domain::Flag) => Err(format!("{v} is not 0 or 1 (false or true)")),
            (false, _) => Err(format!("{v} is outside [0, 1]")),
        }
    }
}

/// Scalar parameter values for one tensor (gradients and filters already resolved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(pub BTreeMap<String, f64>);

impl Params {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The value, or the spec default of `name` in `specs`.
    pub fn value(&self, specs: &[ParamSpec], name: &str) -> f64 {
        self.get(name)
            .or_else(|| {
                specs
                    .iter()
                    .find(|s| s.name == name)
                    .and_then(|s| s.default)
            })
            .unwrap_or(0.0)
    }

    pub fn flag(&self, specs: &[ParamSpec], name: &str) -> bool {
        self.value(specs, name) != 0.0
    }

    pub fn set(&mut self, name: &str, v: f64) -> &mut Self {
        self.0.insert(name.to_string(), v);
        self
    }
}

pub const WEIGHT: ParamSpec = ParamSpec {
    name: "weight",
    default: Some(1.0),
    per_model: true,
    domain: Domain::Real,
    help: "the model's weight in the sum",
};
pub const DENSITY: ParamSpec = ParamSpec {
    name: "density",
    default: Some(1.0),
    per_model: true,
    domain: Domain::Unit,
    help: "share of delta entries kept (1.0 keeps all)",
};
pub const NORMALIZE: ParamSpec = ParamSpec {
    name: "normalize",
    default: Some(1.0),
    per_model: false,
    domain: Domain::Flag,
    help: "divide by the sum of weights (1 = on)",
};
pub const NORMALIZE_OFF: ParamSpec = ParamSpec {
    name: "normalize",
    default: Some(0.0),
    per_model: false,
    domain: Domain::Flag,
    help: "divide by the sum of weights (0 = off)",
};
pub const LAMBDA: ParamSpec = ParamSpec {
    name: "lambda",
    default: Some(1.0),
    per_model: false,
    domain: Domain::Real,
    help: "scale of the merged delta",
};
/// mergekit's memory option; the arithmetic is the same, so engram accepts and ignores it.
pub const INT8_MASK: ParamSpec = ParamSpec {
    name: "int8_mask",
    default: Some(0.0),
    per_model: false,
    domain: Domain::Flag,
    help: "accepted for mergekit compatibility; no effect (engram streams in f32)",
};

/// A parameter as written in a config: a scalar, a boolean (only switches take one), a
/// gradient over layers (mergekit's list form), or a filter list
/// (`[{filter: "self_attn", value: ...}, {value: ...}]`).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Scalar(f64),
    Bool(bool),
    Gradient(Vec<f64>),
    Filtered(Vec<(Option<String>, ParamValue)>),
}

impl ParamValue {
    /// The value for tensor `name` at relative depth `pos` in [0, 1] (layer i of L is
    /// i/(L−1); engram choice: tensors before the first layer take 0, after the last 1).
    /// Filters match by substring, first match wins; `None` if no filter matches.
    pub fn resolve(&self, name: &str, pos: f64) -> Option<f64> {
        match self {
            ParamValue::Scalar(v) => Some(*v),
            ParamValue::Bool(b) => Some(f64::from(u8::from(*b))),
            ParamValue::Gradient(g) => interpolate(g, pos),
            ParamValue::Filtered(list) => list.iter().find_map(|(f, v)| match f {
                Some(f) if !name.contains(f.as_str()) => None,
                _ => v.resolve(name, pos),
            }),
        }
    }

    /// Whether the value is the same for every tensor.
    pub fn is_scalar(&self) -> bool {
        matches!(self, ParamValue::Scalar(_) | ParamValue::Bool(_))
    }

    /// Every number written: the scalar, each gradient anchor, each filter's values.
    pub fn numbers(&self) -> Vec<f64> {
        match self {
            ParamValue::Scalar(v) => vec![*v],
            ParamValue::Bool(b) => vec![f64::from(u8::from(*b))],
            ParamValue::Gradient(g) => g.clone(),
            ParamValue::Filtered(list) => list.iter().flat_map(|(_, v)| v.numbers()).collect(),
        }
    }

    /// What makes the value ill-formed whatever its parameter: a boolean for a parameter
    /// that is not a switch, a gradient for a switch, or a filter entry no tensor can reach (an earlier entry without
    /// a filter, or with a filter contained in its own, matches every tensor it would).
    fn check_form(&self, domain: Domain) -> Result<(), String> {
        match self {
            ParamValue::Bool(b) if domain != Domain::Flag => {
                Err(format!("{b} is a boolean; this parameter takes a number"))
            }
            // Between its anchors a gradient of 0 and 1 would be neither.
            ParamValue::Gradient(_) if domain == Domain::Flag => {
                Err("a switch is 0 or 1 (false or true), not a gradient over layers".into())
            }
            ParamValue::Filtered(list) => {
                for (j, (f, v)) in list.iter().enumerate() {
                    let shadow = list[..j].iter().position(|(e, _)| match (e, f) {
                        (None, _) => true,
                        (Some(e), Some(f)) => f.contains(e.as_str()),
                        (Some(_), None) => false,
                    });
                    if let Some(i) = shadow {
                        return Err(format!(
                            "filter entry {j} can never apply: entry {i} ({}) matches every tensor it would; put the more specific filters first",
                            list[i]
                                .0
                                .as_deref()
                                .map_or("no filter".into(), |e| format!("filter '{e}'"))
                        ));
                    }
                    v.check_form(domain)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// mergekit's gradient: anchors spread evenly over [0, 1], linear in between.
fn interpolate(g: &[f64], pos: f64) -> Option<f64> {
    match g.len() {
        0 => None,
        1 => Some(g[0]),
        n => {
            let x = pos.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = (x.floor() as usize).min(n - 2);
            let f = x - i as f64;
            Some(g[i] * (1.0 - f) + g[i + 1] * f)
        }
    }
}

/// Unresolved parameters of a merge: global ones and one map per model.
#[derive(Clone, Debug, Default)]
pub struct ParamSource {
    pub global: BTreeMap<String, ParamValue>,
    pub per_model: Vec<BTreeMap<String, ParamValue>>,
}

impl ParamSource {
    /// The one check of a merge's parameters, whoever wrote them (a YAML config, flags,
    /// another front end): every key is a parameter of `method`, a model's map holds only
    /// per-model ones, and every number lies in its parameter's domain (a gradient then stays
    /// in it between anchors). `models` names the models in errors. Checks across parameters
    /// need values resolved per tensor: [`MergeMethod::check_params`], run by the plan.
    pub fn validate(&self, method: &dyn MergeMethod, models: &[String]) -> Result<(), String> {
        let maps = std::iter::once((None, &self.global))
            .chain(self.per_model.iter().enumerate().map(|(i, m)| (Some(i), m)));
        for (i, map) in maps {
            let whose = i.map_or(String::new(), |i| match models.get(i) {
                Some(m) => format!(" of model {m}"),
                None => format!(" of model {}", i + 1),
            });
            for (k, v) in map {
                let spec = method.params().iter().find(|s| s.name == k);
                let spec = match spec {
                    Some(s) if i.is_none() || s.per_model => s,
                    Some(_) => {
                        return Err(format!(
                            "merge parameter '{k}'{whose}: {} takes it once for all models (global parameters)",
                            method.name()
                        ));
                    }
                    None => {
                        let names: Vec<&str> = method
                            .params()
                            .iter()
                            .filter(|s| i.is_none() || s.per_model)
                            .map(|s| s.name)
                            .collect();
                        return Err(format!(
                            "merge parameter '{k}'{whose}: {} does not take it; it accepts: {}",
                            method.name(),
                            names.join(", ")
                        ));
                    }
                };
                let numbers = v.numbers().into_iter().map(|x| spec.check(x));
                std::iter::once(v.check_form(spec.domain))
                    .chain(numbers)
                    .collect::<Result<(), String>>()
                    .map_err(|e| format!("merge parameter '{k}'{whose}: {e} ({})", spec.help))?;
            }
        }
        Ok(())
    }

    /// Scalar parameters for one tensor. A per-model parameter given globally applies to every
    /// model unless the model sets its own (mergekit's precedence: model over global).
    pub fn resolve(&self, specs: &[ParamSpec], name: &str, pos: f64) -> (Vec<Params>, Params) {
        let mut global = Params::default();
        for (k, v) in &self.global {
            if let Some(x) = v.resolve(name, pos) {
                global.set(k, x);
            }
        }
        let per_model = self
            .per_model
            .iter()
            .map(|m| {
                let mut p = Params::default();
                for s in specs.iter().filter(|s| s.per_model) {
                    if let Some(x) = m
                        .get(s.name)
                        .and_then(|v| v.resolve(name, pos))
                        .or_else(|| global.get(s.name))
                    {
                        p.set(s.name, x);
                    }
                }
                p
            })
            .collect();
        (per_model, global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_and_filters_resolve() {
        let g = ParamValue::Gradient(vec![0.0, 1.0, 0.0]);
        assert_eq!(g.resolve("x", 0.0), Some(0.0));
        assert_eq!(g.resolve("x", 0.25), Some(0.5));
        assert_eq!(g.resolve("x", 0.5), Some(1.0));
        assert_eq!(g.resolve("x", 1.0), Some(0.0));
        let f = ParamValue::Filtered(vec![
            (Some("self_attn".into()), ParamValue::Scalar(0.3)),
            (None, ParamValue::Scalar(0.7)),
        ]);
        assert_eq!(f.resolve("layers.0.self_attn.q_proj", 0.0), Some(0.3));
        assert_eq!(f.resolve("layers.0.mlp.up_proj", 0.0), Some(0.7));
    }

    /// Each number is checked against its parameter's domain wherever it is written; the
    /// error names the parameter and the model.
    #[test]
    fn validation_refuses_out_of_domain_values_in_every_form() {
        let ties = crate::merge::get("ties").unwrap();
        let models = ["a/".to_string(), "b/".to_string()];
        let bad = [
            ("density", ParamValue::Scalar(1.5), "outside [0, 1]"),
            ("density", ParamValue::Gradient(vec![0.5, f64::NAN]), "NaN"),
            (
                "lambda",
                ParamValue::Scalar(f64::INFINITY),
                "inf is not a finite",
            ),
            ("normalize", ParamValue::Scalar(0.5), "not 0 or 1"),
            (
                "weight",
                ParamValue::Filtered(vec![(None, ParamValue::Scalar(f64::NAN))]),
                "NaN",
            ),
            ("densty", ParamValue::Scalar(0.5), "does not take it"),
        ];
        for (k, v, want) in bad {
            let mut src = ParamSource::default();
            src.global.insert(k.into(), v.clone());
            let e = src.validate(ties, &models).unwrap_err();
            assert!(e.contains(&format!("'{k}'")) && e.contains(want), "{e}");
            if k != "lambda" && k != "normalize" {
                let src = ParamSource {
                    per_model: vec![BTreeMap::new(), BTreeMap::from([(k.to_string(), v)])],
                    ..Default::default()
                };
                let e = src.validate(ties, &models).unwrap_err();
                assert!(e.contains(&format!("'{k}' of model b/")), "{e}");
            }
        }
        let mut src = ParamSource {
            per_model: vec![BTreeMap::from([("lambda".into(), ParamValue::Scalar(1.0))])],
            ..Default::default()
        };
        let e = src.validate(ties, &models).unwrap_err();
        assert!(e.contains("once for all models"), "{e}");
        src.per_model = vec![BTreeMap::from([(
            "density".into(),
            ParamValue::Scalar(1.0),
        )])];
        src.global
            .insert("normalize".into(), ParamValue::Scalar(0.0));
        src.validate(ties, &models).unwrap();
    }

    /// Booleans are switches only; a filter entry that an earlier one shadows is an error.
    #[test]
    fn booleans_and_dead_filter_entries_are_refused() {
        let ta = crate::merge::get("task_arithmetic").unwrap();
        let f = |e: &[(Option<&str>, ParamValue)]| {
            ParamValue::Filtered(
                e.iter()
                    .map(|(k, v)| (k.map(String::from), v.clone()))
                    .collect(),
            )
        };
        let (one, two) = (ParamValue::Scalar(1.0), ParamValue::Scalar(2.0));
        let check = |k: &str, v: ParamValue| {
            let mut src = ParamSource::default();
            src.global.insert(k.into(), v);
            src.validate(ta, &[])
        };
        for (v, want) in [
            (ParamValue::Bool(true), "boolean"),
            (
                f(&[(Some("a"), ParamValue::Bool(false)), (None, one.clone())]),
                "boolean",
            ),
            (
                f(&[(None, one.clone()), (Some("x"), two.clone())]),
                "entry 1 can never apply",
            ),
            (
                f(&[
                    (Some("layers"), one.clone()),
                    (Some("layers.0"), two.clone()),
                ]),
                "never",
            ),
            (
                f(&[(Some("q"), one.clone()), (Some("q"), two.clone())]),
                "never",
            ),
        ] {
            let e = check("lambda", v).unwrap_err();
            assert!(e.contains("'lambda'") && e.contains(want), "{e}");
        }
        let e = check("normalize", ParamValue::Gradient(vec![0.0, 1.0])).unwrap_err();
        assert!(e.contains("not a gradient"), "{e}");
        check("normalize", ParamValue::Bool(true)).unwrap();
        let specific_first = f(&[
            (Some("layers.0"), one.clone()),
            (Some("layers"), two),
            (None, one),
        ]);
        check("lambda", specific_first).unwrap();
    }

    #[test]
    fn model_parameters_override_global_ones() {
        let mut src = ParamSource::default();
        src.global.insert("density".into(), ParamValue::Scalar(0.5));
        src.per_model.push(BTreeMap::new());
        let mut m = BTreeMap::new();
        m.insert("density".into(), ParamValue::Scalar(0.2));
        src.per_model.push(m);
        let (pm, _) = src.resolve(&[DENSITY], "w", 0.0);
        assert_eq!(pm[0].get("density"), Some(0.5));
        assert_eq!(pm[1].get("density"), Some(0.2));
    }
}
