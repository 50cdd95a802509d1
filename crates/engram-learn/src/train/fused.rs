//! The optimizer the trainer steps: SGD (with momentum), Adam and AdamW, each one fused pass
//! over a parameter and its moments, in place, split across rayon's threads.
//!
//! Why not burn's optimizers: burn 0.22 writes Adam as a chain of tensor operations (scale the
//! moments, square the gradient, add, correct the bias, square root, divide, scale, subtract),
//! about twelve passes over every parameter per step, each allocating its result, each on one
//! thread: a large share of a small network's training time, on one core while the other
//! waits (BENCHMARKS.md B4). Here one pass reads the weight, the gradient and the two
//! moments and writes the three; the element-wise formulas are PyTorch's (`torch.optim`), so
//! the same hyper-parameters mean the same thing in both.
//!
//! State lives in host vectors keyed by parameter id, created at a parameter's first update
//! (zero moments, as in PyTorch and burn) and dropped with the optimizer. The trainer makes a
//! fresh optimizer at each task; a run that carries the state across tasks
//! (`reset-optimizer = false`) moves it by parameter name ([`Optimizer::export`],
//! [`Optimizer::import`]), which is also how it is checkpointed. A parameter
//! without a gradient in a step (frozen, or unused) is left as it is and its step count does
//! not advance.

use crate::model::params::param_infos;
use crate::optim::{AdamStep, OptimConfig, OptimKind};
use crate::strategy::State;
use crate::{Result, err};
use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;
use std::collections::HashMap;

/// Elements per parallel piece: below this a parameter is updated on the calling thread.
const PIECE: usize = 1 << 14;

/// One parameter's state: the step count and the first and second moments (SGD with momentum
/// keeps its velocity in `m`; plain SGD keeps nothing).
#[derive(Default)]
struct Slot {
    t: u64,
    m: Vec<f32>,
    v: Vec<f32>,
    /// The moments of a parameter that lives on a GPU, kept there (flattened); the host
    /// vectors are then empty.
    dev: Option<[Option<Tensor<1>>; 2]>,
}

impl Slot {
    /// The moments as host vectors (read back from the device where they live there).
    fn host_moments(&self) -> [Vec<f32>; 2] {
        match &self.dev {
            Some([m, v]) => [m, v].map(|t| t.clone().map(host_f32).unwrap_or_default()),
            None => [self.m.clone(), self.v.clone()],
        }
    }

    /// Moments held, in values.
    fn len(&self) -> usize {
        match &self.dev {
            Some([m, v]) => [m, v]
                .iter()
                .map(|t| t.as_ref().map_or(0, |t| t.shape().num_elements()))
                .sum(),
            None => self.m.len() + self.v.len(),
        }
    }
}

