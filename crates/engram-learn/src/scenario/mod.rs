//! Scenarios: a deterministic function of a seed that cuts data into a sequence of tasks.
//!
//! A task is a list of example indices into the scenario's train and test sets plus a
//! transform (pixel permutation, rotation, ...) applied when a batch is built, so that no
//! scenario copies the data set.
//!
//! Builders (one file each): [`class_incremental()`] and [`task_incremental()`] (disjoint
//! class splits), [`permuted()`] and [`rotated()`] (domain-incremental), [`scole()`] (long
//! streams of recurring classes), [`joint()`] (one task holding everything, the upper
//! bound), and [`ScenarioConfig::build`] which picks one from a config. Every builder ends
//! with [`Scenario::validate`], so the batch methods never meet a malformed scenario.
//!
//! Index lists (`Task::train`, `Task::valid`, `Task::test`) are always sorted ascending.

pub mod class_incremental;
pub mod config;
pub mod corruption;
pub mod domain;
pub mod domains;
pub mod joint;
pub mod scole;

use crate::data::transform::Prepared;
pub use crate::data::transform::Transform;
use crate::data::{DataError, Dataset, Split};
use engram_weights::rng::Rng;

pub use class_incremental::{SplitTasks, class_incremental, class_order, task_incremental};
pub use config::{Kind, REGISTRY, ScenarioConfig};
pub use domain::{permuted, rotated, rotation_angles};
pub use joint::joint;
pub use scole::{ClassDistribution, ScoleConfig, class_probabilities, scole, scole_from_stream};

/// How predictions are scored (metrics.md, "Evaluation modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalMode {
    /// No task id: argmax over every class seen so far.
    ClassIl,
    /// Task id given: argmax over the task's classes only.
    TaskIl,
    /// One label space shared by all tasks: argmax over all outputs.
    DomainIl,
}

/// What the trainer evaluates after each task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalPlan {
    /// Every task's test set (the full T × T accuracy matrix).
    EveryTask,
    /// Long streams (SCoLe): the test set of all classes, and the current task's classes.
    AllClasses,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    /// Global labels of the task's classes (the Task-IL mask), ascending.
    pub classes: Vec<u32>,
    /// Indices into the scenario's train set.
    pub train: Vec<usize>,
    /// Indices into the scenario's test set.
    pub test: Vec<usize>,
    pub transform: Transform,
    /// Indices into the scenario's train set held out for choosing hyperparameters
    /// (empty until [`Scenario::carve_validation`]); disjoint from every task's `train`.
    pub valid: Vec<usize>,
}

impl Task {
    /// A task with no validation examples.
    pub fn new(
        name: impl Into<String>,
        classes: Vec<u32>,
        train: Vec<usize>,
        test: Vec<usize>,
        transform: Transform,
    ) -> Task {
        Task {
            name: name.into(),
            classes,
            train,
            test,
            transform,
            valid: Vec::new(),
        }
    }

    /// The task's index list for `part`.
    pub fn indices(&self, part: Part) -> &[usize] {
        match part {
            Part::Train => &self.train,
            Part::Valid => &self.valid,
            Part::Test => &self.test,
        }
    }
}

/// Which of a task's example lists: train and valid index the scenario's train set, test
/// its test set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Train,
    Valid,
    Test,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub eval: EvalMode,
    pub plan: EvalPlan,
    pub train: Dataset,
    pub test: Dataset,
    pub tasks: Vec<Task>,
    /// Width of the output layer (all classes of all tasks).
    pub num_outputs: usize,
}

/// Why a scenario could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T, ScenarioError> {
    Err(ScenarioError::Invalid(msg.into()))
}

/// Options every builder shares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Common {
    pub seed: u64,
    /// Keep at most this many training examples per task (a seeded uniform subsample, drawn
    /// independently for each task), so that demos and tests stay small.
    pub train_per_task: Option<usize>,
    /// Keep at most this many test examples per class (one seeded subsample shared by all
    /// tasks; the scenario's test set is cut down to it).
    pub test_per_class: Option<usize>,
}

/// Batches at least this long are built on the rayon pool.
const PAR_MIN: usize = 1024;

