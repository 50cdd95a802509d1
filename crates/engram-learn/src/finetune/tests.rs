//! Mechanism tests of the selective fine-tuning methods on a tiny network and synthetic data.

use super::adam::State;
use super::params::{Host, Params};
use super::train::{LoopConfig, Plan, accuracy, train};
use super::*;
use crate::data::rng::Rng;
use burn::prelude::*;
use std::collections::BTreeMap;

fn tiny() -> ResMlpConfig {
    ResMlpConfig {
        input: 12,
        width: 8,
        hidden: 16,
        blocks: 4,
    }
}

/// Three Gaussian classes in 12 dimensions.
fn data(seed: u64, n: usize) -> Dataset {
    let mut r = Rng::new(seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = (i % 3) as u32;
        for d in 0..12 {
            let centre = if d % 3 == c as usize { 1.5 } else { 0.0 };
            x.push((centre + r.normal() * 0.5) as f32);
        }
        y.push(c);
    }
    Dataset {
        name: format!("blobs-{seed}"),
        x,
        y,
        dim: 12,
        image: None,
        num_classes: 3,
    }
}

fn lc(epochs: usize) -> LoopConfig {
    LoopConfig {
        epochs,
        batch: 16,
        adam: adam::AdamW {
            lr: 1e-2,
            ..Default::default()
        },
    }
}

fn pretrained() -> Params {
    pretrain(&tiny(), &data(1, 96), &lc(3), 5, &mut |_, _| {}).expect("pretrain")
}

