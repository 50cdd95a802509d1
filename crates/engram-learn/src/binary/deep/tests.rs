use super::*;
use crate::binary::tasks::permuted_tasks;

/// `n` examples of `classes` classes with `dim` features: class c lights its own block of
/// features (1 plus noise), the rest is noise in [0, 0.2).
fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let block = dim / classes;
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for j in 0..dim {
            let lit = j / block == c;
            x.push(if lit {
                0.8 + 0.4 * rng.uniform()
            } else {
                0.2 * rng.uniform()
            });
        }
        y.push(c as u32);
    }
    (x, y)
}

fn tiny_tasks(tasks: usize) -> Vec<Task> {
    let (x, y) = blobs(200, 24, 3, 1);
    let (xt, yt) = blobs(90, 24, 3, 2);
    permuted_tasks(&x, &y, &xt, &yt, tasks, 5).unwrap()
}

fn tiny_cfg() -> DeepConfig {
    DeepConfig {
        hidden: vec![32],
        classes: 3,
        epochs: 3,
        batch: 16,
        seed: 3,
        ..DeepConfig::default()
    }
}

/// Long enough for the per-step arm, whose proximal term slows every field down.
fn learning_cfg() -> DeepConfig {
    DeepConfig {
        hidden: vec![32],
        classes: 3,
        epochs: 10,
        batch: 8,
        seed: 3,
        ..DeepConfig::default()
    }
}

fn batch(task: &Task, rows: usize) -> (Vec<f32>, Vec<u32>) {
    (task.x[..rows * task.dim].to_vec(), task.y[..rows].to_vec())
}

#[test]
fn beta_schedule_runs_from_1_8_to_9_7_over_five_by_five() {
    let first = beta_schedule(0, 0, 5, 5);
    let last = beta_schedule(4, 4, 5, 5);
    assert!((first - 10.0 * 0.18f64.tanh()).abs() < 1e-12);
    assert!((first - 1.78).abs() < 0.01, "{first}");
    assert!((last - 9.70).abs() < 0.01, "{last}");
    let mut prev = 0.0;
    for t in 0..5 {
        for e in 0..5 {
            let b = beta_schedule(t, e, 5, 5);
            assert!(b > prev);
            prev = b;
        }
    }
}

#[test]
fn every_arm_learns_an_easy_task() {
    let tasks = tiny_tasks(2);
    for arm in Arm::all() {
        let mut heard = 0;
        let out = run(arm, &learning_cfg(), &tasks, &mut |p| {
            assert_eq!(p.arm, arm.name());
            assert_eq!(p.beta.is_some(), arm.is_field());
            heard += 1;
        })
        .unwrap();
        assert_eq!(heard, 2 * 10);
        assert_eq!(out.arm, arm.name());
        assert_eq!(out.acc_binary.len(), 2);
        assert!(out.acc_binary.iter().all(|r| r.len() == 2));
        // Chance is 1/3.
        for i in 0..2 {
            assert!(
                out.acc_binary[i][i] > 0.8,
                "{}: {:?}",
                arm.name(),
                out.acc_binary
            );
            assert!(
                out.acc_mean_field[i][i] > 0.8,
                "{}: {:?}",
                arm.name(),
                out.acc_mean_field
            );
        }
        if !arm.is_field() {
            assert_eq!(out.acc_mean_field, out.acc_binary);
        }
        assert!(out.train_loss.iter().flatten().all(|l| l.is_finite()));
    }
}

#[test]
fn export_is_the_sign_of_the_trained_values() {
    let tasks = tiny_tasks(1);
    for arm in Arm::all() {
        let mut net = DeepNet::new(arm, &tiny_cfg(), 24).unwrap();
        net.train_task(&tasks[0], 0, 1, &mut |_, _, _| {}).unwrap();
        let (e, p) = (net.export(), net.params());
        assert_eq!(e.len(), 2);
        for ((ne, ve), (np, vp)) in e.iter().zip(&p) {
            assert_eq!(ne, np);
            assert_eq!(ve.len(), vp.len());
            for (&s, &v) in ve.iter().zip(vp) {
                assert_eq!(s, if v < 0.0 { -1.0 } else { 1.0 });
            }
        }
        assert_eq!(e[0].0, "layers.0.weight");
        assert_eq!(e[0].1.len(), 24 * 32);
        // The leaves were written in place every step.
        assert_eq!(net.copied_updates(), 0, "{}", arm.name());
    }
}

