//! The fused optimizer against burn's own optimizers (the trainer's previous ones), which
//! compute the same formulas as chains of tensor operations.

use super::*;
use crate::optim::Schedule;
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};

#[derive(Module, Debug)]
struct Two {
    a: Linear,
    b: Linear,
}

fn net(seed: u64) -> Two {
    // Parameters are drawn when first visited: seed and visit under the guard.
    let _g = crate::backend::rng_guard();
    Device::flex().seed(seed);
    let d = Device::flex().autodiff();
    let m = Two {
        a: LinearConfig::new(6, 40_000).init(&d),
        b: LinearConfig::new(40_000, 3).init(&d),
    };
    values(&m);
    m
}

/// Gradients of a loss at step `t` (different inputs each step).
fn grads(m: &Two, t: usize) -> GradientsParams {
    let d = Device::flex().autodiff();
    let x: Vec<f32> = (0..12)
        .map(|i| ((i * 7 + t * 3) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(x, [2, 6]), &d);
    let y = m.b.forward(m.a.forward(x).tanh());
    // Scaled down so that SGD at lr 0.5 does not diverge over 40,000 hidden units.
    let e = y - 1.0;
    let loss = (e.clone() * e).sum() * 1e-4;
    GradientsParams::from_grads(loss.backward(), m)
}

fn values(m: &Two) -> Vec<f32> {
    let mut out = Vec::new();
    for t in [
        m.a.weight.val().flatten::<1>(0, 1),
        m.a.bias.as_ref().map(|b| b.val()).expect("bias"),
        m.b.weight.val().flatten::<1>(0, 1),
        m.b.bias.as_ref().map(|b| b.val()).expect("bias"),
    ] {
        out.extend(
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32"),
        );
    }
    out
}

fn config(kind: OptimKind, momentum: f64, weight_decay: f64) -> OptimConfig {
    OptimConfig {
        kind,
        lr: if kind == OptimKind::Sgd { 0.5 } else { 0.01 },
        momentum,
        weight_decay,
        betas: [0.9, 0.999],
        eps: 1e-8,
        schedule: Schedule::Constant,
        clip_grad_norm: None,
    }
}

fn burn_optimizer(c: &OptimConfig) -> ModuleOptimizer {
    let wd = (c.weight_decay > 0.0).then(|| WeightDecayConfig::new(c.weight_decay as f32));
    match c.kind {
        OptimKind::Sgd => SgdConfig::new()
            .with_momentum((c.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(c.momentum)
                    .with_dampening(0.0)
            }))
            .with_weight_decay(wd)
            .init(),
        OptimKind::Adam => AdamConfig::new()
            .with_epsilon(c.eps as f32)
            .with_weight_decay(wd)
            .init(),
        OptimKind::Adamw => AdamWConfig::new()
            .with_epsilon(c.eps as f32)
            .with_weight_decay(c.weight_decay as f32)
            .init(),
    }
}

#[test]
fn matches_burns_optimizers() {
    for (kind, momentum, wd) in [
        (OptimKind::Sgd, 0.0, 0.0),
        (OptimKind::Sgd, 0.9, 0.01),
        (OptimKind::Adam, 0.0, 0.0),
        (OptimKind::Adam, 0.0, 0.05),
        (OptimKind::Adamw, 0.0, 0.1),
    ] {
        let c = config(kind, momentum, wd);
        let (mut ours, mut theirs) = (net(1), net(1));
        let (mut o, mut b) = (Optimizer::new(&c), burn_optimizer(&c));
        let start = values(&ours);
        assert!(
            start == values(&theirs),
            "the two networks differ before training"
        );
        for t in 0..5 {
            let g = grads(&ours, t);
            ours = o.step(c.lr, ours, g);
            let g = grads(&theirs, t);
            theirs = b.step(c.lr, theirs, g);
        }
        let (a, z) = (values(&ours), values(&theirs));
        let diff = a
            .iter()
            .zip(&z)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let moved = a
            .iter()
            .zip(&start)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            moved > 1e-4,
            "{kind:?}: the parameters did not move ({moved})"
        );
        // Same formulas, different rounding (Adam divides by roots of tiny moments, which
        // amplifies it): a thousandth of the distance moved.
        assert!(
            diff < 1e-3 * moved,
            "{kind:?} m={momentum} wd={wd}: differs by {diff}, moved {moved}"
        );
        assert_eq!(o.copied_updates(), 0, "{kind:?}: updates were not in place");
        let per = if kind == OptimKind::Sgd {
            usize::from(momentum > 0.0)
        } else {
            2
        };
        assert_eq!(o.state_bytes(), 4 * per * start.len());
        assert!(ours.a.weight.val().is_require_grad());
    }
}

