//! Joint training: one task holding every training and test example (the upper bound a
//! continual learner is compared against), untransformed, evaluated over all classes.

use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, prepare, subsample,
};
use crate::data::Split;

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