impl Scenario {
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Values per example (the model's input width).
    pub fn input_dim(&self) -> usize {
        self.train.dim
    }

    /// (channels, height, width) of the examples, if they are images.
    pub fn image(&self) -> Option<(usize, usize, usize)> {
        self.train.image
    }

    /// The data set that `part`'s indices point into.
    pub fn dataset(&self, part: Part) -> &Dataset {
        match part {
            Part::Train | Part::Valid => &self.train,
            Part::Test => &self.test,
        }
    }

    /// Materializes examples `indices` (indices into [`Scenario::dataset`]`(part)`, e.g.
    /// values taken from `tasks[task].train`) with task `task`'s transform: `x` is
    /// `indices.len() × input_dim()` row-major, `y` the global labels.
    ///
    /// The indices need not belong to the task: replay can rebuild an old example with its
    /// own task's transform by passing that task. Panics if `task` or an index is out of
    /// range (a programming error; scenarios from the builders are validated).
    pub fn batch(&self, task: usize, part: Part, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        self.batch_into(task, part, indices, &mut x, &mut y);
        (x, y)
    }

    /// [`Scenario::batch`] into reused buffers (cleared first).
    pub fn batch_into(
        &self,
        task: usize,
        part: Part,
        indices: &[usize],
        x: &mut Vec<f32>,
        y: &mut Vec<u32>,
    ) {
        use rayon::prelude::*;
        let data = self.dataset(part);
        let d = data.dim;
        let prep = match Prepared::new(&self.tasks[task].transform, d, data.image) {
            Ok(p) => p,
            Err(e) => panic!("scenario {}, task {task}: {e}", self.name),
        };
        y.clear();
        y.extend(indices.iter().map(|&i| data.y[i]));
        x.clear();
        x.resize(indices.len() * d, 0.0);
        if indices.len() >= PAR_MIN {
            x.par_chunks_exact_mut(d)
                .zip(indices.par_iter())
                .for_each(|(out, &i)| prep.apply(data.row(i), out, i));
        } else {
            for (out, &i) in x.chunks_exact_mut(d).zip(indices) {
                prep.apply(data.row(i), out, i);
            }
        }
    }

    /// Examples given as (task, index into `part`) turned into host inputs and labels, each with
    /// its own task's transform (replay batches mix tasks).
    pub fn gather(&self, part: Part, ids: &[(usize, usize)]) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(ids.len() * self.train.dim);
        let mut y = Vec::with_capacity(ids.len());
        // Consecutive runs of the same task share one call.
        let mut start = 0;
        while start < ids.len() {
            let t = ids[start].0;
            let mut end = start;
            while end < ids.len() && ids[end].0 == t {
                end += 1;
            }
            let idx: Vec<usize> = ids[start..end].iter().map(|p| p.1).collect();
            let (bx, by) = self.batch(t, part, &idx);
            x.extend_from_slice(&bx);
            y.extend_from_slice(&by);
            start = end;
        }
        (x, y)
    }

    /// All of task `t`'s training examples (transformed), in index order.
    pub fn task_train(&self, t: usize) -> (Vec<f32>, Vec<u32>) {
        self.batch(t, Part::Train, &self.tasks[t].train)
    }

    /// Task `t`'s validation examples (empty before [`Scenario::carve_validation`]).
    pub fn task_valid(&self, t: usize) -> (Vec<f32>, Vec<u32>) {
        self.batch(t, Part::Valid, &self.tasks[t].valid)
    }

    /// Task `t`'s test examples (transformed).
    pub fn task_test(&self, t: usize) -> (Vec<f32>, Vec<u32>) {
        self.batch(t, Part::Test, &self.tasks[t].test)
    }

    /// The classes of tasks `0..=upto` (clamped to the last task), ascending: the Class-IL
    /// mask after training on task `upto`.
    pub fn seen_classes(&self, upto: usize) -> Vec<u32> {
        let mut seen = vec![false; self.num_outputs];
        for task in self.tasks.iter().take(upto.saturating_add(1)) {
            for &c in &task.classes {
                if let Some(s) = seen.get_mut(c as usize) {
                    *s = true;
                }
            }
        }
        (0..self.num_outputs as u32)
            .filter(|&c| seen[c as usize])
            .collect()
    }

