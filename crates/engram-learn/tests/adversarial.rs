//! Adversarial training through the trainer (`[train.adversarial]`): it trains networks that
//! resist the attack better than standard training, the reweighting paths are wired (DRO at a
//! huge temperature is PGD-AT), and a run resumed from a checkpoint ends with the same bytes.

use engram_learn::model::ModelConfig;
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::robust::attack::{Attack, clean_correct, percent, robust_correct};
use engram_learn::robust::{Adversarial, Method};
use engram_learn::scenario::{Part, Scenario, ScenarioConfig};
use engram_learn::strategy;
use engram_learn::train::{RunOutput, TrainConfig, Trainer};

fn scenario() -> Scenario {
    ScenarioConfig::from_json(
        r#"{"kind": "joint", "dataset": "blobs", "seed": 1,
            "blobs": {"classes": 3, "dim": 64, "separation": 1.0, "train-per-class": 120, "test-per-class": 60}}"#,
    )
    .and_then(|c| c.build(None))
    .expect("blobs")
}

fn train(adv: Option<Adversarial>) -> TrainConfig {
    TrainConfig {
        epochs: 6,
        batch_size: 32,
        optimizer: OptimConfig::new(OptimKind::Adam, 0.01),
        adversarial: adv,
        ..Default::default()
    }
}

fn run(
    s: &Scenario,
    adv: Option<Adversarial>,
    dir: Option<&std::path::Path>,
    stop: Option<usize>,
) -> (RunOutput, engram_learn::model::Net) {
    let mut t = Trainer {
        checkpoint_dir: dir.map(std::path::Path::to_path_buf),
        stop_after: stop,
        ..Trainer::new(
            s,
            ModelConfig::Mlp { hidden: vec![32] },
            train(adv),
            3,
            strategy::build("naive", &serde_json::Value::Null).expect("naive"),
        )
    };
    t.run_net(&mut |_| {}).expect("run")
}

fn test_set(s: &Scenario) -> (Vec<f32>, Vec<u32>) {
    let ids: Vec<(usize, usize)> = (0..s.test.len()).map(|i| (0, i)).collect();
    s.gather(Part::Test, &ids)
}

fn adv(method: Method) -> Adversarial {
    Adversarial {
        method,
        epsilon: 0.08,
        step: 0.02,
        steps: 5,
        ..Default::default()
    }
}

#[test]
fn adversarial_training_resists_the_attack_and_resumes_exactly() {
    let s = scenario();
    let (x, y) = test_set(&s);
    let attack = Attack::pgd(0.08, 0.02, 10);
    let (_, std_net) = run(&s, None, None, None);
    let (_, at_net) = run(&s, Some(adv(Method::PgdAt)), None, None);
    let robust = |n| percent(&robust_correct(n, &x, &y, &attack, 0, 64).unwrap());
    let (r_std, r_at) = (robust(&std_net), robust(&at_net));
    let clean_at = percent(&clean_correct(&at_net, &x, &y, 64).unwrap());
    eprintln!("clean AT {clean_at}, robust std {r_std}, AT {r_at}");
    assert!(clean_at > 60.0, "AT still learns: {clean_at}");
    assert!(
        r_at > r_std + 10.0,
        "PGD-AT robust accuracy {r_at} against standard {r_std}"
    );

    // DRO at a huge temperature gives uniform weights: PGD-AT up to float rounding.
    let dro = Adversarial {
        r: Some(1e12),
        ..adv(Method::DroSoftmax)
    };
    let (_, dro_net) = run(&s, Some(dro), None, None);
    let a = engram_learn::model::params::named_values(&at_net);
    let b = engram_learn::model::params::named_values(&dro_net);
    let diff = a
        .iter()
        .map(|(k, v)| {
            v.iter()
                .zip(&b[k])
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max);
    assert!(diff < 1e-3, "dro-softmax r → ∞ drifts {diff} from PGD-AT");
    // A small temperature trains another network.
    let (_, sharp) = run(
        &s,
        Some(Adversarial {
            r: Some(0.1),
            ..adv(Method::DroSoftmax)
        }),
        None,
        None,
    );
    assert_ne!(engram_learn::model::params::named_values(&sharp), a);

    // GAIRAT, stopped after its (only) task and resumed: the checkpoint is the end; a
    // two-task run stopped after one resumes to the same bytes.
    let two = ScenarioConfig::from_json(
        r#"{"kind": "class-incremental", "dataset": "blobs", "tasks": 2, "classes-per-task": 2, "seed": 1,
            "blobs": {"classes": 4, "dim": 64, "separation": 1.0, "train-per-class": 60, "test-per-class": 30}}"#,
    )
    .and_then(|c| c.build(None))
    .expect("blobs");
    let g = Some(adv(Method::Gairat));
    let (whole, wnet) = run(&two, g.clone(), None, None);
    let dir = tempfile::tempdir().unwrap();
    run(&two, g.clone(), Some(dir.path()), Some(1));
    let (resumed, rnet) = run(&two, g, Some(dir.path()), None);
    assert_eq!(whole.accuracy, resumed.accuracy);
    assert_eq!(
        engram_learn::model::params::named_values(&wnet),
        engram_learn::model::params::named_values(&rnet)
    );
}

