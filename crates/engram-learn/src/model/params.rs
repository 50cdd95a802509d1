//! Named access to a module's float parameters: their stable names, flat (1-D) views that
//! keep the autodiff graph (for penalties), host copies (for checkpoints and importance
//! statistics), loading values back by name, and flat access to their gradients.

use crate::{Result, err};
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::collections::BTreeMap;

/// A float parameter: stable name (`fc.0.weight`), id, shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The dotted path of the current module; the top-level enum variant is left out so that an
/// MLP's names do not depend on the `Net` wrapper.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn name(&self, leaf: Option<&str>) -> String {
        let mut parts: Vec<&str> = self
            .0
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty() && !matches!(*p, "Mlp" | "ResMlp" | "Cnn" | "BnCnn" | "Vit"))
            .collect();
        if let Some(l) = leaf {
            parts.push(l);
        }
        parts.join(".")
    }
}

struct Collect<F: FnMut(String, ParamId, Tensor<1>, Vec<usize>)> {
    path: Path,
    f: F,
}

impl<F: FnMut(String, ParamId, Tensor<1>, Vec<usize>)> ModuleVisitor for Collect<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let n: usize = shape.iter().product();
        (self.f)(self.path.name(None), param.id, t.reshape([n]), shape);
    }
}

/// Every float parameter in visiting order (stable for a given architecture), with a flat
/// view that stays on the autodiff graph.
pub fn flat_params<M: Module>(m: &M) -> Vec<(ParamInfo, Tensor<1>)> {
    let mut out = Vec::new();
    let mut v = Collect {
        path: Path::default(),
        f: |name: String, id, t, shape| out.push((ParamInfo { name, id, shape }, t)),
    };
    m.visit(&mut v);
    out
}

pub fn param_infos<M: Module>(m: &M) -> Vec<ParamInfo> {
    flat_params(m).into_iter().map(|(i, _)| i).collect()
}

/// Host copies of every parameter, by name.
pub fn host_params<M: Module>(m: &M) -> Vec<(ParamInfo, Vec<f32>)> {
    flat_params(m)
        .into_iter()
        .map(|(i, t)| {
            let v = t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            (i, v)
        })
        .collect()
}

/// Every float parameter's values on the host, by name.
pub fn named_values<M: Module>(m: &M) -> BTreeMap<String, Vec<f32>> {
    host_params(m)
        .into_iter()
        .map(|(i, v)| (i.name, v))
        .collect()
}

pub fn param_count<M: Module>(m: &M) -> usize {
    param_infos(m).iter().map(|p| p.numel()).sum()
}

struct Load<'a> {
    path: Path,
    values: &'a BTreeMap<String, Vec<f32>>,
    /// Parameters without a value keep theirs (else: listed as missing).
    partial: bool,
    missing: Vec<String>,
    bad_shape: Vec<String>,
    loaded: usize,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name(None);
        let Some(v) = self.values.get(&name) else {
            if !self.partial {
                self.missing.push(name);
            }
            return param;
        };
        let (id, t, mapper) = param.consume();
        let shape: [usize; D] = t.dims();
        if v.len() != shape.iter().product::<usize>() {
            self.bad_shape
                .push(format!("{name}: {} values for shape {shape:?}", v.len()));
            return Param::from_mapped_value(id, t, mapper);
        }
        let device = t.device();
        let require_grad = t.is_require_grad();
        let mut nt = Tensor::<D>::from_data(TensorData::new(v.clone(), shape), &device);
        if require_grad {
            nt = nt.require_grad();
        }
        self.loaded += 1;
        Param::from_mapped_value(id, nt, mapper)
    }
}

/// Replaces every parameter's value by `values[name]`; an error lists missing names and
/// wrong sizes.
pub fn load_params<M: Module>(m: M, values: &BTreeMap<String, Vec<f32>>) -> Result<M> {
    load(m, values, false)
}