#[test]
fn per_step_term_is_beta_squared_sigma_times_the_step() {
    let tasks = tiny_tasks(1);
    let cfg = DeepConfig {
        hidden: vec![4],
        ..tiny_cfg()
    };
    let mut net = DeepNet::new(Arm::FieldPerStep, &cfg, 24).unwrap();
    let beta = 2.5;
    net.set_beta(beta).unwrap();
    let before: Vec<Vec<f32>> = net.layers.iter().map(|l| l.p.clone()).collect();
    assert!(net.layers.iter().all(|l| l.aux.iter().all(|&k| k == 0.0)));
    let (x, y) = batch(&tasks[0], 8);
    let loss = net.step(x, &y, &mut Rng::new(1), 1.0).unwrap();
    assert!(loss.is_finite());
    let b2 = (beta * beta) as f32;
    let mut moved = 0;
    for (l, layer) in net.layers.iter().enumerate() {
        let s = layer.s.as_ref().unwrap().as_slice::<f32>().unwrap();
        for i in 0..layer.len() {
            let dh = layer.p[i] - before[l][i];
            moved += usize::from(dh != 0.0);
            // Exactly what the step stored, from the σ it wrote...
            assert_eq!(layer.aux[i], b2 * s[i] * dh);
            // ... and by hand: β²/cosh²(βh)·Δh at the new fields.
            let sig = 1.0 / (beta * layer.p[i] as f64).cosh().powi(2);
            let want = beta * beta * sig * dh as f64;
            assert!(
                (layer.aux[i] as f64 - want).abs() <= 1e-5 * want.abs() + 1e-12,
                "layer {l}, {i}: {} vs {want}",
                layer.aux[i]
            );
        }
    }
    assert!(moved > 0);
}

#[test]
fn metaplastic_step_damps_only_updates_towards_zero() {
    let tasks = tiny_tasks(1);
    let cfg = tiny_cfg();
    // m = 0 is plain Adam on the latent weights (factor 1 everywhere, no clipping).
    let mut plain = DeepNet::new(Arm::Meta { m: 0.0 }, &cfg, 24).unwrap();
    let mut meta = DeepNet::new(Arm::Meta { m: 1.3 }, &cfg, 24).unwrap();
    let start: Vec<Vec<f32>> = meta.layers.iter().map(|l| l.p.clone()).collect();
    let (x, y) = batch(&tasks[0], 16);
    plain.step(x.clone(), &y, &mut Rng::new(1), 1.0).unwrap();
    meta.step(x, &y, &mut Rng::new(1), 1.0).unwrap();
    let (mut towards, mut away) = (0, 0);
    for (l, (before, (p, q))) in start
        .iter()
        .zip(plain.layers.iter().zip(&meta.layers))
        .enumerate()
    {
        for (i, (&w, (&wp, &wq))) in before.iter().zip(p.p.iter().zip(&q.p)).enumerate() {
            let u = wp - w;
            let got = wq - w;
            if u * w < 0.0 {
                towards += 1;
                let f = 1.0 - (1.3 * w).tanh().powi(2);
                assert!((got - u * f).abs() < 1e-6, "{l}/{i}: {got} vs {}", u * f);
            } else {
                away += 1;
                assert!((got - u).abs() < 1e-6, "{l}/{i}: {got} vs {u}");
            }
        }
    }
    assert!(towards > 0 && away > 0);
}

