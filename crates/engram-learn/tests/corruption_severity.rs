//! The corruption generator's severities against a trained model (card
//! `shared/methods/test_time.md`, "Corruption generator FMNIST-C", small-scale experiment):
//! an MLP trained briefly on clean Fashion-MNIST errs more as the severity grows. The mean
//! error over the 15 corruptions must rise with every severity step, and the error at
//! severity 5 must be above that at severity 1 for at least 10 of the 15 corruptions;
//! corruptions whose error dips between two steps are printed (flagged, not failed, as the
//! card says). Skipped without the data set unless ENGRAM_REQUIRE_DATA=1.

use engram_learn::adapt::stream::{self, StreamConfig};
use engram_learn::adapt::{Source, build};
use engram_learn::data::DataError;
use engram_learn::data::corrupt::Corruption;
use engram_learn::data::fashion_mnist;
use engram_learn::model::ModelConfig;
use engram_learn::scenario::corruption::corruption_stream;
use engram_learn::scenario::{Common, joint};
use engram_learn::train::{TrainConfig, Trainer};

#[test]
fn error_rises_with_severity() {
    let data = match fashion_mnist::load(None) {
        Ok(d) => d,
        Err(e @ DataError::Missing { .. }) => {
            assert!(
                std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
                "ENGRAM_REQUIRE_DATA=1 but Fashion-MNIST is missing: {e}"
            );
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let common = Common {
        seed: 0,
        train_per_task: Some(12_000),
        test_per_class: Some(40),
    };
    let s = joint(data.clone(), &common).unwrap_or_else(|e| panic!("{e}"));
    let model = ModelConfig::Mlp { hidden: vec![128] };
    let strategy = engram_learn::strategy::build("naive", &serde_json::Value::Null)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut t = Trainer::new(&s, model, TrainConfig::default(), 0, strategy);
    let (out, net) = t.run_net(&mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let clean = 100.0 - out.accuracy[0][0];
    assert!(clean < 25.0, "clean error {clean}");
    let source = Source {
        net,
        dim: 784,
        image: Some((1, 28, 28)),
        classes: 10,
        confidence_q05: None,
        seed: 0,
    };
    let mut by_sev: Vec<Vec<f64>> = Vec::new();
    for sev in 1..=5u8 {
        let sc = corruption_stream(data.clone(), &Corruption::STREAM, sev, 1, &common)
            .unwrap_or_else(|e| panic!("{e}"));
        let r = stream::render(&sc);
        let mut a = build("source", &serde_json::Value::Null).unwrap_or_else(|e| panic!("{e}"));
        let e = stream::run(
            &r,
            &source,
            a.as_mut(),
            &StreamConfig::default(),
            &mut |_, _, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        by_sev.push(e);
    }
    let means: Vec<f64> = by_sev
        .iter()
        .map(|e| e.iter().sum::<f64>() / 15.0)
        .collect();
    eprintln!("clean error {clean:.1} %; mean error by severity {means:.1?}");
    let mut rising = 0;
    for (c, k) in Corruption::STREAM.iter().enumerate() {
        let row: Vec<f64> = by_sev.iter().map(|e| e[c]).collect();
        let flag = if row.windows(2).any(|w| w[1] < w[0]) {
            "  (not monotone)"
        } else {
            ""
        };
        eprintln!("{:<18} {row:5.1?}{flag}", k.name());
        rising += usize::from(row[4] > row[0]);
        assert!(
            row[4] >= clean - 2.0,
            "{}: severity 5 error {} below clean {clean}",
            k.name(),
            row[4]
        );
    }
    for w in means.windows(2) {
        assert!(w[1] > w[0], "mean error by severity not rising: {means:?}");
    }
    // Measured (400 test images, 1 epoch on 12 000): 11/15. The noise family at the card's
    // 28-px table (σ ≤ 0.10, Poisson rate ≥ 50, impulse ≤ 7 %) barely moves an MLP's error,
    // and elastic's severity 1 has the largest affine jitter; those four are the exceptions.
    assert!(
        rising >= 10,
        "only {rising}/15 corruptions err more at severity 5 than at 1"
    );
}
