//! Corruption streams (FMNIST-C, `shared/methods/test_time.md`, arXiv 1903.12261): a domain
//! stream whose domains are corruptions of the same images. Domain d of round r applies
//! corruption `corruptions[d]` at `severity` to every image; the sequence of corruptions is
//! repeated for `rounds` rounds (CoTTA's long stream). All classes are in every domain
//! ([`EvalMode::DomainIl`]).
//!
//! Each domain uses all training examples (or its own seeded subsample of `train-per-task`,
//! for training across corruptions) and the whole test set (cut by `test-per-class`). A
//! corrupted image depends only on (seed, corruption, severity, its index in its data set), so
//! the rounds repeat the same images, as the reference's rounds do. The order in which a
//! test-time adapter meets a domain's images is the stream's business (`adapt::stream`), not
//! the scenario's.

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, invalid, prepare,
    subsample,
};
use crate::data::Split;
use crate::data::corrupt::Corruption;
use serde_json::{Map, Value};

/// The keys of `corruption`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// Corruption names in stream order; default: the 15 of the benchmark in CoTTA's order.
    #[serde(default = "stream")]
    corruptions: Vec<String>,
    /// 1 (mildest) to 5.
    #[serde(default = "five")]
    severity: u8,
    /// How many times the sequence of corruptions is repeated.
    #[serde(default = "one")]
    rounds: usize,
}

fn stream() -> Vec<String> {
    Corruption::STREAM
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}
fn five() -> u8 {
    5
}
fn one() -> usize {
    1
}

