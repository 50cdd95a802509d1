//! Domain-incremental learning over the data's own domains (kind `domains`): task t is
//! domain t of the data set (a CSV domain column, npz/npy domain arrays, or a file per
//! domain; `crate::data::user`), holding every class, in one shared label space
//! ([`EvalMode::DomainIl`], the setting of van de Ven et al. 2022, "Three types of
//! incremental learning", with real rather than synthetic domains).
//!
//! Each task trains on its domain's training examples (or a seeded subsample of
//! `train-per-task`) and is tested on its domain's test examples; `test-per-class` caps the
//! test examples of each class within each domain. `order` lists domain names to choose and
//! order the tasks (default: every domain, in id order: sorted names, or the files' order).
//! A data set without domains is refused with a message saying how to declare them.

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, invalid, prepare,
    subsample,
};
use crate::data::Split;
use engram_weights::rng::Rng;
use serde_json::{Map, Value};

/// The keys of `domains`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// Domain names in task order (default: every domain in id order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order: Option<Vec<String>>,
}

fn params(m: &Map<String, Value>) -> Result<Params, ScenarioError> {
    let p: Params = parse_params("domains", m)?;
    if let Some(o) = &p.order {
        if o.is_empty() {
            return invalid("scenario domains: order is empty");
        }
        if o.len() > super::config::MAX_TASKS {
            return invalid(format!(
                "scenario domains: {} domains are more than the limit of {}",
                o.len(),
                super::config::MAX_TASKS
            ));
        }
    }
    Ok(p)
}

/// The domain-incremental scenario over `data`'s domains, in `order` (names) or id order.
pub fn domains(
    data: Split,
    order: Option<&[String]>,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    let name = data.train.name.clone();
    let Some(dom) = data.meta.domains.clone() else {
        return invalid(format!(
            "scenario domains: data set {name} has no domains; declare them per example (a \
             CSV `domain` column, npz arrays domain_train and domain_test, npy files \
             train-domain and test-domain) or a file per domain (dataset.domains = [...])"
        ));
    };
    if dom.train.len() != data.train.len() || dom.test.len() != data.test.len() {
        return invalid(format!(
            "scenario domains: data set {name}: domain ids do not match the examples"
        ));
    }
    // test-per-class applies within each domain, so the cap is taken here.
    let (train, test) = prepare(
        data,
        &Common {
            test_per_class: None,
            ..common.clone()
        },
    )?;
    let c = train.num_classes;
    let nd = dom.names.len();
    let (test, test_dom) = match common.test_per_class {
        None => (test, dom.test.clone()),
        Some(cap) => {
            let mut groups = vec![Vec::new(); nd * c];
            for (i, (&d, &y)) in dom.test.iter().zip(&test.y).enumerate() {
                if let Some(g) = groups.get_mut(d as usize * c + y as usize) {
                    g.push(i);
                }
            }
            let mut keep = Vec::new();
            for (g, members) in groups.iter().enumerate() {
                let mut rng = Rng::keyed(common.seed, "test-subsample", g as u64);
                keep.extend(rng.choose_sorted(members, cap));
            }
            keep.sort_unstable();
            let d = keep.iter().map(|&i| dom.test[i]).collect();
            (test.subset(&keep), d)
        }
    };
    let ids: Vec<usize> = match order {
        None => (0..nd).collect(),
        Some(names) => {
            let mut ids = Vec::with_capacity(names.len());
            for n in names {
                let Some(d) = dom.names.iter().position(|k| k == n) else {
                    return invalid(format!(
                        "scenario domains: order names '{n}', not a domain of {name} (its \
                         domains: {})",
                        dom.names.join(", ")
                    ));
                };
                if ids.contains(&d) {
                    return invalid(format!("scenario domains: order names '{n}' twice"));
                }
                ids.push(d);
            }
            ids
        }
    };
    let classes: Vec<u32> = (0..c as u32).collect();
    let mut tasks = Vec::with_capacity(ids.len());
    for (t, &d) in ids.iter().enumerate() {
        let dn = &dom.names[d];
        let tr: Vec<usize> = (0..train.len())
            .filter(|&i| dom.train[i] as usize == d)
            .collect();
        let te: Vec<usize> = (0..test.len())
            .filter(|&i| test_dom[i] as usize == d)
            .collect();
        if tr.is_empty() || te.is_empty() {
            return invalid(format!(
                "scenario domains: domain '{dn}' of {name} has no {} example",
                if tr.is_empty() { "training" } else { "test" }
            ));
        }
        let tr = subsample(tr, common.train_per_task, common.seed, t);
        tasks.push(Task::new(
            format!("task {t}: domain {dn}"),
            classes.clone(),
            tr,
            te,
            Transform::None,
        ));
    }
    let s = Scenario {
        name: format!("domains {name} ({} domains)", tasks.len()),
        seed: common.seed,
        eval: EvalMode::DomainIl,
        plan: EvalPlan::EveryTask,
        num_outputs: c,
        train,
        test,
        tasks,
    };
    s.validate()?;
    Ok(s)
}

