//! Mechanism tests of the selective fine-tuning strategies (LIFT, KappaTune, LoRA, block
//! expansion) on the one trainer: a residual MLP pre-trained on task 0 of a Task-IL blobs
//! scenario, then fine-tuned on task 1 from those weights by each strategy.

use engram_learn::model::params::host_params;
use engram_learn::model::{ModelConfig, Net};
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{Scenario, ScenarioConfig};
use engram_learn::strategy;
use engram_learn::train::{RunOutput, Start, TrainConfig, Trainer};
use engram_weights::spectral::{self, SpectralOptions};
use serde_json::json;
use std::collections::BTreeMap;

type Values = BTreeMap<String, Vec<f32>>;
/// A strategy's masks: (name, shape, values).
type Masks = Vec<(String, Vec<usize>, Vec<f32>)>;

fn scenario() -> Scenario {
    ScenarioConfig::from_json(
        r#"{"kind": "task-incremental", "dataset": "blobs", "tasks": 2, "classes-per-task": 2,
            "seed": 1, "blobs": {"train-per-class": 60, "test-per-class": 20, "dim": 12, "image": false}}"#,
    )
    .and_then(|c| c.build(None))
    .expect("blobs")
}

fn model() -> ModelConfig {
    ModelConfig::Resmlp {
        width: 8,
        hidden: 16,
        blocks: 4,
    }
}

fn train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        optimizer: OptimConfig::new(OptimKind::Adamw, 1e-2),
        ..Default::default()
    }
}

fn values(net: &Net) -> Values {
    host_params(net)
        .into_iter()
        .map(|(i, v)| (i.name, v))
        .collect()
}

/// The network after task 0 (every parameter trained).
fn pretrained(s: &Scenario) -> Values {
    let mut t = Trainer {
        stop_after: Some(1),
        ..Trainer::new(
            s,
            model(),
            train_cfg(3),
            5,
            strategy::build("naive", &json!(null)).unwrap(),
        )
    };
    values(&t.run_net(&mut |_| {}).unwrap().1)
}

/// Task 1 from `init` with `name`; the run, the trained weights and the strategy's masks.
fn fine_tune(
    s: &Scenario,
    init: &Values,
    name: &str,
    params: serde_json::Value,
    epochs: usize,
) -> (RunOutput, Values, Masks) {
    let mut t = Trainer {
        start: Some(Start {
            task: 1,
            values: init.clone(),
        }),
        ..Trainer::new(
            s,
            model(),
            train_cfg(epochs),
            7,
            strategy::build(name, &params).unwrap(),
        )
    };
    let (out, net) = t.run_net(&mut |_| {}).unwrap();
    (out, values(&net), t.strategy.masks())
}

const HEAD: [&str; 2] = ["head.weight", "head.bias"];

fn body_weights(v: &Values) -> Vec<String> {
    v.keys()
        .filter(|n| n.ends_with(".weight") && !HEAD.contains(&n.as_str()))
        .cloned()
        .collect()
}

#[test]
fn lift_trains_only_its_k_entries_with_k_sized_state() {
    let s = scenario();
    let p = pretrained(&s);
    let (out, after, masks) = fine_tune(
        &s,
        &p,
        "lift",
        json!({"rank": 1, "filter-rank": 2, "interval": 1000000}),
        2,
    );
    let weights = body_weights(&p);
    assert_eq!(masks.len(), weights.len());
    let mut k_total = 0;
    for (mname, shape, m) in &masks {
        let n = mname.trim_start_matches("lift.mask.");
        let (rows, cols) = (shape[0], shape[1]);
        let k = spectral::lift_budget(rows, cols, 1);
        let idx: Vec<u32> = (0..m.len() as u32)
            .filter(|&i| m[i as usize] == 1.0)
            .collect();
        assert_eq!(idx.len(), k, "{n}");
        k_total += k;
        // The mask is LIFT's selection on the pre-trained weights (no refresh).
        let expect =
            spectral::principal_indices(&p[n], rows, cols, 2, k, &SpectralOptions::default())
                .unwrap();
        assert_eq!(idx, expect, "{n}");
        // Every entry outside the mask is where it was; some inside moved.
        let mut moved = 0;
        for (i, (a, b)) in p[n].iter().zip(&after[n]).enumerate() {
            if m[i] == 0.0 {
                assert_eq!(a, b, "{n}[{i}] moved outside the mask");
            } else if a != b {
                moved += 1;
            }
        }
        assert!(moved > 0, "{n}: nothing trained");
    }
    for (n, v) in &p {
        if n.ends_with(".bias") && !HEAD.contains(&n.as_str()) {
            assert_eq!(v, &after[n], "{n}: biases stay frozen");
        }
    }
    // Two moments and an index per chosen entry; the head trains densely besides.
    assert_eq!(out.strategy_state_bytes, 12 * k_total as u64);
    let head: usize = HEAD.iter().map(|h| p[*h].len()).sum();
    assert_eq!(out.trainable_values, Some(k_total + head));
}