/// Logits of `p` through `head` on the first rows of `d`, on the host.
fn logits(p: &Params, scale: f32, head: &str, d: &Dataset) -> Vec<f32> {
    let device = Device::flex();
    let t: BTreeMap<String, Tensor<2>> = p
        .iter()
        .map(|(n, h)| (n.clone(), h.tensor(&device)))
        .collect();
    let x = Tensor::<2>::from_data(
        TensorData::new(d.x[..8 * d.dim].to_vec(), [8, d.dim]),
        &device,
    );
    let v = resmlp::View {
        t: &t,
        lora_scale: scale,
        divergence: expand::Divergence::Mse,
    };
    params::to_host(v.logits(head, x).expect("forward").0).expect("host")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn pretraining_learns_the_source_task() {
    let p = pretrained();
    let acc = accuracy(&p, 0.0, SOURCE_HEAD, &data(2, 60)).unwrap();
    assert!(acc > 80.0, "{acc}");
}

#[test]
fn lift_trains_only_its_k_entries_with_k_sized_state() {
    let cfg = tiny();
    let mut p = pretrained();
    cfg.add_head(&mut p, TARGET_HEAD, 3, 9);
    let mut c = lift::SparseConfig::new(lift::Selection::Principal);
    c.r_lora = 1;
    c.filter_rank = 2;
    c.interval = 0; // one fixed mask: everything outside it must stay put
    let (mut plan, _) = Method::Sparse(c.clone()).plan(&cfg, p.clone(), 3).unwrap();
    let masks: BTreeMap<String, Vec<u32>> = plan
        .states
        .iter()
        .filter_map(|(n, s)| match s {
            State::Sparse { idx, .. } => Some((n.clone(), idx.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(masks.len(), cfg.body_weights().len());
    for (n, idx) in &masks {
        let w = &p[n];
        let k = engram_weights::spectral::lift_budget(w.rows, w.cols, 1);
        assert_eq!(idx.len(), k, "{n}");
        assert_eq!(
            plan.states[n].bytes(),
            12 * k,
            "{n}: two moments and an index per entry"
        );
        let expect = lift::select(&c, w, n, 3).unwrap();
        assert_eq!(idx, &expect);
    }
    train(
        &mut plan,
        TARGET_HEAD,
        &data(3, 64),
        &lc(2),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    for (n, idx) in &masks {
        let (before, after) = (&p[n].data, &plan.params[n].data);
        let mut moved = 0;
        for (i, (a, b)) in before.iter().zip(after).enumerate() {
            if idx.binary_search(&(i as u32)).is_ok() {
                moved += (a != b) as usize;
            } else {
                assert_eq!(a, b, "{n}[{i}] is outside the mask but changed");
            }
        }
        assert!(
            moved > idx.len() / 2,
            "{n}: only {moved} of {} moved",
            idx.len()
        );
    }
    // Biases and the source head are frozen.
    for n in ["stem.bias", "blocks.0.fc1.bias", "head.weight"] {
        assert_eq!(p[n], plan.params[n], "{n}");
    }
}

#[test]
fn lift_refresh_reselects_from_current_weights_and_keeps_state_size() {
    let cfg = tiny();
    let mut p = pretrained();
    cfg.add_head(&mut p, TARGET_HEAD, 3, 9);
    let mut c = lift::SparseConfig::new(lift::Selection::Principal);
    c.r_lora = 1;
    c.filter_rank = 2;
    c.interval = 2;
    let (mut plan, _) = Method::Sparse(c.clone()).plan(&cfg, p, 3).unwrap();
    let sizes: Vec<usize> = plan.states.values().map(State::len).collect();
    let first = plan.states.clone();
    train(
        &mut plan,
        TARGET_HEAD,
        &data(3, 64),
        &lc(1),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    let changed = cfg
        .body_weights()
        .iter()
        .filter(|n| match (&first[*n], &plan.states[*n]) {
            (State::Sparse { idx: a, .. }, State::Sparse { idx: b, .. }) => a != b,
            _ => false,
        })
        .count();
    assert!(changed > 0, "no mask was re-selected");
    let after: Vec<usize> = plan.states.values().map(State::len).collect();
    assert_eq!(sizes, after);
    // 4 steps, refreshes after steps 2 (not after the last): the masks are those of the
    // weights after step 2, which the final weights may no longer give; at least they are
    // valid selections of the right size.
    for n in cfg.body_weights() {
        if let State::Sparse { idx, .. } = &plan.states[&n] {
            assert!(idx.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[test]
fn kappa_ranking_equals_a_direct_computation() {
    // κ² = λ_max/λ_min of WᵀW, by cyclic Jacobi on the Gram matrix: a route that shares
    // nothing with the SVD.
    fn jacobi_kappa(w: &Host) -> f64 {
        let (m, n) = (w.rows, w.cols);
        let (a, k) = if m >= n {
            (w.clone(), n)
        } else {
            (transpose(w), m)
        };
        let r = a.rows;
        let mut g = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] = (0..r)
                    .map(|t| a.data[t * k + i] as f64 * a.data[t * k + j] as f64)
                    .sum();
            }
        }
        for _ in 0..60 {
            for p in 0..k {
                for q in p + 1..k {
                    let apq = g[p * k + q];
                    if apq.abs() < 1e-300 {
                        continue;
                    }
                    let theta = (g[q * k + q] - g[p * k + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for i in 0..k {
                        let (gip, giq) = (g[i * k + p], g[i * k + q]);
                        g[i * k + p] = c * gip - s * giq;
                        g[i * k + q] = s * gip + c * giq;
                    }
                    for i in 0..k {
                        let (gpi, gqi) = (g[p * k + i], g[q * k + i]);
                        g[p * k + i] = c * gpi - s * gqi;
                        g[q * k + i] = s * gpi + c * gqi;
                    }
                }
            }
        }
        let ev: Vec<f64> = (0..k).map(|i| g[i * k + i].max(0.0)).collect();
        let hi = ev.iter().cloned().fold(0.0, f64::max).sqrt();
        let lo = ev.iter().cloned().fold(f64::INFINITY, f64::min).sqrt();
        hi / (lo + 1e-8)
    }
    fn transpose(w: &Host) -> Host {
        let mut t = Host::zeros(w.cols, w.rows);
        for i in 0..w.rows {
            for j in 0..w.cols {
                t.data[j * w.rows + i] = w.data[i * w.cols + j];
            }
        }
        t
    }
    let cfg = tiny();
    let p = pretrained();
    let names = cfg.body_weights();
    let k = kappatune::kappas(&p, &names).unwrap();
    let direct: Vec<(String, f64)> = names
        .iter()
        .map(|n| (n.clone(), jacobi_kappa(&p[n])))
        .collect();
    for ((n, a), (_, b)) in k.iter().zip(&direct) {
        assert!((a - b).abs() / b < 1e-4, "{n}: {a} vs {b}");
    }
    let order = kappatune::ascending(&k);
    assert_eq!(order, kappatune::ascending(&direct));
    let low = kappatune::choose(kappatune::Pick::Lowest, 3, &k, 0);
    let high = kappatune::choose(kappatune::Pick::Highest, 3, &k, 0);
    assert_eq!(low, order[..3].to_vec());
    assert_eq!(high, order[order.len() - 3..].to_vec());
    let rand = kappatune::choose(kappatune::Pick::Random, 3, &k, 0);
    assert_eq!(rand.len(), 3);
    assert_eq!(rand, kappatune::choose(kappatune::Pick::Random, 3, &k, 0));
}

#[test]
fn kappatune_changes_only_the_chosen_weights() {
    let cfg = tiny();
    let p = pretrained();
    let out = fine_tune(
        &Method::Kappa {
            pick: kappatune::Pick::Lowest,
            n: 2,
        },
        &cfg,
        &p,
        (&data(3, 48), &data(4, 30)),
        &data(2, 30),
        &lc(1),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.selected.len(), 2);
    let want: usize = out.selected.iter().map(|n| p[n].numel()).sum::<usize>() + 8 * 3 + 3;
    assert_eq!(out.trainable, want);
    // Run the plan directly to look at the weights.
    let mut q = p.clone();
    cfg.add_head(&mut q, TARGET_HEAD, 3, 9);
    let (mut plan, chosen) = Method::Kappa {
        pick: kappatune::Pick::Lowest,
        n: 2,
    }
    .plan(&cfg, q.clone(), 1)
    .unwrap();
    train(
        &mut plan,
        TARGET_HEAD,
        &data(3, 48),
        &lc(1),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    for n in cfg.body_params() {
        let same = q[&n] == plan.params[&n];
        assert_eq!(same, !chosen.contains(&n), "{n}");
    }
}

#[test]
fn lora_starts_as_the_identity_and_merging_keeps_the_function() {
    let cfg = tiny();
    let mut p = pretrained();
    cfg.add_head(&mut p, TARGET_HEAD, 3, 9);
    let d = data(3, 48);
    let before = logits(&p, 0.0, SOURCE_HEAD, &d);
    let c = lora::LoraConfig {
        r: 2,
        alpha: 4.0,
        targets: Vec::new(),
    };
    let (mut plan, _) = Method::Lora(c.clone()).plan(&cfg, p.clone(), 1).unwrap();
    assert_eq!(plan.lora_scale, 2.0);
    assert_eq!(logits(&plan.params, 2.0, SOURCE_HEAD, &d), before);
    train(&mut plan, TARGET_HEAD, &d, &lc(2), 1, &mut |_, _| {}).unwrap();
    for n in cfg.body_params() {
        assert_eq!(p[&n], plan.params[&n], "{n} is frozen under LoRA");
    }
    let trained = logits(&plan.params, 2.0, SOURCE_HEAD, &d);
    assert!(
        max_diff(&trained, &before) > 1e-4,
        "the adapters moved nothing"
    );
    let mut merged = plan.params.clone();
    lora::merge(&mut merged, 2.0).unwrap();
    assert!(merged.keys().all(|n| !n.contains("lora")));
    let m = logits(&merged, 0.0, SOURCE_HEAD, &d);
    assert!(max_diff(&m, &trained) < 1e-4, "{}", max_diff(&m, &trained));
}

#[test]
fn lora_targets_choose_the_adapted_weights() {
    let cfg = tiny();
    let mut p = pretrained();
    cfg.add_head(&mut p, TARGET_HEAD, 3, 9);
    let c = lora::LoraConfig {
        r: 2,
        alpha: 4.0,
        targets: vec!["fc1".into(), "stem".into()],
    };
    assert_eq!(Method::Lora(c.clone()).label(), "lora r2 on fc1+stem");
    let (plan, _) = Method::Lora(c).plan(&cfg, p, 1).unwrap();
    let adapted: Vec<&String> = plan
        .params
        .keys()
        .filter(|n| n.ends_with(".lora_a"))
        .collect();
    assert_eq!(adapted.len(), 1 + cfg.blocks);
    assert!(
        adapted
            .iter()
            .all(|n| n.contains("fc1") || n.starts_with("stem"))
    );
    // Trained: the adapters (A and B of each) and the new head.
    assert_eq!(plan.states.len(), 2 * (1 + cfg.blocks) + 2);
}

#[test]
fn expanded_network_equals_the_original_at_initialisation() {
    let p = pretrained();
    let d = data(3, 48);
    let before = logits(&p, 0.0, SOURCE_HEAD, &d);
    assert_eq!(expand::placement(4, 2), vec![1, 3]);
    assert_eq!(expand::placement(32, 8), vec![3, 7, 11, 15, 19, 23, 27, 31]);
    for gate in [
        expand::Gate::Lerp {
            a: 0.0,
            trainable: false,
        },
        expand::Gate::Lerp {
            a: 1.3,
            trainable: true,
        },
        expand::Gate::Dlerp,
    ] {
        let c = expand::ExpandConfig {
            blocks: vec![1, 3],
            lambda: 0.1,
            gate,
            divergence: expand::Divergence::Mse,
        };
        let mut q = p.clone();
        let names = expand::attach(&c, &mut q, 1).unwrap();
        assert!(names.iter().all(|n| n.contains(".exp.")));
        let after = logits(&q, 0.0, SOURCE_HEAD, &d);
        assert!(max_diff(&after, &before) < 1e-5, "{:?}", c.gate);
    }
    let bad = expand::ExpandConfig::new(vec![7], 0.0);
    assert!(expand::attach(&bad, &mut p.clone(), 1).is_err());
}

#[test]
fn expansion_trains_only_the_copies_and_merges_back_exactly_at_alpha_one() {
    let cfg = tiny();
    let mut p = pretrained();
    cfg.add_head(&mut p, TARGET_HEAD, 3, 9);
    let d = data(3, 48);
    let c = expand::ExpandConfig {
        blocks: vec![1],
        lambda: 0.0,
        divergence: expand::Divergence::Mse,
        // sigmoid(40) is 1 in f32: the merged block is the expanded copy.
        gate: expand::Gate::Lerp {
            a: 40.0,
            trainable: false,
        },
    };
    let (mut plan, _) = Method::Expand(c).plan(&cfg, p.clone(), 1).unwrap();
    train(&mut plan, TARGET_HEAD, &d, &lc(2), 1, &mut |_, _| {}).unwrap();
    for n in cfg.body_params() {
        assert_eq!(p[&n], plan.params[&n], "{n} is an original parameter");
    }
    assert_ne!(
        p["blocks.1.fc1.weight"],
        plan.params["blocks.1.exp.fc1.weight"]
    );
    let trained = logits(&plan.params, 0.0, TARGET_HEAD, &d);
    let mut merged = plan.params.clone();
    expand::merge_back(&mut merged).unwrap();
    assert!(merged.keys().all(|n| !n.contains(".exp.")));
    let m = logits(&merged, 0.0, TARGET_HEAD, &d);
    assert!(max_diff(&m, &trained) < 1e-5);
    // Divergence weight: with λ > 0 the copies stay closer to the original, for both
    // divergences.
    let dist = |lambda: f32, divergence: expand::Divergence| {
        let c = expand::ExpandConfig {
            divergence,
            ..expand::ExpandConfig::new(vec![1, 3], lambda)
        };
        let (mut plan, _) = Method::Expand(c).plan(&cfg, p.clone(), 1).unwrap();
        train(&mut plan, TARGET_HEAD, &d, &lc(3), 1, &mut |_, _| {}).unwrap();
        let a = &plan.params["blocks.1.exp.fc2.weight"].data;
        let b = &p["blocks.1.fc2.weight"].data;
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
    };
    let (mse, cos) = (expand::Divergence::Mse, expand::Divergence::Cosine);
    assert!(dist(10.0, mse) < dist(0.0, mse));
    assert!(dist(10.0, cos) < dist(0.0, cos));
}

#[test]
fn full_fine_tuning_moves_everything_and_head_only_nothing_of_the_body() {
    let cfg = tiny();
    let p = pretrained();
    let t = (&data(3, 48), &data(4, 30));
    let src = data(2, 30);
    let full = fine_tune(&Method::Full, &cfg, &p, t, &src, &lc(1), 1, &mut |_, _| {}).unwrap();
    let head = fine_tune(
        &Method::HeadOnly,
        &cfg,
        &p,
        t,
        &src,
        &lc(1),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    let body: usize = cfg.body_params().iter().map(|n| p[n].numel()).sum();
    assert_eq!(full.trainable, body + 27);
    assert_eq!(head.trainable, 27);
    assert_eq!(full.optimizer_bytes, 8 * (body + 27));
    // The head alone cannot change the source task's predictions.
    let before = accuracy(&p, 0.0, SOURCE_HEAD, &src).unwrap();
    assert_eq!(head.source_accuracy, before);
    // Same seed, same result.
    let again = fine_tune(&Method::Full, &cfg, &p, t, &src, &lc(1), 1, &mut |_, _| {}).unwrap();
    assert_eq!(
        (again.target_accuracy, again.source_accuracy),
        (full.target_accuracy, full.source_accuracy)
    );
}

#[test]
fn plan_rejects_unknown_names() {
    let p = pretrained();
    assert!(Plan::dense(&p, &["nope.weight".to_string()]).is_err());
    let bad = lora::LoraConfig {
        r: 0,
        alpha: 1.0,
        targets: Vec::new(),
    };
    assert!(Method::Lora(bad).plan(&tiny(), p.clone(), 0).is_err());
    let nowhere = lora::LoraConfig {
        targets: vec!["attn".into()],
        ..Default::default()
    };
    assert!(Method::Lora(nowhere).plan(&tiny(), p, 0).is_err());
}
