//! The study's training half: a base pre-trained on the untransformed mixture of both data
//! sets, a linear probe head per task on the frozen base, then each task's fine-tune of the
//! backbone with its head frozen (as CLIP's zero-shot heads are in the paper). Every trained
//! model is a safetensors file, read back instead of retrained by a rerun with the same
//! settings.

use super::Settings;
use super::tasks::subsample;
use crate::Progress;
use anyhow::{Context, Result, anyhow};
use engram_learn::model::ModelConfig;
use engram_learn::optim::OptimConfig;
use engram_learn::scenario::{EvalMode, EvalPlan, Scenario, Task, Transform};
use engram_learn::train::stage::{Values, run_stage};
use engram_learn::train::{Event, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The training settings of each stage: pre-training, probe, fine-tune (epochs, or a fixed
/// number of steps). One place, so that the study checks all of them before it starts.
pub fn stage_configs(st: &Settings) -> [TrainConfig; 3] {
    let cfg = |epochs, steps, lr| TrainConfig {
        epochs,
        iterations: steps,
        batch_size: st.batch_size,
        optimizer: OptimConfig {
            lr,
            ..OptimConfig::default()
        },
        ..TrainConfig::default()
    };
    [
        cfg(st.pretrain_epochs, None, st.pretrain_lr),
        cfg(1, Some(st.probe_steps), st.probe_lr),
        cfg(1, Some(st.finetune_steps), st.finetune_lr),
    ]
}

/// The study's data, models and where they live.
pub struct Study {
    pub dir: PathBuf,
    pub s: Scenario,
    pub model: ModelConfig,
    /// Name prefix of the head tensors (the last layer).
    pub head: String,
    /// Parameter shapes by name (for the files).
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl Study {
    pub fn split_head(&self, v: &Values) -> (Values, Values) {
        v.iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .partition(|(k, _)| !k.starts_with(&self.head))
    }

    /// Runs a training stage with a progress bar, or reads its earlier result.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        label: &str,
        file: &Path,
        scenario: &Scenario,
        train: TrainConfig,
        init: Option<Values>,
        frozen: Vec<String>,
        reused: &mut Vec<String>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Values> {
        if file.is_file() {
            reused.push(label.to_string());
            return read_values(file);
        }
        progress(Progress::Start {
            label: label.to_string(),
            total: 0,
        });
        let (mut pos, mut total) = (0, 0);
        let v = run_stage(
            scenario,
            &self.model,
            train,
            self.s.seed,
            init,
            frozen,
            &mut |e| match e {
                Event::TaskStart { steps, .. } => {
                    (pos, total) = (0, steps as u64);
                    progress(Progress::Advance { pos, total });
                }
                Event::Step { .. } => {
                    pos += 1;
                    progress(Progress::Advance { pos, total });
                }
                Event::TaskEnd { accuracy, .. } => progress(Progress::Message(format!(
                    "{label}: test accuracy {:.1}%",
                    accuracy.first().copied().unwrap_or(0.0)
                ))),
                _ => {}
            },
        )
        .map_err(|e| anyhow!("{label}: {e}"))?;
        progress(Progress::Finish);
        save_values(file, &v, &self.shapes)?;
        Ok(v)
    }

    pub fn pretrain(
        &self,
        st: &Settings,
        reused: &mut Vec<String>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Values> {
        let held: std::collections::BTreeSet<usize> = self
            .s
            .tasks
            .iter()
            .flat_map(|t| t.valid.iter().copied())
            .collect();
        let pool: Vec<usize> = (0..self.s.train.len())
            .filter(|i| !held.contains(i))
            .collect();
        let train = subsample(pool, st.pretrain_examples, st.seed, "merge8-pretrain", 0);
        let test: Vec<usize> = (0..self.s.test.len()).collect();
        let test = subsample(
            test,
            st.test_per_task.map(|k| 2 * k),
            st.seed,
            "merge8-pretest",
            0,
        );
        let mut pre = Scenario {
            name: "merge-8 pre-training".into(),
            seed: st.seed,
            eval: EvalMode::ClassIl,
            plan: EvalPlan::EveryTask,
            num_outputs: self.s.num_outputs,
            train: self.s.train.clone(),
            test: self.s.test.clone(),
            tasks: vec![Task::new(
                "mixture",
                (0..self.s.num_outputs as u32).collect(),
                train,
                test,
                Transform::None,
            )],
        };
        pre.validate()?;
        let v = self.stage(
            "pre-train",
            &self.dir.join("models/base-full.safetensors"),
            &pre,
            stage_configs(st)[0].clone(),
            None,
            vec![],
            reused,
            progress,
        )?;
        // Free the copy of the data before the next stages.
        pre.tasks.clear();
        Ok(v)
    }

    /// A scenario holding only task `t` (the trainer trains every task it is given).
    fn only(&self, t: usize) -> Scenario {
        Scenario {
            name: self.s.tasks[t].name.clone(),
            seed: self.s.seed,
            eval: EvalMode::TaskIl,
            plan: EvalPlan::EveryTask,
            num_outputs: self.s.num_outputs,
            train: self.s.train.clone(),
            test: self.s.test.clone(),
            tasks: vec![self.s.tasks[t].clone()],
        }
    }

    pub fn probe(
        &self,
        t: usize,
        base: &Values,
        st: &Settings,
        reused: &mut Vec<String>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Values> {
        let name = &self.s.tasks[t].name;
        let backbone: Vec<String> = base
            .keys()
            .filter(|k| !k.starts_with(&self.head))
            .cloned()
            .collect();
        let v = self.stage(
            &format!("probe {name}"),
            &self.dir.join(format!("models/heads/{name}.safetensors")),
            &self.only(t),
            stage_configs(st)[1].clone(),
            Some(base.clone()),
            backbone,
            reused,
            progress,
        )?;
        Ok(self.split_head(&v).1)
    }

    pub fn finetune(
        &self,
        t: usize,
        backbone: &Values,
        head: &Values,
        st: &Settings,
        reused: &mut Vec<String>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Values> {
        let name = &self.s.tasks[t].name;
        let mut init = backbone.clone();
        init.extend(head.iter().map(|(k, v)| (k.clone(), v.clone())));
        let v = self.stage(
            &format!("fine-tune {name}"),
            &self
                .dir
                .join(format!("models/finetuned-full/{name}.safetensors")),
            &self.only(t),
            stage_configs(st)[2].clone(),
            Some(init),
            vec![self.head.clone()],
            reused,
            progress,
        )?;
        Ok(self.split_head(&v).0)
    }
}
/// Writes weights by name as a safetensors file, creating its folder.
pub fn save_values(path: &Path, v: &Values, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    engram_learn::model::io::save_values(path, v, shapes, &BTreeMap::new())?;
    Ok(())
}

/// Reads weights by name from a safetensors file.
pub fn read_values(path: &Path) -> Result<Values> {
    engram_learn::model::io::read_values(path)
        .with_context(|| format!("reading {}", path.display()))
}