#[test]
fn lift_refresh_reselects_from_the_current_weights_and_the_controls_differ() {
    let s = scenario();
    let p = pretrained(&s);
    // Refreshed after every step, the last mask is LIFT's selection on the final weights.
    let (_, after, masks) = fine_tune(&s, &p, "lift", json!({"interval": 1, "rank": 1}), 2);
    for (mname, shape, m) in &masks {
        let n = mname.trim_start_matches("lift.mask.");
        let k = spectral::lift_budget(shape[0], shape[1], 1);
        let idx: Vec<u32> = (0..m.len() as u32)
            .filter(|&i| m[i as usize] == 1.0)
            .collect();
        let expect = spectral::principal_indices(
            &after[n],
            shape[0],
            shape[1],
            8,
            k,
            &SpectralOptions::default(),
        )
        .unwrap();
        assert_eq!(idx, expect, "{n}");
    }
    // A rank-1 filter on these 8 × 16 matrices: LIFT's W′ differs from W (at rank 8 it is W).
    let fixed = fine_tune(
        &s,
        &p,
        "lift",
        json!({"interval": 1000000, "rank": 1, "filter-rank": 1}),
        1,
    )
    .2;
    let magnitude = fine_tune(
        &s,
        &p,
        "lift",
        json!({"interval": 1000000, "rank": 1, "selection": "magnitude"}),
        1,
    )
    .2;
    let random = fine_tune(&s, &p, "lift", json!({"rank": 1, "selection": "random"}), 1).2;
    assert_ne!(fixed, magnitude);
    assert_ne!(magnitude, random);
    for (a, b) in fixed.iter().zip(&random) {
        assert_eq!(
            a.2.iter().sum::<f32>(),
            b.2.iter().sum::<f32>(),
            "same budget"
        );
    }
}

#[test]
fn kappatune_ranks_by_condition_number_and_changes_only_the_chosen_weights() {
    let s = scenario();
    let p = pretrained(&s);
    let (_, after, masks) = fine_tune(&s, &p, "kappatune", json!({"n": 2}), 2);
    // κ per weight as the SVD gives it, and the two lowest unfrozen.
    let mut ks: Vec<(String, f64)> = Vec::new();
    for (name, _, v) in &masks {
        let n = name.trim_start_matches("kappatune.");
        ks.push((n.to_string(), v[0] as f64));
    }
    let mut order = ks.clone();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let chosen: Vec<&str> = order[..2].iter().map(|(n, _)| n.as_str()).collect();
    for (name, _, v) in &masks {
        let n = name.trim_start_matches("kappatune.");
        assert_eq!(v[1] == 1.0, chosen.contains(&n), "{n}");
    }
    for (n, v) in &p {
        let trains = chosen.contains(&n.as_str()) || HEAD.contains(&n.as_str());
        assert_eq!(v != &after[n], trains, "{n}");
    }
}

/// Rows of a body weight of [`model`] (its input width).
fn rows_of(name: &str) -> usize {
    if name == "stem.weight" {
        12
    } else if name.ends_with("fc1.weight") {
        8
    } else {
        16
    }
}