/// SGD, Adam or AdamW over a module's float parameters (see the module comment).
pub struct Optimizer {
    cfg: OptimConfig,
    slots: HashMap<ParamId, Slot>,
    /// Updates that had to write a copy (see [`update_tensor`]).
    copies: usize,
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig) -> Self {
        Optimizer {
            cfg: cfg.clone(),
            slots: HashMap::new(),
            copies: 0,
        }
    }

    /// Updates every parameter of `module` that has a gradient in `grads`, at learning rate
    /// `lr`.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let scale = match self.cfg.clip_grad_norm {
            Some(max) => (max / (grad_norm(&module, &grads) + 1e-6)).min(1.0) as f32,
            None => 1.0,
        };
        module.map(&mut Stepper {
            opt: self,
            lr,
            scale,
            grads: &mut grads,
        })
    }

    /// The state of every parameter of `module` that has one, by name: tensors `m.NAME` and
    /// `v.NAME` (the moments, where kept) and the step counts in `json.steps`.
    pub fn export<M: Module>(&self, module: &M) -> State {
        let mut st = State::default();
        let mut steps = serde_json::Map::new();
        for p in param_infos(module) {
            let Some(slot) = self.slots.get(&p.id) else {
                continue;
            };
            steps.insert(p.name.clone(), slot.t.into());
            for (key, v) in ["m", "v"].into_iter().zip(slot.host_moments()) {
                if !v.is_empty() {
                    st.tensors
                        .push((format!("{key}.{}", p.name), p.shape.clone(), v));
                }
            }
        }
        st.json = serde_json::json!({ "steps": steps });
        st
    }

    /// Takes over a state [`Optimizer::export`] made, for the parameters of `module` of the
    /// same name and size; the state of parameters the network no longer has (or has with
    /// another size, e.g. after a strategy reshaped it) is dropped, as a fresh parameter starts
    /// with none. A state that is not one `export` makes is an error.
    pub fn import<M: Module>(&mut self, module: &M, st: &State) -> Result<()> {
        if st.json.is_null() && st.tensors.is_empty() {
            return Ok(());
        }
        let bad = |m: String| err!("optimizer state: {m}");
        let steps = st
            .json
            .get("steps")
            .and_then(|v| v.as_object())
            .ok_or_else(|| bad("no `steps` table".into()))?;
        let mut slots: HashMap<String, Slot> = HashMap::new();
        for (name, t) in steps {
            let t = t
                .as_u64()
                .ok_or_else(|| bad(format!("step count of {name} is not a count")))?;
            slots.insert(
                name.clone(),
                Slot {
                    t,
                    ..Slot::default()
                },
            );
        }
        for (key, shape, v) in &st.tensors {
            let (which, name) = key
                .split_once('.')
                .filter(|(w, _)| matches!(*w, "m" | "v"))
                .ok_or_else(|| bad(format!("tensor {key} is neither m.NAME nor v.NAME")))?;
            let slot = slots
                .get_mut(name)
                .ok_or_else(|| bad(format!("tensor {key} has no step count")))?;
            if shape.iter().product::<usize>() != v.len() {
                return Err(bad(format!("tensor {key} does not fill its shape")));
            }
            match which {
                "m" => slot.m = v.clone(),
                _ => slot.v = v.clone(),
            }
        }
        // The moments this optimizer keeps for a parameter that has taken a step.
        let (wants_m, wants_v) = match self.cfg.kind {
            OptimKind::Sgd => (self.cfg.momentum != 0.0, false),
            OptimKind::Adam | OptimKind::Adamw => (true, true),
        };
        for (name, slot) in &slots {
            let kept = |v: &Vec<f32>, wanted: bool| (slot.t == 0) || (v.is_empty() != wanted);
            if !kept(&slot.m, wants_m) || !kept(&slot.v, wants_v) {
                return Err(bad(format!(
                    "the moments of {name} are not those of a {:?} optimizer that took {} \
                     steps",
                    self.cfg.kind, slot.t
                )));
            }
        }
        for p in param_infos(module) {
            if let Some(slot) = slots.remove(&p.name) {
                let n = p.numel();
                let fits = |v: &Vec<f32>| v.is_empty() || v.len() == n;
                if fits(&slot.m) && fits(&slot.v) {
                    self.slots.insert(p.id, slot);
                }
            }
        }
        Ok(())
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        self.slots.values().map(|s| 4 * s.len()).sum()
    }

    /// Parameter updates so far that wrote a new tensor instead of updating in place: the
    /// parameter's storage was shared (a clone of the network alive) or not flex f32.
    pub fn copied_updates(&self) -> usize {
        self.copies
    }

    /// [`Optimizer::update`] for a parameter on a GPU: the same formulas as tensor operations
    /// on the device (the moments stay there), `w` and `g` flattened.
    fn update_on_device(&self, lr: f64, slot: &mut Slot, w: Tensor<1>, g: Tensor<1>) -> Tensor<1> {
        let c = &self.cfg;
        let n = w.shape().num_elements();
        assert_eq!(
            n,
            g.shape().num_elements(),
            "gradient and parameter sizes differ"
        );
        let device = w.device();
        slot.t += 1;
        // Moments imported from a saved state move to the device at the first step.
        let [m, v] = slot.dev.take().unwrap_or_else(|| {
            [std::mem::take(&mut slot.m), std::mem::take(&mut slot.v)].map(|h| {
                (!h.is_empty()).then(|| Tensor::<1>::from_data(TensorData::new(h, [n]), &device))
            })
        });
        let wd = c.weight_decay;
        let (w, m, v) = match c.kind {
            OptimKind::Sgd => {
                let d = if wd != 0.0 {
                    g + w.clone().mul_scalar(wd)
                } else {
                    g
                };
                if c.momentum == 0.0 {
                    (w - d.mul_scalar(lr), None, None)
                } else {
                    // PyTorch: the velocity starts as the first gradient (dampening 0).
                    let b = match m {
                        Some(b) => b.mul_scalar(c.momentum) + d,
                        None => d,
                    };
                    (w - b.clone().mul_scalar(lr), Some(b), None)
                }
            }
            OptimKind::Adam | OptimKind::Adamw => {
                let zeros = || Tensor::<1>::zeros([n], &device);
                let k = c.adam_step(lr, slot.t);
                let [w, m, v] =
                    k.apply_tensors(w, g, m.unwrap_or_else(zeros), v.unwrap_or_else(zeros));
                (w, Some(m), Some(v))
            }
        };
        slot.dev = Some([m, v]);
        w
    }

    /// `w` updated in place from its gradient `g`, advancing `slot`.
    fn update(&self, lr: f64, slot: &mut Slot, w: &mut [f32], g: &[f32]) {
        let c = &self.cfg;
        let n = w.len();
        // burn hands a parameter's gradient with the parameter's shape; zips below would
        // silently drop a tail otherwise.
        assert_eq!(n, g.len(), "gradient and parameter sizes differ");
        slot.t += 1;
        let wd = c.weight_decay as f32;
        match c.kind {
            OptimKind::Sgd => {
                let lr = lr as f32;
                if c.momentum == 0.0 {
                    for_pieces2(w, g, |w, g| {
                        for (w, &g) in w.iter_mut().zip(g) {
                            *w -= lr * (g + wd * *w);
                        }
                    });
                    return;
                }
                let mu = c.momentum as f32;
                // PyTorch: the velocity starts as the first gradient (dampening 0).
                let first = slot.m.is_empty();
                if first {
                    slot.m = vec![0.0; n];
                }
                for_pieces3(w, g, &mut slot.m, |w, g, b| {
                    for ((w, &g), b) in w.iter_mut().zip(g).zip(b) {
                        let d = g + wd * *w;
                        *b = if first { d } else { mu * *b + d };
                        *w -= lr * *b;
                    }
                });
            }
            OptimKind::Adam | OptimKind::Adamw => {
                if slot.m.is_empty() {
                    slot.m = vec![0.0; n];
                    slot.v = vec![0.0; n];
                }
                let k = c.adam_step(lr, slot.t);
                for_pieces4(w, g, &mut slot.m, &mut slot.v, |w, g, m, v| {
                    adam_run(&k, w, g, m, v)
                });
            }
        }
    }
}

