//! ER: Experience Replay (Chaudhry et al., arXiv 1902.10486; CBRS: Chrysakis & Moens, 2020).
//! Card: shared/methods/replay_distillation.md ("Experience Replay").
//!
//! Each step's loss is the CE of the current batch plus the CE of a batch drawn uniformly from
//! the buffer (as many examples as the current batch unless `replay-batch` says otherwise);
//! after the step the current batch is offered to the buffer. Replay starts as soon as the
//! buffer holds anything (also within the first task), as in the reference implementations.

use super::buffer::{Buffer, Pending, Sampling, ce_by_task, check_buffer};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use burn::prelude::*;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Buffer capacity in examples (DER protocol and Avalanche: 200).
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// `reservoir` or `class-balanced`.
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// Examples replayed per step; default: the stream batch's size.
    #[serde(default)]
    pub replay_batch: Option<usize>,
}

pub(crate) fn default_buffer() -> usize {
    200
}
fn default_sampling() -> Sampling {
    Sampling::Reservoir
}

pub struct Er {
    p: Params,
    buf: Buffer,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>, String> {
    let p: Params = parse_params("er", v)?;
    check_buffer("er", p.buffer, p.replay_batch)?;
    let buf = Buffer::new(p.buffer, p.sampling, 0);
    Ok(Box::new(Er { p, buf }))
}

impl Strategy for Er {
    fn name(&self) -> &'static str {
        "er"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.buf.hold(Pending::of(batch, Vec::new()));
        if self.buf.is_empty() {
            return loss;
        }
        let k = self.p.replay_batch.unwrap_or(batch.len());
        let slots = self.buf.sample(cx.seed, "er-replay", k);
        let (ids, x, y) = self.buf.batch(cx, &slots);
        loss + ce_by_task(cx, &ids, net.forward(x), y)
    }

    fn after_step(&mut self, cx: &Ctx, net: Net) -> Net {
        self.buf.flush(cx.seed);
        net
    }

    fn state_bytes(&self) -> u64 {
        self.buf.bytes()
    }

    fn state(&self) -> State {
        self.buf.state()
    }

    fn load_state(&mut self, state: State) -> Result<(), String> {
        self.buf.load("buffer", &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_er_params_are_errors() {
        for v in [
            serde_json::json!({"buffer": 0}),
            serde_json::json!({"sampling": "herding"}),
            serde_json::json!({"replay-batch": 0}),
            serde_json::json!({"size": 10}),
            serde_json::json!({"buffer": -3}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        let st = build(&serde_json::Value::Null).expect("defaults");
        assert_eq!(
            st.params(),
            serde_json::json!({"buffer": 200, "sampling": "reservoir", "replay-batch": null})
        );
        let st =
            build(&serde_json::json!({"sampling": "class-balanced", "buffer": 50})).expect("cbrs");
        assert_eq!(st.params()["sampling"], "class-balanced");
    }
}

/// The trainer end to end with each replay and distillation strategy on blobs (class-IL).
#[cfg(test)]
mod end_to_end {
    use crate::model::ModelConfig;
    use crate::scenario::{Scenario, ScenarioConfig};
    use crate::strategy;
    use crate::train::optim::OptimConfig;
    use crate::train::{RunOutput, TrainConfig, Trainer};

    fn scenario() -> Scenario {
        ScenarioConfig::from_json(
            r#"{"kind": "class-incremental", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 1}"#,
        )
        .expect("config")
        .build(None)
        .expect("scenario")
    }

    fn run(
        s: &Scenario,
        name: &str,
        params: serde_json::Value,
        dir: Option<&std::path::Path>,
        stop: Option<usize>,
    ) -> RunOutput {
        let mut t = Trainer {
            scenario: s,
            model: ModelConfig::Mlp { hidden: vec![32] },
            train: TrainConfig {
                epochs: 10,
                batch_size: 16,
                optimizer: OptimConfig {
                    lr: 0.01,
                    ..Default::default()
                },
                ..Default::default()
            },
            seed: 3,
            strategy: strategy::build(name, &params).expect("strategy"),
            checkpoint_dir: dir.map(|d| d.to_path_buf()),
            stop_after: stop,
        };
        t.run(&mut |_| {}).expect("run")
    }

    fn final_acc(o: &RunOutput) -> f64 {
        let last = o.accuracy.last().map_or(&[][..], |r| &r[..]);
        last.iter().sum::<f64>() / last.len().max(1) as f64
    }

    #[test]
    fn each_strategy_completes_and_resumes_exactly() {
        let s = scenario();
        let naive = run(&s, "naive", serde_json::Value::Null, None, None);
        let small = serde_json::json!({"buffer": 40});
        let mut results = Vec::new();
        for (name, p) in [
            ("er", small.clone()),
            (
                "er",
                serde_json::json!({"buffer": 40, "sampling": "class-balanced"}),
            ),
            ("der", small.clone()),
            ("der++", small.clone()),
            ("lwf", serde_json::Value::Null),
            ("kd-wa", serde_json::json!({"exemplars": 40})),
            ("ider", small.clone()),
        ] {
            let whole = run(&s, name, p.clone(), None, None);
            assert_eq!(whole.accuracy.len(), 3, "{name}");
            assert!(whole.accuracy.iter().flatten().all(|a| a.is_finite()));
            // The strategy changed training.
            assert_ne!(
                (&whole.task_il_accuracy, whole.ece),
                (&naive.task_il_accuracy, naive.ece),
                "{name}"
            );
            // Stopped after the first task and resumed: the same numbers.
            let dir = tempfile::tempdir().expect("tmp");
            let _ = run(&s, name, p.clone(), Some(dir.path()), Some(1));
            let resumed = run(&s, name, p.clone(), Some(dir.path()), None);
            assert_eq!(resumed.accuracy, whole.accuracy, "{name} {p}");
            assert_eq!(resumed.ece, whole.ece, "{name}");
            results.push((name, final_acc(&whole), whole.strategy_state_bytes));
        }
        eprintln!("naive {} {:?}", final_acc(&naive), naive.accuracy);
        eprintln!("{results:?}");
        let er = results[0].1;
        assert!(
            er > final_acc(&naive) + 10.0,
            "er {er} naive {}",
            final_acc(&naive)
        );
        // Replay strategies report their buffers.
        assert!(results[0].2 > 0 && results[2].2 > 0 && results[6].2 > 0);
    }
}