/// Replaces the values of the parameters named in `values` (the others keep theirs); an error
/// lists names the module does not have and wrong sizes.
pub fn set_params<M: Module>(m: M, values: &BTreeMap<String, Vec<f32>>) -> Result<M> {
    let known: std::collections::BTreeSet<String> =
        param_infos(&m).into_iter().map(|p| p.name).collect();
    let unknown: Vec<&str> = values
        .keys()
        .filter(|n| !known.contains(*n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(err!("no parameters named [{}]", unknown.join(", ")));
    }
    load(m, values, true)
}

fn load<M: Module>(m: M, values: &BTreeMap<String, Vec<f32>>, partial: bool) -> Result<M> {
    let mut l = Load {
        path: Path::default(),
        values,
        partial,
        missing: Vec::new(),
        bad_shape: Vec::new(),
        loaded: 0,
    };
    let m = m.map(&mut l);
    if !l.missing.is_empty() || !l.bad_shape.is_empty() {
        return Err(err!(
            "parameters missing: [{}]; wrong sizes: [{}]",
            l.missing.join(", "),
            l.bad_shape.join(", ")
        ));
    }
    if l.loaded < values.len() {
        // Values for parameters the module does not have (a network saved with extra
        // parameters, e.g. expanded blocks, loaded into one without them).
        let known: std::collections::BTreeSet<String> =
            param_infos(&m).into_iter().map(|p| p.name).collect();
        let extra: Vec<&str> = values
            .keys()
            .filter(|n| !known.contains(*n))
            .map(String::as_str)
            .collect();
        return Err(err!("no parameters named [{}]", extra.join(", ")));
    }
    Ok(m)
}

/// The gradient of a parameter as a flat tensor, if it has one.
pub fn grad_flat(grads: &GradientsParams, p: &ParamInfo) -> Option<Tensor<1>> {
    let n = p.numel();
    match p.shape.len() {
        1 => grads.get::<1>(p.id),
        2 => grads.get::<2>(p.id).map(|g| g.reshape([n])),
        3 => grads.get::<3>(p.id).map(|g| g.reshape([n])),
        4 => grads.get::<4>(p.id).map(|g| g.reshape([n])),
        _ => None,
    }
}

/// Removes a parameter's gradient, so that the optimizer leaves the parameter as it is.
pub fn drop_grad(grads: &mut GradientsParams, p: &ParamInfo) {
    match p.shape.len() {
        1 => drop(grads.remove::<1>(p.id)),
        2 => drop(grads.remove::<2>(p.id)),
        3 => drop(grads.remove::<3>(p.id)),
        4 => drop(grads.remove::<4>(p.id)),
        _ => {}
    }
}

/// Replaces a parameter's gradient by a flat tensor (reshaped to the parameter's shape).
pub fn set_grad_flat(grads: &mut GradientsParams, p: &ParamInfo, g: Tensor<1>) {
    let s = &p.shape;
    match s.len() {
        1 => grads.register::<1>(p.id, g),
        2 => grads.register::<2>(p.id, g.reshape([s[0], s[1]])),
        3 => grads.register::<3>(p.id, g.reshape([s[0], s[1], s[2]])),
        4 => grads.register::<4>(p.id, g.reshape([s[0], s[1], s[2], s[3]])),
        _ => {}
    }
}

/// Whether the parameter name `name` matches `pattern`: a pattern with `*` is the anchored
/// glob [`engram_ckpt::names::glob`], matched against the whole name, each `*` standing for
/// any run of characters (dots included: `layers.0.*`, `*.bias`); a pattern without `*`
/// matches the names it begins. The prefix is the older meaning, kept because configurations
/// name whole modules that way (the l2 strategy's `params` and [`crate::train::stage`]'s
/// frozen prefixes: `fc.1.`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains('*') {
        engram_ckpt::names::glob(pattern, name)
    } else {
        name.starts_with(pattern)
    }
}

struct Untracked {
    path: Path,
    names: std::collections::BTreeSet<String>,
}

impl ModuleVisitor for Untracked {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.val().is_require_grad() {
            self.names.insert(self.path.name(None));
        }
    }
}

/// The names of the float tensors of `m` that take no gradient on an autodiff device
/// (BatchNorm's running statistics, which training updates itself, not the optimizer). On a
/// device without autodiff every tensor is listed.
pub fn untracked_names<M: Module>(m: &M) -> std::collections::BTreeSet<String> {
    let mut v = Untracked {
        path: Path::default(),
        names: Default::default(),
    };
    m.visit(&mut v);
    v.names
}

#[cfg(test)]
mod pattern_tests {
    use super::name_matches;

    /// Globs against a slow reference (every split of the name), and prefixes.
    #[test]
    fn patterns_match_as_documented() {
        fn slow(p: &[u8], n: &[u8]) -> bool {
            match p.split_first() {
                None => n.is_empty(),
                Some((b'*', rest)) => (0..=n.len()).any(|k| slow(rest, &n[k..])),
                Some((c, rest)) => n.first() == Some(c) && slow(rest, &n[1..]),
            }
        }
        let names = [
            "fc.0.weight",
            "fc.0.bias",
            "fc.1.weight",
            "fc.10.weight",
            "layers.0.attn.q.weight",
            "",
        ];
        let globs = [
            "*",
            "fc.*",
            "*.bias",
            "fc.*.weight",
            "layers.0.*",
            "f*c*",
            "**",
            "*a*a*",
            "fc.1*",
            "*weight*",
            "x*",
        ];
        for p in globs {
            for n in names {
                assert_eq!(
                    name_matches(p, n),
                    slow(p.as_bytes(), n.as_bytes()),
                    "{p} {n}"
                );
            }
        }
        assert!(name_matches("layers.0.*", "layers.0.attn.q.weight"));
        assert!(!name_matches("layers.0.*", "layers.00.w"));
        assert!(name_matches("fc.1.", "fc.1.weight") && !name_matches("fc.1.", "fc.10.weight"));
        assert!(name_matches("fc.1", "fc.10.weight"));
        assert!(!name_matches("*.bias", "fc.0.weight"));
    }
}