/// One Adam step over a run of parameters: AVX2's 8-wide square roots and divisions where the
/// CPU has them (a tenth of an MLP epoch in SSE2's 4-wide ones); the same bits either way.
#[inline(always)]
fn adam_run_any(k: &AdamStep, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
        k.apply(w, g, m, v);
    }
}

engram_ckpt::avx2_dispatch!(fn adam_run(k: &AdamStep, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) = adam_run_any;);

/// `f` over aligned pieces of the slices, in parallel when they are long.
fn for_pieces2(w: &mut [f32], g: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if w.len() <= PIECE {
        return f(w, g);
    }
    w.par_chunks_mut(PIECE)
        .zip(g.par_chunks(PIECE))
        .for_each(|(w, g)| f(w, g));
}

fn for_pieces3(
    w: &mut [f32],
    g: &[f32],
    a: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync,
) {
    if w.len() <= PIECE {
        return f(w, g, a);
    }
    w.par_chunks_mut(PIECE)
        .zip(g.par_chunks(PIECE))
        .zip(a.par_chunks_mut(PIECE))
        .for_each(|((w, g), a)| f(w, g, a));
}

fn for_pieces4(
    w: &mut [f32],
    g: &[f32],
    a: &mut [f32],
    b: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) {
    if w.len() <= PIECE {
        return f(w, g, a, b);
    }
    w.par_chunks_mut(PIECE)
        .zip(g.par_chunks(PIECE))
        .zip(a.par_chunks_mut(PIECE))
        .zip(b.par_chunks_mut(PIECE))
        .for_each(|(((w, g), a), b)| f(w, g, a, b));
}