#[test]
fn a_clone_of_the_network_keeps_its_values() {
    let c = config(OptimKind::Adam, 0.0, 0.0);
    let m = net(2);
    let teacher = m.clone();
    let before = values(&teacher);
    let mut o = Optimizer::new(&c);
    let g = grads(&m, 0);
    let m = o.step(c.lr, m, g);
    assert_eq!(values(&teacher), before);
    assert_ne!(values(&m), before);
    assert_eq!(o.copied_updates(), 4);
}

#[test]
fn parameters_without_gradients_stay_and_keep_no_state() {
    let c = config(OptimKind::Adam, 0.0, 0.0);
    let m = net(3);
    let before = m.a.weight.val().into_data();
    let mut g = grads(&m, 0);
    g.remove::<2>(m.a.weight.id);
    let mut o = Optimizer::new(&c);
    let m = o.step(c.lr, m, g);
    assert_eq!(m.a.weight.val().into_data(), before);
    assert_eq!(o.state_bytes(), 4 * 2 * (40_000 + 40_000 * 3 + 3));
}

/// Gradient-norm clipping scales every gradient by min(1, max/(‖g‖ + 1e-6)), ‖g‖ over all
/// parameters together (PyTorch's `clip_grad_norm_`), and leaves a small gradient alone.
#[test]
fn clipping_scales_the_global_gradient_norm() {
    let m = net(5);
    let g = grads(&m, 1);
    let host = |t: Tensor<1>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32")
    };
    let mut flat = Vec::new();
    flat.extend(host(g.get::<2>(m.a.weight.id).expect("g").flatten(0, 1)));
    flat.extend(host(
        g.get::<1>(m.a.bias.as_ref().expect("b").id).expect("g"),
    ));
    flat.extend(host(g.get::<2>(m.b.weight.id).expect("g").flatten(0, 1)));
    flat.extend(host(
        g.get::<1>(m.b.bias.as_ref().expect("b").id).expect("g"),
    ));
    let norm = flat
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 0.0);
    assert!((grad_norm(&m, &g) - norm).abs() <= 1e-6 * norm);
    let before = values(&m);
    for (max, factor) in [
        (0.25 * norm, 0.25 * norm / (norm + 1e-6)),
        (4.0 * norm, 1.0),
    ] {
        let c = OptimConfig {
            clip_grad_norm: Some(max),
            ..config(OptimKind::Sgd, 0.0, 0.0)
        };
        let lr = c.lr;
        let fresh = net(5);
        let gf = grads(&fresh, 1);
        let after = values(&Optimizer::new(&c).step(lr, fresh, gf));
        let mut worst = 0f64;
        for ((a, b), gv) in after.iter().zip(&before).zip(&flat) {
            let want = f64::from(*b) - lr * factor * f64::from(*gv);
            worst = worst.max((f64::from(*a) - want).abs());
        }
        assert!(worst < 1e-6, "max {max}: off by {worst}");
    }
    // Clipping is a setting checked like the others.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let c = OptimConfig {
            clip_grad_norm: Some(bad),
            ..OptimConfig::DEFAULT
        };
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("clip-grad-norm"), "{bad}: {e}");
    }
}

/// The state carried across tasks moves by parameter name: exported from one optimizer and
/// imported into a fresh one, the next step is the step of an optimizer that never stopped;
/// a state whose moments do not fit the optimizer is an error.
#[test]
fn exported_state_continues_exactly_and_a_bad_one_is_refused() {
    let c = config(OptimKind::Adam, 0.0, 0.0);
    let (lr, m) = (c.lr, net(7));
    let mut whole = Optimizer::new(&c);
    let m1 = whole.step(lr, m, grads(&net(7), 1));
    let mut moved = Optimizer::new(&c);
    moved.import(&m1, &whole.export(&m1)).expect("import");
    let a = values(&whole.step(lr, m1.clone(), grads(&m1, 2)));
    let b = values(&moved.step(lr, m1.clone(), grads(&m1, 2)));
    assert_eq!(a, b);
    let mut st = whole.export(&m1);
    st.tensors.retain(|(n, _, _)| !n.starts_with("v."));
    let e = Optimizer::new(&c)
        .import(&m1, &st)
        .expect_err("no second moment");
    assert!(e.to_string().contains("moments"), "{e}");
}