#[test]
fn run_files_validate_the_adversarial_table() {
    let bad: Result<TrainConfig, _> = toml::from_str("[adversarial]\nmethod = \"pgd-at\"\nr = 1.0");
    let cfg = bad.expect("parses");
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("train.adversarial.r"), "{e}");
    assert!(toml::from_str::<TrainConfig>("[adversarial]\nmethod = \"madry\"").is_err());
}

/// A run file's `[start]` begins from saved weights: RiFT's step (`rift`) from a trained
/// model moves only its module; weights that do not fit the model are refused at the start.
#[test]
fn a_run_file_starts_from_saved_weights() {
    use engram_learn::config::RunConfig;
    use engram_learn::model::io::read_values;
    use engram_learn::run::{RunOptions, run_config};
    let base = r#"
        seed = 1
        [scenario]
        kind = "joint"
        dataset = "blobs"
        blobs = { classes = 3, dim = 16, train-per-class = 30, test-per-class = 10 }
        [model]
        kind = "mlp"
        hidden = [8]
        [train]
        epochs = 2
        batch-size = 16
    "#;
    let dir = tempfile::tempdir().unwrap();
    let a = RunConfig::parse_toml(base).unwrap();
    run_config(
        &a,
        &dir.path().join("a"),
        &RunOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let saved = dir.path().join("a/checkpoint/task-1.model.safetensors");
    let before = read_values(&saved).unwrap();
    let module = before
        .keys()
        .next()
        .and_then(|k| k.rsplit_once('.'))
        .map(|(m, _)| m.to_string())
        .unwrap();
    let start = format!(
        "{base}\n        [strategy]\n        name = \"rift\"\n        modules = [\"{module}\"]\n        [start]\n        checkpoint = \"{}\"\n",
        saved.display()
    );
    let b = RunConfig::parse_toml(&start).unwrap();
    run_config(
        &b,
        &dir.path().join("b"),
        &RunOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let after = read_values(&dir.path().join("b/checkpoint/task-1.model.safetensors")).unwrap();
    for (k, v) in &before {
        let inside = k.starts_with(&format!("{module}."));
        assert_eq!(after[k] != *v, inside, "{k}");
    }
    // Weights of another model are refused before the run starts.
    let other = start.replace("hidden = [8]", "hidden = [9]");
    let c = RunConfig::parse_toml(&other).unwrap();
    let e = run_config(
        &c,
        &dir.path().join("c"),
        &RunOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the weights to start from"), "{e}");
    assert!(!dir.path().join("c/results.json").exists());
    let empty = start.replace(
        &format!("checkpoint = \"{}\"", saved.display()),
        "checkpoint = \"\"",
    );
    assert!(RunConfig::parse_toml(&empty).is_err());
}