#[test]
fn anchor_arm_takes_each_task_end_as_its_next_anchor() {
    let tasks = tiny_tasks(1);
    let mut net = DeepNet::new(Arm::FieldAnchor, &tiny_cfg(), 24).unwrap();
    assert!(net.layers.iter().all(|l| l.aux.iter().all(|&v| v == 0.0)));
    net.train_task(&tasks[0], 0, 2, &mut |_, _, _| {}).unwrap();
    assert!(net.layers.iter().all(|l| l.aux == l.p));
    assert!((net.beta() - beta_schedule(0, 2, 2, 3)).abs() < 1e-12);
}

#[test]
fn same_seed_same_run_and_another_seed_another() {
    let tasks = tiny_tasks(2);
    let cfg = DeepConfig {
        epochs: 1,
        ..tiny_cfg()
    };
    for arm in [Arm::FieldPerStep, Arm::Ste] {
        let go = |cfg: &DeepConfig| {
            let mut net = DeepNet::new(arm, cfg, 24).unwrap();
            for (i, t) in tasks.iter().enumerate() {
                net.train_task(t, i, 2, &mut |_, _, _| {}).unwrap();
            }
            let acc = net.accuracy_mean_field(&tasks[0].x_test, &tasks[0].y_test, 0);
            (net.params(), acc.unwrap())
        };
        assert_eq!(go(&cfg), go(&cfg), "{}", arm.name());
        let other = DeepConfig {
            seed: 4,
            ..cfg.clone()
        };
        assert_ne!(go(&cfg).0, go(&other).0, "{}", arm.name());
        let mut a = run(arm, &cfg, &tasks, &mut |_| {}).unwrap();
        let mut b = run(arm, &cfg, &tasks, &mut |_| {}).unwrap();
        (a.seconds, b.seconds) = (0.0, 0.0);
        assert_eq!(a, b);
    }
}

#[test]
fn bad_settings_and_data_are_errors_naming_the_field() {
    let bad = [
        (
            DeepConfig {
                hidden: vec![0],
                ..tiny_cfg()
            },
            "deep.hidden[0]",
        ),
        (
            DeepConfig {
                classes: 1,
                ..tiny_cfg()
            },
            "deep.classes",
        ),
        (
            DeepConfig {
                epochs: 0,
                ..tiny_cfg()
            },
            "deep.epochs",
        ),
        (
            DeepConfig {
                batch: 0,
                ..tiny_cfg()
            },
            "deep.batch",
        ),
        (
            DeepConfig {
                lr: f64::NAN,
                ..tiny_cfg()
            },
            "deep.lr",
        ),
        (
            DeepConfig {
                beta2: 1.0,
                ..tiny_cfg()
            },
            "deep.beta2",
        ),
        (
            DeepConfig {
                adam_eps: 0.0,
                ..tiny_cfg()
            },
            "deep.adam_eps",
        ),
        (
            DeepConfig {
                field_init_std: -1.0,
                ..tiny_cfg()
            },
            "deep.field_init_std",
        ),
        (
            DeepConfig {
                eval_samples: Some(0),
                ..tiny_cfg()
            },
            "deep.eval_samples",
        ),
    ];
    for (c, key) in bad {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    assert!(DeepConfig::default().validate().is_ok());
    assert!(Arm::Meta { m: f64::NAN }.validate().is_err());
    let tasks = tiny_tasks(1);
    assert!(run(Arm::Ste, &tiny_cfg(), &[], &mut |_| {}).is_err());
    let mut wide = tasks[0].clone();
    wide.dim = 12;
    wide.x.truncate(200 * 12);
    wide.x_test.truncate(90 * 12);
    let e = run(
        Arm::Ste,
        &tiny_cfg(),
        &[tasks[0].clone(), wide],
        &mut |_| {},
    );
    assert!(e.unwrap_err().to_string().contains("task 1"));
    let mut labels = tasks[0].clone();
    labels.y[0] = 7;
    assert!(run(Arm::Ste, &tiny_cfg(), &[labels], &mut |_| {}).is_err());
    let mut net = DeepNet::new(Arm::FieldAnchor, &tiny_cfg(), 24).unwrap();
    assert!(net.set_beta(f64::INFINITY).is_err());
    assert!(net.accuracy_binary(&[0.0; 5], &[0]).is_err());
}