/// The device path (a GPU's parameters: the update as tensor operations, moments kept as
/// tensors) against the host path, run here on flex tensors: the same formulas, for SGD with
/// and without momentum, Adam and AdamW with weight decay, over steps; and its moments export
/// and import as the host path's do.
#[test]
fn device_updates_match_host_updates() {
    let d = Device::flex();
    let n = 1000;
    let w0: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let grad = |t: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 13 + t * 7) % 29) as f32 - 14.0) / 10.0)
            .collect()
    };
    for (kind, mom, wd) in [
        (OptimKind::Sgd, 0.0, 0.0),
        (OptimKind::Sgd, 0.9, 1e-2),
        (OptimKind::Adam, 0.0, 1e-2),
        (OptimKind::Adamw, 0.0, 1e-2),
    ] {
        let opt = Optimizer::new(&config(kind, mom, wd));
        let (mut host_slot, mut dev_slot) = (Slot::default(), Slot::default());
        let mut w_host = w0.clone();
        let mut w_dev = Tensor::<1>::from_data(TensorData::new(w0.clone(), [n]), &d);
        for t in 0..4 {
            let g = grad(t);
            opt.update(1e-2, &mut host_slot, &mut w_host, &g);
            let gt = Tensor::<1>::from_data(TensorData::new(g, [n]), &d);
            w_dev = opt.update_on_device(1e-2, &mut dev_slot, w_dev, gt);
        }
        let w_dev = host_f32(w_dev);
        let worst = w_host
            .iter()
            .zip(&w_dev)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "{kind:?}: worst difference {worst}");
        assert_eq!(host_slot.t, dev_slot.t);
        let [hm, hv] = host_slot.host_moments();
        let [dm, dv] = dev_slot.host_moments();
        assert_eq!((hm.len(), hv.len()), (dm.len(), dv.len()), "{kind:?}");
        for (a, b) in hm.iter().chain(&hv).zip(dm.iter().chain(&dv)) {
            assert!((a - b).abs() < 1e-6, "{kind:?}: moments {a} vs {b}");
        }
        assert_eq!(host_slot.len(), dev_slot.len());
        // Host moments (an imported state) move to the device at the next step.
        let mut moved = Slot {
            t: host_slot.t,
            m: hm,
            v: hv,
            dev: None,
        };
        let g = grad(9);
        let mut w_next = w_host.clone();
        opt.update(1e-2, &mut host_slot, &mut w_next, &g);
        let w_moved = host_f32(opt.update_on_device(
            1e-2,
            &mut moved,
            Tensor::<1>::from_data(TensorData::new(w_host, [n]), &d),
            Tensor::<1>::from_data(TensorData::new(g, [n]), &d),
        ));
        for (a, b) in w_next.iter().zip(&w_moved) {
            assert!((a - b).abs() < 1e-6, "{kind:?}: after import {a} vs {b}");
        }
        assert!(moved.m.is_empty() && moved.v.is_empty());
    }
}

/// The MLP's layers (model/dense.rs) keep the weights they saw for the backward pass; the pass
/// consumes them, so that the optimizer still updates every parameter in place.
#[test]
fn mlp_steps_update_in_place() {
    let d = Device::flex().autodiff();
    let net = {
        let _g = crate::backend::seeded(&Device::flex(), 3);
        crate::model::mlp::Mlp::new(20, &[64, 32], 5, &d)
    };
    let c = config(OptimKind::Adam, 0.0, 0.0);
    let mut o = Optimizer::new(&c);
    let mut net = net;
    for t in 0..3 {
        let x: Vec<f32> = (0..8 * 20)
            .map(|i| ((i * 13 + t) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [8, 20]), &d);
        let loss = net.forward(x).powi_scalar(2).mean();
        let g = GradientsParams::from_grads(loss.backward(), &net);
        net = o.step(c.lr, net, g);
    }
    assert_eq!(o.copied_updates(), 0, "updates were not in place");
}
