// Binary-weight variational continual learning, Phys. Rev. E 108, 014309 (2023): the deep
// experiment's task sequence. Card: shared/methods/theory.md, "Binary-weight ... (field space)".

//! The tasks of the deep experiment ([`super::deep`]): labelled train and test images per
//! task, held as plain values. [`permuted_tasks`] builds the card's permuted sequence, in
//! which **every task, task 0 included, has its own pixel permutation**, drawn from the same
//! keyed stream as the crate's permuted scenario (`scenario::domain::permuted`): the same seed
//! gives the same permutations there and here.

use crate::data::transform::{Prepared, Transform};
use crate::{Result, err};
use engram_weights::rng::Rng;

/// One task: `dim` features per example, row-major, labels in 0..classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Training examples, rows × dim.
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    /// Test examples, rows × dim.
    pub x_test: Vec<f32>,
    pub y_test: Vec<u32>,
    pub dim: usize,
}

impl Task {
    /// Training examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Checks the sizes, the labels (below `classes`) and that every value is finite; `index`
    /// names the task in messages.
    pub fn check(&self, index: usize, classes: usize) -> Result<()> {
        if self.dim == 0 {
            return Err(err!("task {index}: dim is 0"));
        }
        if self.y.is_empty() || self.y_test.is_empty() {
            return Err(err!(
                "task {index}: {} training and {} test examples; both must be at least 1",
                self.y.len(),
                self.y_test.len()
            ));
        }
        for (what, x, y) in [
            ("x", &self.x, &self.y),
            ("x_test", &self.x_test, &self.y_test),
        ] {
            if x.len() != y.len() * self.dim {
                return Err(err!(
                    "task {index}: {what} holds {} values for {} examples of dim {}",
                    x.len(),
                    y.len(),
                    self.dim
                ));
            }
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(err!("task {index}: {what}[{i}] is not finite"));
            }
            if let Some(i) = y.iter().position(|&c| c as usize >= classes) {
                return Err(err!(
                    "task {index}: label {} of example {i} ({what}) is not below classes = \
                     {classes}",
                    y[i]
                ));
            }
        }
        Ok(())
    }
}

/// `tasks` tasks of the same images, task t with the permutation drawn from the stream
/// (`seed`, "permutation", t): output value j of an example is its input value perm[j].
/// `images` and `test_images` hold `labels.len()` and `test_labels.len()` rows of one width.
pub fn permuted_tasks(
    images: &[f32],
    labels: &[u32],
    test_images: &[f32],
    test_labels: &[u32],
    tasks: usize,
    seed: u64,
) -> Result<Vec<Task>> {
    if tasks == 0 {
        return Err("permuted tasks: tasks must be at least 1".into());
    }
    if labels.is_empty() || test_labels.is_empty() {
        return Err("permuted tasks: no training or no test examples".into());
    }
    let dim = images.len() / labels.len();
    if dim == 0
        || images.len() != dim * labels.len()
        || test_images.len() != dim * test_labels.len()
    {
        return Err(err!(
            "permuted tasks: {} training values for {} labels and {} test values for {} \
             labels are not rows of one width",
            images.len(),
            labels.len(),
            test_images.len(),
            test_labels.len()
        ));
    }
    let permute = |src: &[f32], t: &Prepared| {
        let mut out = vec![0.0f32; src.len()];
        for (i, (s, o)) in src
            .chunks_exact(dim)
            .zip(out.chunks_exact_mut(dim))
            .enumerate()
        {
            t.apply(s, o, i);
        }
        out
    };
    (0..tasks)
        .map(|t| {
            let tf = Transform::Permute(Rng::keyed(seed, "permutation", t as u64).permutation(dim));
            let p = Prepared::new(&tf, dim, None).map_err(|e| err!("permuted tasks: {e}"))?;
            Ok(Task {
                x: permute(images, &p),
                y: labels.to_vec(),
                x_test: permute(test_images, &p),
                y_test: test_labels.to_vec(),
                dim,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_is_its_own_permutation_of_the_images() {
        let dim = 6;
        let x: Vec<f32> = (0..3 * dim).map(|v| v as f32).collect();
        let xt: Vec<f32> = (0..dim).map(|v| 100.0 + v as f32).collect();
        let tasks = permuted_tasks(&x, &[0, 1, 2], &xt, &[1], 3, 7).unwrap();
        assert_eq!(tasks.len(), 3);
        for (t, task) in tasks.iter().enumerate() {
            task.check(t, 3).unwrap();
            let perm = Rng::keyed(7, "permutation", t as u64).permutation(dim);
            for r in 0..3 {
                for j in 0..dim {
                    assert_eq!(task.x[r * dim + j], x[r * dim + perm[j] as usize]);
                }
            }
            for j in 0..dim {
                assert_eq!(task.x_test[j], xt[perm[j] as usize]);
            }
            assert_eq!(task.y, vec![0, 1, 2]);
        }
        // Task 0 is permuted too, and the tasks differ.
        assert_ne!(tasks[0].x, x);
        assert_ne!(tasks[0].x, tasks[1].x);
        assert_eq!(
            tasks,
            permuted_tasks(&x, &[0, 1, 2], &xt, &[1], 3, 7).unwrap()
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = vec![0.0f32; 12];
        assert!(permuted_tasks(&x, &[0, 1], &x[..6], &[0], 0, 1).is_err());
        assert!(permuted_tasks(&x, &[0, 1, 2, 3, 4], &x[..6], &[0], 2, 1).is_err());
        assert!(permuted_tasks(&x, &[0, 1], &x[..5], &[0], 2, 1).is_err());
        assert!(permuted_tasks(&x, &[], &x[..6], &[0], 2, 1).is_err());
        let mut t = permuted_tasks(&x, &[0, 1], &x[..6], &[0], 1, 1)
            .unwrap()
            .remove(0);
        assert!(t.check(0, 2).is_ok());
        assert!(
            t.check(0, 1)
                .unwrap_err()
                .to_string()
                .contains("not below classes")
        );
        t.x[3] = f32::NAN;
        assert!(
            t.check(4, 2)
                .unwrap_err()
                .to_string()
                .contains("task 4: x[3]")
        );
    }
}