/// The global L2 norm of the gradients in `grads` of `module`'s float parameters.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sq: f64,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.sq += host_f32(g)
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>();
            }
        }
    }
    let mut v = Norm { grads, sq: 0.0 };
    module.visit(&mut v);
    v.sq.sqrt()
}

struct Stepper<'a> {
    opt: &'a mut Optimizer,
    lr: f64,
    /// Gradient-norm clipping's factor (1: none).
    scale: f32,
    grads: &'a mut GradientsParams,
}

impl ModuleMapper for Stepper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        // The autodiff state the parameter carries, put back on the updated value.
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        let mut slot = self.opt.slots.remove(&id).unwrap_or_default();
        let scale = self.scale;
        let (updated, in_place) = if crate::backend::is_flex(&device) {
            update_tensor(tensor.inner(), grad.inner(), |w, g| {
                if scale == 1.0 {
                    self.opt.update(self.lr, &mut slot, w, g)
                } else {
                    let g: Vec<f32> = g.iter().map(|v| v * scale).collect();
                    self.opt.update(self.lr, &mut slot, w, &g)
                }
            })
        } else {
            // A GPU's parameter: the update runs there, in f32 (`flex` alone runs engram's
            // kernels; reading every parameter back to the host each step would cost more).
            let (w, g) = (tensor.inner(), grad.inner());
            let (shape, dtype) = (w.shape(), w.dtype());
            let n = shape.num_elements();
            let g = g.cast(DType::F32).reshape([n]);
            let g = if scale == 1.0 { g } else { g.mul_scalar(scale) };
            let w1 = w.cast(DType::F32).reshape([n]);
            let w = self.opt.update_on_device(self.lr, &mut slot, w1, g);
            (w.reshape(shape).cast(dtype), false)
        };
        self.opt.slots.insert(id, slot);
        self.opt.copies += usize::from(!in_place);
        let mut updated = match checkpointing {
            Some(strategy) => {
                Tensor::from_inner(updated).with_gradient_checkpointing_strategy(strategy)
            }
            None => updated,
        };
        if require_grad {
            updated = updated.require_grad();
        }
        debug_assert_eq!(updated.device(), device);
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Runs `f(weights, gradient)` on host slices and returns the updated tensor and whether it
/// was updated in place: in place on a flex f32 tensor that nothing else shares, otherwise
/// on a copy (a parameter shared with a clone of the network — a strategy's frozen teacher —
/// must not change under it).
fn update_tensor<const D: usize>(
    w: Tensor<D>,
    g: Tensor<D>,
    f: impl FnOnce(&mut [f32], &[f32]),
) -> (Tensor<D>, bool) {
    let g_host: Vec<f32>;
    let g_flex = match g.dtype() {
        DType::F32 => g.clone().try_into_primitive::<Flex>().ok(),
        _ => None,
    };
    let g_slice: &[f32] = match g_flex
        .as_ref()
        .and_then(|t| Some((t, t.layout().contiguous_offsets()?)))
    {
        Some((t, (start, end))) => &t.storage::<f32>()[start..end],
        None => {
            g_host = host_f32(g);
            &g_host
        }
    };
    let mut w = w;
    if w.dtype() == DType::F32
        && let Ok(mut t) = w.clone().try_into_primitive::<Flex>()
    {
        // `t` shares `w`'s storage until `w` goes.
        drop(w);
        if t.is_unique()
            && let Some((0, end)) = t.layout().contiguous_offsets()
        {
            f(&mut t.storage_mut::<f32>()[..end], g_slice);
            return (Tensor::from_primitive::<Flex>(t), true);
        }
        w = Tensor::from_primitive::<Flex>(t);
    }
    let (shape, device, dtype) = (w.shape(), w.device(), w.dtype());
    let mut host = host_f32(w);
    f(&mut host, g_slice);
    let t = Tensor::<D>::from_data(TensorData::new(host, shape).convert_dtype(dtype), &device);
    (t, false)
}

/// A tensor's values as f32 on the host.
fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32 just before")
}

#[cfg(test)]
mod tests;
