//! Joint training: one task holding every training and test example (the upper bound a
//! continual learner is compared against), untransformed, evaluated over all classes.

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, prepare, subsample,
};
use crate::data::Split;
use serde_json::{Map, Value};

pub fn joint(data: Split, common: &Common) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    let c = train.num_classes;
    let classes: Vec<u32> = (0..c as u32).collect();
    let tr = subsample(
        (0..train.len()).collect(),
        common.train_per_task,
        common.seed,
        0,
    );
    let te = (0..test.len()).collect();
    let s = Scenario {
        name: format!("joint {}", train.name),
        seed: common.seed,
        eval: EvalMode::ClassIl,
        plan: EvalPlan::EveryTask,
        num_outputs: c,
        tasks: vec![Task::new("joint", classes, tr, te, Transform::None)],
        train,
        test,
    };
    s.validate()?;
    Ok(s)
}

/// The keys of `joint`: only `tasks`, which must be 1.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    #[serde(default = "one")]
    tasks: usize,
}

fn one() -> usize {
    1
}

fn params(m: &Map<String, Value>) -> Result<Params, ScenarioError> {
    let p: Params = parse_params("joint", m)?;
    if p.tasks != 1 {
        return super::invalid(format!("scenario joint has 1 task, not {}", p.tasks));
    }
    Ok(p)
}

pub const JOINT: Kind = Kind {
    name: "joint",
    summary: "one task holding every example (the upper bound)",
    params: |m| to_json(&params(m)?),
    build: |data, m, common| {
        params(m)?;
        joint(data, common)
    },
};

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, small_blobs};
    use super::*;

    #[test]
    fn one_task_with_everything() {
        let s = ok(joint(small_blobs(), &Common::default()));
        assert_eq!(s.num_tasks(), 1);
        assert_eq!(s.tasks[0].train.len(), 400);
        assert_eq!(s.tasks[0].test.len(), 100);
        assert_eq!(s.seen_classes(0).len(), 10);
        let c = Common {
            seed: 4,
            train_per_task: Some(50),
            ..Common::default()
        };
        let a = ok(joint(small_blobs(), &c));
        let b = ok(joint(
            small_blobs(),
            &Common {
                seed: 5,
                ..c.clone()
            },
        ));
        assert_eq!(a.tasks[0].train.len(), 50);
        assert_ne!(a.tasks[0].train, b.tasks[0].train);
        assert_eq!(
            a.tasks[0].train,
            ok(joint(small_blobs(), &c)).tasks[0].train
        );
    }
}