    /// How many of tasks `0..=upto` hold each class (`num_outputs` counts): for SCoLe, the
    /// number of times each class has been drawn.
    pub fn class_draws(&self, upto: usize) -> Vec<usize> {
        let mut n = vec![0; self.num_outputs];
        for task in self.tasks.iter().take(upto.saturating_add(1)) {
            for &c in &task.classes {
                if let Some(v) = n.get_mut(c as usize) {
                    *v += 1;
                }
            }
        }
        n
    }

    /// The stream as a list of class tuples (one per task), the form in which a SCoLe run is
    /// stored and compared (see [`scole_from_stream`]).
    pub fn stream(&self) -> Vec<Vec<u32>> {
        self.tasks.iter().map(|t| t.classes.clone()).collect()
    }

    /// Indices of the union of all tasks' test sets, ascending; under
    /// [`EvalPlan::AllClasses`] (SCoLe) every test example, so that classes the stream never
    /// draws are evaluated too (`shared/methods/theory.md`, SCoLe: every class of the data
    /// set).
    pub fn all_classes_test_indices(&self) -> Vec<usize> {
        if self.plan == EvalPlan::AllClasses {
            return (0..self.test.len()).collect();
        }
        let mut keep = vec![false; self.test.len()];
        for task in &self.tasks {
            for &i in &task.test {
                keep[i] = true;
            }
        }
        (0..self.test.len()).filter(|&i| keep[i]).collect()
    }

    /// The test examples of every class in the scenario (the union of all tasks' test sets),
    /// untransformed: the evaluation set of [`EvalPlan::AllClasses`]. Meant for scenarios
    /// whose tasks use [`Transform::None`] (SCoLe, class splits, joint); domain scenarios are
    /// evaluated per task with [`Scenario::task_test`].
    pub fn all_classes_test(&self) -> (Vec<f32>, Vec<u32>) {
        let idx = self.all_classes_test_indices();
        let mut x = Vec::with_capacity(idx.len() * self.test.dim);
        for &i in &idx {
            x.extend_from_slice(self.test.row(i));
        }
        let y = idx.iter().map(|&i| self.test.y[i]).collect();
        (x, y)
    }