fn params(m: &Map<String, Value>) -> Result<(Params, Vec<Corruption>), ScenarioError> {
    let p: Params = parse_params("corruption", m)?;
    if !(1..=5).contains(&p.severity) {
        return invalid(format!(
            "scenario corruption: severity = {} must be 1 to 5",
            p.severity
        ));
    }
    if p.rounds == 0 {
        return invalid("scenario corruption: rounds must be at least 1");
    }
    if p.corruptions.is_empty() {
        return invalid("scenario corruption: corruptions is empty");
    }
    let list = p
        .corruptions
        .iter()
        .map(|n| {
            Corruption::from_name(n).ok_or_else(|| {
                ScenarioError::Invalid(format!(
                    "scenario corruption: unknown corruption '{n}'; available: {}",
                    Corruption::ALL.map(|c| c.name()).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in list.iter().enumerate() {
        if list[..i].contains(c) {
            return invalid(format!(
                "scenario corruption: corruptions names '{}' twice (each corruption is one \
                 domain of a round; rounds repeats the sequence)",
                c.name()
            ));
        }
    }
    let tasks = list.len().saturating_mul(p.rounds);
    if tasks > super::config::MAX_TASKS {
        return invalid(format!(
            "scenario corruption: {} corruptions × {} rounds = {tasks} domains, more than the \
             limit of {}",
            list.len(),
            p.rounds,
            super::config::MAX_TASKS
        ));
    }
    Ok((p, list))
}

/// Most training-example indices the domains of a stream may hold together (1 GiB).
pub const MAX_INDEX_ENTRIES: usize = 1 << 27;

/// The corruption stream on `data`: `corruptions` in order at `severity`, `rounds` times.
pub fn corruption_stream(
    data: Split,
    corruptions: &[Corruption],
    severity: u8,
    rounds: usize,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    // Every domain keeps its list of training examples: bound what the lists hold together.
    let per_task = common
        .train_per_task
        .map_or(train.len(), |k| k.min(train.len()));
    let domains = corruptions.len().saturating_mul(rounds);
    if domains.saturating_mul(per_task) > MAX_INDEX_ENTRIES {
        return invalid(format!(
            "scenario corruption: {domains} domains × {per_task} training examples each is more \
             than the limit of {MAX_INDEX_ENTRIES} example indices; lower rounds or set \
             train-per-task"
        ));
    }
    let c = train.num_classes;
    let classes: Vec<u32> = (0..c as u32).collect();
    let mut tasks = Vec::with_capacity(domains);
    for r in 0..rounds {
        for &k in corruptions {
            let t = tasks.len();
            let tr = subsample(
                (0..train.len()).collect(),
                common.train_per_task,
                common.seed,
                t,
            );
            tasks.push(Task::new(
                format!("round {}: {} {severity}", r + 1, k.name()),
                classes.clone(),
                tr,
                (0..test.len()).collect(),
                Transform::Corrupt {
                    corruption: k,
                    severity,
                    seed: common.seed,
                },
            ));
        }
    }
    let s = Scenario {
        name: format!(
            "corruption {} severity {severity} ({} domains × {rounds} rounds)",
            train.name,
            corruptions.len()
        ),
        seed: common.seed,
        eval: EvalMode::DomainIl,
        plan: EvalPlan::EveryTask,
        num_outputs: c,
        train,
        test,
        tasks,
    };
    s.validate()?;
    // The corruptions are defined on images in [0, 1] (u8 levels / 255).
    for set in [&s.train, &s.test] {
        if let Some(i) = set.x.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return invalid(format!(
                "scenario corruption: {} example {} has the value {} (the corruptions need \
                 pixel values in [0, 1])",
                set.name,
                i / set.dim.max(1),
                set.x[i]
            ));
        }
    }
    Ok(s)
}

pub const CORRUPTION: Kind = Kind {
    name: "corruption",
    summary: "domain stream: each domain corrupts the images (FMNIST-C: noise, blur, weather, \
              digital) at one severity; the sequence repeats for some rounds",
    params: |m| to_json(&params(m)?.0),
    build: |data, m, common| {
        let (p, list) = params(m)?;
        corruption_stream(data, &list, p.severity, p.rounds, common)
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BlobsConfig;
    use crate::scenario::Part;
    use crate::scenario::config::ScenarioConfig;

    /// 12×12 grayscale blob images.
    fn images() -> Split {
        let b = BlobsConfig {
            dim: 144,
            classes: 3,
            train_per_class: 6,
            test_per_class: 4,
            ..BlobsConfig::default()
        };
        match crate::data::blobs::generate(&b) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn common(seed: u64) -> Common {
        Common {
            seed,
            train_per_task: None,
            test_per_class: None,
        }
    }

    #[test]
    fn domains_repeat_by_round_and_images_are_reproducible() {
        let list = [Corruption::GaussianNoise, Corruption::Contrast];
        let s = match corruption_stream(images(), &list, 3, 2, &common(7)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.num_tasks(), 4);
        assert_eq!(s.tasks[2].name, "round 2: gaussian_noise 3");
        assert_eq!(s.eval, EvalMode::DomainIl);
        let idx = [0usize, 5, 9];
        // Round 2 repeats round 1's images exactly; another batch order gives the same image.
        assert_eq!(s.batch(0, Part::Test, &idx), s.batch(2, Part::Test, &idx));
        let (a, _) = s.batch(0, Part::Test, &[5]);
        let (b, _) = s.batch(0, Part::Test, &idx);
        assert_eq!(a[..], b[144..288]);
        // Values are u8 levels; noise changes the image, another seed changes the noise.
        assert!(
            a.iter()
                .all(|v| (v * 255.0 - (v * 255.0).round()).abs() < 1e-3)
        );
        let (clean, _) = (s.test.row(5).to_vec(), ());
        assert_ne!(a, clean);
        let s2 = match corruption_stream(images(), &list, 3, 1, &common(8)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_ne!(s2.batch(0, Part::Test, &[5]).0, a);
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let err = |extra: &str| {
            let text = format!(
                r#"{{"kind": "corruption", "dataset": "blobs", "blobs": {{"dim": 144{extra}}}"#
            );
            match ScenarioConfig::from_json(&text).and_then(|c| c.build(None)) {
                Ok(_) => "<no error>".to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert_eq!(err("}"), "<no error>");
        assert!(err(r#"}, "severity": 6"#).contains("severity = 6"));
        assert!(err(r#"}, "rounds": 0"#).contains("rounds"));
        assert!(err(r#"}, "corruptions": ["fogg"]"#).contains("unknown corruption 'fogg'"));
        assert!(err(r#"}, "corruptions": []"#).contains("empty"));
        // Flat vectors are not grayscale images.
        let e = err(r#", "image": false}"#);
        assert!(e.contains("grayscale"), "{e}");
    }
}