#[test]
fn kappa_equals_a_direct_computation() {
    // κ² = λ_max/λ_min of WᵀW by cyclic Jacobi on the Gram matrix: a route that shares nothing
    // with the SVD.
    fn jacobi_kappa(w: &[f32], rows: usize, cols: usize) -> f64 {
        let k = cols.min(rows);
        let at = |t: usize, i: usize| -> f64 {
            if cols <= rows {
                w[t * cols + i] as f64
            } else {
                w[i * cols + t] as f64
            }
        };
        let r = rows.max(cols);
        let mut g = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] = (0..r).map(|t| at(t, i) * at(t, j)).sum();
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
    let s = scenario();
    let p = pretrained(&s);
    let (_, _, masks) = fine_tune(&s, &p, "kappatune", json!({"n": 1}), 1);
    assert_eq!(masks.len(), body_weights(&p).len());
    for (name, _, v) in &masks {
        let n = name.trim_start_matches("kappatune.");
        let rows = rows_of(n);
        let direct = jacobi_kappa(&p[n], rows, p[n].len() / rows);
        assert!(
            ((v[0] as f64) - direct).abs() <= 1e-4 * direct,
            "{n}: {} vs {direct}",
            v[0]
        );
    }
}

#[test]
fn lora_moves_targets_by_a_rank_r_update_and_nothing_else() {
    let s = scenario();
    let p = pretrained(&s);
    let (out, after, _) = fine_tune(&s, &p, "lora", json!({"r": 1, "alpha": 2.0}), 2);
    for (n, v) in &p {
        if HEAD.contains(&n.as_str()) {
            continue;
        }
        if n.ends_with(".bias") {
            assert_eq!(v, &after[n], "{n}");
            continue;
        }
        // W − W₀ = (α/r)·A·B has rank 1.
        let rows = rows_of(n);
        let cols = v.len() / rows;
        let d: Vec<f32> = after[n].iter().zip(v).map(|(a, b)| a - b).collect();
        let sp = spectral::spectrum(&d, rows, cols, &SpectralOptions::default()).unwrap();
        assert!(sp.singular_values[0] > 1e-4, "{n} did not train");
        assert!(
            sp.singular_values[1] < 1e-4 * sp.singular_values[0],
            "{n}: rank above 1: {:?}",
            sp.singular_values
        );
    }
    let factors: usize = body_weights(&p)
        .iter()
        .map(|n| rows_of(n) + p[n].len() / rows_of(n))
        .sum();
    let head: usize = HEAD.iter().map(|h| p[*h].len()).sum();
    assert_eq!(out.trainable_values, Some(factors + head));
    // Targets by name, and an unknown target is an error naming it.
    let (_, t, _) = fine_tune(
        &s,
        &p,
        "lora",
        json!({"targets": ["blocks.1.fc1.weight"]}),
        1,
    );
    assert_ne!(t["blocks.1.fc1.weight"], p["blocks.1.fc1.weight"]);
    assert_eq!(t["blocks.2.fc1.weight"], p["blocks.2.fc1.weight"]);
    let mut bad = Trainer {
        start: Some(Start {
            task: 1,
            values: p.clone(),
        }),
        ..Trainer::new(
            &s,
            model(),
            train_cfg(1),
            7,
            strategy::build("lora", &json!({"targets": ["blocks.9.fc1.weight"]})).unwrap(),
        )
    };
    let e = bad.run(&mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("blocks.9.fc1.weight"), "{e}");
}

#[test]
fn block_expansion_trains_only_the_copies_and_the_divergence_holds_them_close() {
    let s = scenario();
    let p = pretrained(&s);
    let (_, after, _) = fine_tune(
        &s,
        &p,
        "block-expansion",
        json!({"blocks": [1], "lambda": 0.0}),
        2,
    );
    for (n, v) in &p {
        if !HEAD.contains(&n.as_str()) {
            assert_eq!(v, &after[n], "{n} is an original parameter");
        }
    }
    let copies: Vec<&String> = after.keys().filter(|n| n.starts_with("exp.")).collect();
    assert!(!copies.is_empty());
    assert_ne!(after["exp.1.block.fc1.weight"], p["blocks.1.fc1.weight"]);
    let dist = |lambda: f64, divergence: &str| {
        let (_, a, _) = fine_tune(
            &s,
            &p,
            "block-expansion",
            json!({"blocks": [1, 3], "lambda": lambda, "divergence": divergence}),
            3,
        );
        a["exp.1.block.fc2.weight"]
            .iter()
            .zip(&p["blocks.1.fc2.weight"])
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
    };
    assert!(dist(10.0, "mse") < dist(0.0, "mse"));
    assert!(dist(10.0, "cosine") < dist(0.0, "cosine"));
}