    /// Moves a seeded share `frac` (in [0, 1)) of the training examples into the tasks'
    /// `valid` lists, on which hyperparameters are chosen (never on test).
    ///
    /// The held-out set is chosen per **example**, not per task: for each class, ⌊frac·n +
    /// ½⌋ of the n distinct training examples that any task uses are drawn (stream keyed by
    /// `seed` and the class), and every task moves those it holds from `train` to `valid`.
    /// So no example is validation in one task and training in another, even where tasks
    /// share examples (SCoLe recurrences, permuted or rotated copies). Carving again first
    /// returns the previous validation examples to `train`. Deterministic in `seed`.
    pub fn carve_validation(&mut self, frac: f32, seed: u64) -> Result<(), ScenarioError> {
        if !(0.0..1.0).contains(&frac) {
            return invalid(format!("validation fraction {frac} must be in [0, 1)"));
        }
        let mut tasks = self.tasks.clone();
        let n = self.train.len();
        let mut used = vec![false; n];
        for task in &mut tasks {
            task.train.append(&mut task.valid);
            task.train.sort_unstable();
            task.train.dedup();
            for &i in &task.train {
                match used.get_mut(i) {
                    Some(u) => *u = true,
                    None => return invalid(format!("task {}: train index {i} >= {n}", task.name)),
                }
            }
        }
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.train.num_classes];
        for i in (0..n).filter(|&i| used[i]) {
            if let Some(v) = by_class.get_mut(self.train.y[i] as usize) {
                v.push(i);
            }
        }
        let mut held = vec![false; n];
        for (c, members) in by_class.iter().enumerate() {
            let k = (frac as f64 * members.len() as f64).round() as usize;
            let mut rng = Rng::keyed(seed, "validation", c as u64);
            for i in rng.choose_sorted(members, k) {
                held[i] = true;
            }
        }
        for task in &mut tasks {
            let (valid, train): (Vec<usize>, Vec<usize>) =
                task.train.iter().partition(|&&i| held[i]);
            if train.is_empty() {
                return invalid(format!(
                    "validation fraction {frac} leaves task {} no training example",
                    task.name
                ));
            }
            task.train = train;
            task.valid = valid;
        }
        self.tasks = tasks;
        Ok(())
    }

    /// A tuning copy of the scenario that scores on validation instead of test: its test set
    /// is the training set and each task's `test` list is its `valid` list (carved by
    /// [`Scenario::carve_validation`]); `train` is unchanged and `valid` emptied. Running the
    /// trainer on it measures every metric on held-out training examples, so hyperparameters
    /// are chosen without touching the test set. An error if some task has no validation
    /// example (carve first).
    pub fn validation_view(&self) -> Result<Scenario, ScenarioError> {
        if let Some(t) = self.tasks.iter().find(|t| t.valid.is_empty()) {
            return invalid(format!(
                "task {} has no validation examples: carve a validation split first",
                t.name
            ));
        }
        let tasks = self
            .tasks
            .iter()
            .map(|t| Task {
                test: t.valid.clone(),
                valid: Vec::new(),
                ..t.clone()
            })
            .collect();
        let view = Scenario {
            name: format!("{} [validation]", self.name),
            test: self.train.clone(),
            tasks,
            ..self.clone()
        };
        view.validate()?;
        Ok(view)
    }

    /// Checks every invariant the batch methods rely on: data sets consistent, indices in
    /// range, every transform applicable, labels of each task's examples among its classes
    /// and below `num_outputs`, no task without training data, train and valid disjoint.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.train.check()?;
        self.test.check()?;
        if self.tasks.is_empty() {
            return invalid(format!("scenario {} has no task", self.name));
        }
        if (self.train.dim, self.train.image) != (self.test.dim, self.test.image) {
            return invalid("train and test sets have different shapes");
        }
        let mut in_task = vec![false; self.num_outputs];
        let mut held = vec![false; self.train.len()];
        for task in &self.tasks {
            for &i in &task.valid {
                if let Some(h) = held.get_mut(i) {
                    *h = true;
                }
            }
        }
        for (t, task) in self.tasks.iter().enumerate() {
            let name = &task.name;
            if task.train.is_empty() {
                return invalid(format!("task {t} ({name}) has no training example"));
            }
            Prepared::new(&task.transform, self.train.dim, self.train.image)
                .map_err(|e| ScenarioError::Invalid(format!("task {t} ({name}): {e}")))?;
            in_task.iter_mut().for_each(|v| *v = false);
            for &c in &task.classes {
                match in_task.get_mut(c as usize) {
                    Some(v) => *v = true,
                    None => {
                        return invalid(format!(
                            "task {t} ({name}): class {c} >= num_outputs {}",
                            self.num_outputs
                        ));
                    }
                }
            }
            for (part, data) in [
                (Part::Train, &self.train),
                (Part::Valid, &self.train),
                (Part::Test, &self.test),
            ] {
                let idx = task.indices(part);
                if !idx.windows(2).all(|w| w[0] < w[1]) {
                    return invalid(format!("task {t} ({name}): {part:?} indices not ascending"));
                }
                for &i in idx {
                    let Some(&y) = data.y.get(i) else {
                        return invalid(format!(
                            "task {t} ({name}): {part:?} index {i} >= {}",
                            data.len()
                        ));
                    };
                    if !in_task.get(y as usize).copied().unwrap_or(false) {
                        return invalid(format!(
                            "task {t} ({name}): {part:?} example {i} has label {y}, not one of \
                             the task's classes {:?}",
                            task.classes
                        ));
                    }
                    if part == Part::Train && held[i] {
                        return invalid(format!(
                            "task {t} ({name}): train example {i} is validation in some task"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks both data sets and applies `common.test_per_class` (cutting the test set down).
pub(crate) fn prepare(data: Split, common: &Common) -> Result<(Dataset, Dataset), ScenarioError> {
    data.train.check()?;
    data.test.check()?;
    if data.train.is_empty() {
        return invalid(format!(
            "data set {} has no training example",
            data.train.name
        ));
    }
    if data.train.num_classes != data.test.num_classes {
        return invalid("train and test sets have different numbers of classes");
    }
    if common.train_per_task == Some(0) {
        return invalid("train-per-task must be at least 1");
    }
    let test = match common.test_per_class {
        None => data.test,
        Some(0) => return invalid("test-per-class must be at least 1"),
        Some(cap) => {
            let mut keep = Vec::new();
            for (c, members) in data.test.by_class().iter().enumerate() {
                let mut rng = Rng::keyed(common.seed, "test-subsample", c as u64);
                keep.extend(rng.choose_sorted(members, cap));
            }
            keep.sort_unstable();
            data.test.subset(&keep)
        }
    };
    Ok((data.train, test))
}

/// `items` capped at `cap` by a seeded uniform subsample (stream keyed by seed and task),
/// ascending.
pub(crate) fn subsample(
    items: Vec<usize>,
    cap: Option<usize>,
    seed: u64,
    task: usize,
) -> Vec<usize> {
    match cap {
        Some(k) if k < items.len() => {
            Rng::keyed(seed, "train-subsample", task as u64).choose_sorted(&items, k)
        }
        _ => items,
    }
}

/// Indices of the examples of `data` whose label is in `classes`, ascending.
pub(crate) fn examples_of(data: &Dataset, classes: &[u32]) -> Vec<usize> {
    let mut mask = vec![false; data.num_classes];
    for &c in classes {
        if let Some(m) = mask.get_mut(c as usize) {
            *m = true;
        }
    }
    (0..data.len())
        .filter(|&i| mask.get(data.y[i] as usize).copied().unwrap_or(false))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::blobs::{BlobsConfig, generate};

    /// Small blobs: 10 classes of 1×8×8 images, 40 train and 10 test per class.
    pub(crate) fn small_blobs() -> Split {
        match generate(&BlobsConfig {
            train_per_class: 40,
            test_per_class: 10,
            ..BlobsConfig::default()
        }) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    pub(crate) fn ok<T>(r: Result<T, ScenarioError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    pub(crate) fn split_cfg(tasks: usize, k: usize, shuffle: bool) -> SplitTasks {
        SplitTasks {
            tasks,
            classes_per_task: k,
            shuffle_classes: shuffle,
            base_classes: None,
        }
    }

    #[test]
    fn batch_matches_rows_and_labels() {
        let s = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common::default(),
        ));
        let idx = [s.tasks[1].train[3], s.tasks[1].train[0]];
        let (x, y) = s.batch(1, Part::Train, &idx);
        assert_eq!(x.len(), 2 * 64);
        assert_eq!(&x[..64], s.train.row(idx[0]));
        assert_eq!(&x[64..], s.train.row(idx[1]));
        assert_eq!(y, vec![s.train.y[idx[0]], s.train.y[idx[1]]]);
        let (x, y) = s.task_test(4);
        assert_eq!(y.len(), 20);
        assert_eq!(x.len(), 20 * 64);
        assert!(y.iter().all(|&c| c == 8 || c == 9));
        // The large-batch path (rayon) gives the same result as the small one.
        let p = ok(permuted(small_blobs(), 2, &Common::default()));
        let all: Vec<usize> = (0..p.train.len()).collect();
        let (big, _) = p.batch(1, Part::Train, &all);
        let (small, _) = p.batch(1, Part::Train, &all[..10]);
        assert_eq!(&big[..small.len()], &small[..]);
    }

    #[test]
    fn seen_classes_and_all_classes_test() {
        let s = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common::default(),
        ));
        assert_eq!(s.seen_classes(0), vec![0, 1]);
        assert_eq!(s.seen_classes(2), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(s.seen_classes(99), (0..10).collect::<Vec<u32>>());
        let (x, y) = s.all_classes_test();
        assert_eq!(y.len(), 100);
        assert_eq!(x, s.test.x);
        // A partial split: 3 tasks of 2 classes leave classes 6..9 out of the all-class set.
        let s = ok(class_incremental(
            small_blobs(),
            &split_cfg(3, 2, false),
            &Common::default(),
        ));
        let (_, y) = s.all_classes_test();
        assert_eq!(y.len(), 60);
        assert!(y.iter().all(|&c| c < 6));
    }

    #[test]
    fn validation_carving_is_disjoint_and_deterministic() {
        let build = || {
            ok(class_incremental(
                small_blobs(),
                &split_cfg(5, 2, true),
                &Common {
                    seed: 3,
                    ..Common::default()
                },
            ))
        };
        let mut a = build();
        let before: Vec<Vec<usize>> = a.tasks.iter().map(|t| t.train.clone()).collect();
        ok(a.carve_validation(0.25, 7));
        ok(a.validate());
        for (t, task) in a.tasks.iter().enumerate() {
            assert_eq!(task.valid.len(), 20, "task {t}");
            assert_eq!(task.train.len(), 60);
            assert!(task.valid.iter().all(|i| !task.train.contains(i)));
            let mut union: Vec<usize> = task.train.iter().chain(&task.valid).copied().collect();
            union.sort_unstable();
            assert_eq!(union, before[t]);
            // Stratified: 10 of each class.
            let (_, y) = a.task_valid(t);
            for c in &task.classes {
                assert_eq!(y.iter().filter(|&v| v == c).count(), 10);
            }
        }
        let mut b = build();
        ok(b.carve_validation(0.25, 7));
        let mut c = build();
        ok(c.carve_validation(0.25, 8));
        for t in 0..5 {
            assert_eq!(a.tasks[t].valid, b.tasks[t].valid);
        }
        assert!((0..5).any(|t| a.tasks[t].valid != c.tasks[t].valid));
        // Carving again starts from the full training lists.
        ok(c.carve_validation(0.25, 7));
        for t in 0..5 {
            assert_eq!(a.tasks[t].valid, c.tasks[t].valid);
            assert_eq!(a.tasks[t].train, c.tasks[t].train);
        }
        ok(c.carve_validation(0.0, 7));
        assert!(c.tasks.iter().all(|t| t.valid.is_empty()));
        assert!(a.carve_validation(1.0, 0).is_err());
        assert!(a.carve_validation(-0.1, 0).is_err());
        assert!(a.carve_validation(f32::NAN, 0).is_err());
    }

    #[test]
    fn validation_is_shared_across_tasks_that_share_examples() {
        let mut s = ok(permuted(small_blobs(), 3, &Common::default()));
        ok(s.carve_validation(0.1, 1));
        ok(s.validate());
        assert_eq!(s.tasks[0].valid, s.tasks[1].valid);
        assert_eq!(s.tasks[0].valid.len(), 40);
        for t in &s.tasks {
            assert!(t.valid.iter().all(|i| !s.tasks[0].train.contains(i)));
        }
    }

    #[test]
    fn validation_view_scores_on_validation_examples() {
        let mut s = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common::default(),
        ));
        assert!(s.validation_view().is_err(), "no validation carved yet");
        ok(s.carve_validation(0.25, 3));
        let v = ok(s.validation_view());
        assert_eq!(v.test.x, s.train.x);
        assert_eq!(v.test.y, s.train.y);
        for (a, b) in v.tasks.iter().zip(&s.tasks) {
            assert_eq!(a.test, b.valid);
            assert_eq!(a.train, b.train);
            assert!(a.valid.is_empty());
            assert!(a.test.iter().all(|i| !a.train.contains(i)));
        }
        // The view's test batches are the original validation batches.
        assert_eq!(v.task_test(2), s.task_valid(2));
        assert_eq!(v.all_classes_test().1.len(), 100);
        // Domain scenarios: each task's validation copy keeps its transform.
        let mut p = ok(permuted(small_blobs(), 2, &Common::default()));
        ok(p.carve_validation(0.1, 1));
        let pv = ok(p.validation_view());
        assert_eq!(pv.task_test(1), p.task_valid(1));
        assert_ne!(pv.task_test(1).0, pv.task_test(0).0);
    }

    #[test]
    fn validate_catches_malformed_scenarios() {
        let good = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common::default(),
        ));
        ok(good.validate());
        let mut s = good.clone();
        s.tasks[0].train.push(1_000_000);
        assert!(s.validate().is_err());
        let mut s = good.clone();
        s.tasks[0].classes = vec![0];
        assert!(s.validate().is_err());
        let mut s = good.clone();
        s.tasks[0].transform = Transform::Permute(vec![0; 64]);
        assert!(s.validate().is_err());
        let mut s = good.clone();
        s.tasks[1].train.clear();
        assert!(s.validate().is_err());
        let mut s = good;
        s.tasks[0].valid = vec![s.tasks[0].train[0]];
        assert!(s.validate().is_err());
    }

    #[test]
    fn test_per_class_cuts_the_test_set() {
        let c = Common {
            seed: 1,
            test_per_class: Some(3),
            ..Common::default()
        };
        let s = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &c,
        ));
        assert_eq!(s.test.len(), 30);
        assert_eq!(s.test.class_counts(), vec![3; 10]);
        assert_eq!(s.tasks[0].test.len(), 6);
    }
}