pub const DOMAINS: Kind = Kind {
    name: "domains",
    summary: "domain-incremental over the data's own domains: task t is domain t, all classes",
    params: |m| to_json(&params(m)?),
    build: |data, m, common| {
        let p = params(m)?;
        domains(data, p.order.as_deref(), common)
    },
};

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, small_blobs};
    use super::*;
    use crate::data::Domains;

    /// Small blobs with domain d = example index mod 3 (names c, a, b: not sorted).
    fn with_domains() -> Split {
        let mut s = small_blobs();
        s.meta.domains = Some(Domains {
            names: vec!["c".into(), "a".into(), "b".into()],
            train: (0..s.train.len() as u32).map(|i| i % 3).collect(),
            test: (0..s.test.len() as u32).map(|i| i % 3).collect(),
        });
        s
    }

    #[test]
    fn one_task_per_domain_with_every_class() {
        let data = with_domains();
        let s = ok(domains(data.clone(), None, &Common::default()));
        assert_eq!(s.num_tasks(), 3);
        assert_eq!(s.eval, EvalMode::DomainIl);
        let dom = data.meta.domains.as_ref().map(|d| d.train.clone());
        for (t, task) in s.tasks.iter().enumerate() {
            assert_eq!(task.classes, (0..10).collect::<Vec<u32>>());
            assert!(task.train.iter().all(|&i| i % 3 == t), "task {t}");
            assert!(task.test.iter().all(|&i| i % 3 == t), "task {t}");
            assert_eq!(
                task.train.len(),
                dom.as_ref()
                    .map_or(0, |d| d.iter().filter(|&&x| x as usize == t).count())
            );
        }
        assert_eq!(s.tasks[1].name, "task 1: domain a");
        // Order by name, a subset.
        let order = ["b".to_string(), "c".to_string()];
        let s = ok(domains(data.clone(), Some(&order), &Common::default()));
        assert_eq!(s.num_tasks(), 2);
        assert!(s.tasks[0].train.iter().all(|&i| i % 3 == 2));
        let e = domains(data.clone(), Some(&["z".to_string()]), &Common::default());
        assert!(
            e.is_err_and(|e| e.to_string().contains("'z'") && e.to_string().contains("c, a, b"))
        );
        // test-per-class caps each class within each domain.
        let c = Common {
            test_per_class: Some(2),
            ..Common::default()
        };
        let s = ok(domains(data, None, &c));
        for t in &s.tasks {
            assert_eq!(t.test.len(), 20);
        }
    }

    #[test]
    fn data_without_domains_is_refused() {
        let e = domains(small_blobs(), None, &Common::default());
        assert!(e.is_err_and(|e| e.to_string().contains("has no domains")));
        let cfg = crate::scenario::ScenarioConfig::new("domains", "blobs");
        assert!(
            cfg.build(None)
                .is_err_and(|e| e.to_string().contains("has no domains"))
        );
        let cfg = crate::scenario::ScenarioConfig::new("domains", "blobs")
            .with("order", Vec::<String>::new());
        assert!(
            cfg.check()
                .is_err_and(|e| e.to_string().contains("order is empty"))
        );
    }
}