/// Scenarios on the real data sets, where installed (CI installs them and sets
/// `ENGRAM_REQUIRE_DATA=1`, which turns a missing set into a failure).
#[cfg(test)]
mod real_data {
    use super::tests::ok;
    use super::*;
    use crate::data::{self, DataError};
    use std::sync::OnceLock;
    use std::time::Instant;

    fn cached(name: &'static str, cell: &'static OnceLock<Option<Split>>) -> Option<Split> {
        cell.get_or_init(|| match data::load(name, None) {
            Ok(s) => Some(s),
            Err(e @ DataError::Missing { .. }) => {
                assert!(
                    !data::data_required(),
                    "ENGRAM_REQUIRE_DATA=1 but {name} is missing: {e}"
                );
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        })
        .clone()
    }

    fn fashion() -> Option<Split> {
        static CELL: OnceLock<Option<Split>> = OnceLock::new();
        cached("fashion-mnist", &CELL)
    }

    fn mnist() -> Option<Split> {
        static CELL: OnceLock<Option<Split>> = OnceLock::new();
        cached("mnist", &CELL)
    }

    #[test]
    fn split_fashion_mnist() {
        let Some(data) = fashion() else { return };
        let cfg = ScenarioConfig::new("class-incremental", "fashion-mnist")
            .with("tasks", 5)
            .with("classes-per-task", 2);
        let s = ok(cfg.build_with(data));
        for t in &s.tasks {
            assert_eq!((t.train.len(), t.test.len()), (12_000, 2_000));
        }
        let (x, y) = s.task_test(3);
        assert_eq!((x.len(), y.len()), (2_000 * 784, 2_000));
        assert!(y.iter().all(|&c| c == 6 || c == 7));
    }

    #[test]
    fn rotated_and_permuted_fashion_mnist() {
        let Some(data) = fashion() else { return };
        let c = Common {
            train_per_task: Some(1000),
            ..Common::default()
        };
        let s = ok(rotated(data.clone(), 3, 180.0, &c));
        let idx: Vec<usize> = s.tasks[1].train[..64].to_vec();
        let (x, _) = s.batch(1, Part::Train, &idx);
        for (b, &i) in idx.iter().enumerate() {
            let src = s.train.row(i);
            for r in 0..28 {
                for col in 0..28 {
                    assert_eq!(x[b * 784 + r * 28 + col], src[col * 28 + (27 - r)]);
                }
            }
        }
        let start = Instant::now();
        let (x, _) = s.task_test(2);
        assert_eq!(x.len(), 10_000 * 784);
        eprintln!("rotating 10,000 test images: {:?}", start.elapsed());
        let p = ok(permuted(data, 2, &c));
        let (x, y) = p.task_test(1);
        assert_eq!((x.len(), y.len()), (10_000 * 784, 10_000));
    }

    #[test]
    fn scole_on_fashion_mnist() {
        let Some(data) = fashion() else { return };
        let start = Instant::now();
        let cfg = ScenarioConfig {
            train_per_task: Some(256),
            ..ScenarioConfig::new("scole", "fashion-mnist")
                .with("tasks", 500)
                .with("skew", 2.0)
        };
        let s = ok(cfg.build_with(data));
        eprintln!("SCoLe, 500 tasks: built in {:?}", start.elapsed());
        assert_eq!(s.num_tasks(), 500);
        assert!(
            s.tasks
                .iter()
                .all(|t| t.train.len() == 256 && t.test.len() == 2_000)
        );
        assert_eq!(s.all_classes_test_indices().len(), 10_000);
        assert_eq!(s.class_draws(499).iter().sum::<usize>(), 1000);
    }

    #[test]
    fn mnist_digits_scenarios() {
        let Some(data) = mnist() else { return };
        let cfg = ScenarioConfig {
            seed: 3,
            validation: Some(0.1),
            ..ScenarioConfig::new("task-incremental", "mnist").with("shuffle-classes", true)
        };
        let s = ok(cfg.build_with(data.clone()));
        assert_eq!(s.num_tasks(), 5);
        let train: usize = s.tasks.iter().map(|t| t.train.len() + t.valid.len()).sum();
        assert_eq!(train, 8_495);
        let s = ok(ScenarioConfig::new("joint", "mnist").build_with(data));
        assert_eq!(s.tasks[0].test.len(), 1_505);
    }
}
