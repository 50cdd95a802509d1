//! `engram evolve` end to end: CMA-ES over merge weights, candidates run as jobs of the sweep
//! runner, scored by a user's command; on synthetic models (anywhere) and on the merge-8
//! study's fine-tunes (real data; skipped where not installed, unless ENGRAM_REQUIRE_DATA=1).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

mod common;
use common::{engram, fails, family, ok, s};

const ENGRAM: &str = env!("CARGO_BIN_EXE_engram");

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn models_yaml(models: &[PathBuf]) -> String {
    models
        .iter()
        .map(|m| format!("  - model: {}\n", m.display()))
        .collect()
}

/// A synthetic target, base + 0.3·τ₁ + 0.8·τ₂, scored by the distance `engram diff` prints:
/// the search must find weights near (0.3, 0.8); a rerun replays without evaluating; a
/// candidate whose score is lost is evaluated again to the same score; best.yml merges.
#[test]
fn evolve_finds_the_weights_of_a_known_merge_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 2);
    let target = d.path().join("target");
    ok(&[
        "merge",
        "-q",
        "--method",
        "task_arithmetic",
        "--base",
        s(&base),
        "--weights",
        "0.3,0.8",
        s(&fts[0]),
        s(&fts[1]),
        "-o",
        s(&target),
    ]);
    // `overall  |A-B| 0.8456 ...`: the third word of the summary line.
    let score = format!(
        "{ENGRAM} diff {} {{model}} | grep '^overall' | awk '{{print $3}}'",
        target.display()
    );
    let cfg = d.path().join("evolve.yml");
    let text = format!(
        "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n{}search:\n  weight: [0.0, 1.0]\nscore:\n  command: \"{score}\"\n  maximize: false\n  timeout: 60\npopulation: 6\ngenerations: 8\nsigma0: 0.3\nseed: 1\n",
        base.display(),
        models_yaml(&fts)
    );
    std::fs::write(&cfg, &text).unwrap();
    let out = d.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "evolve",
            s(&cfg),
            "-o",
            s(&out),
            "--jobs",
            "2",
            "-q",
            "--json",
        ];
        args.extend(extra);
        json(&ok(&args))
    };
    let r = run(&[]);
    assert_eq!(r["evaluations"], 48);
    assert_eq!(r["evaluated_now"], 48);
    assert_eq!(
        r["coordinates"],
        serde_json::json!(["models[0].weight", "models[1].weight"])
    );
    let best = r["best"]["values"].as_array().unwrap();
    let (w1, w2) = (best[0].as_f64().unwrap(), best[1].as_f64().unwrap());
    assert!(
        (w1 - 0.3).abs() < 0.1 && (w2 - 0.8).abs() < 0.1,
        "{w1}, {w2}"
    );
    // The centre of the box, (0.5, 0.5), is much farther from the target.
    let first_gen_best = r["generations"][0]["best_score"].as_f64().unwrap();
    assert!(r["best"]["score"].as_f64().unwrap() < first_gen_best);

    // A rerun replays every generation from the recorded scores.
    let again = run(&[]);
    assert_eq!(again["evaluated_now"], 0);
    assert_eq!(again["best"], r["best"]);
    // A lost score is evaluated again (the same config, the same score) and nothing else is.
    let cand = out.join("gen-3/cand-2");
    let old = std::fs::read_to_string(cand.join("score.json")).unwrap();
    std::fs::remove_file(cand.join("score.json")).unwrap();
    let again = run(&[]);
    assert_eq!(again["evaluated_now"], 1);
    let new: serde_json::Value = json(&std::fs::read_to_string(cand.join("score.json")).unwrap());
    assert_eq!(new["score"], json(&old)["score"]);
    assert_eq!(again["generations"], r["generations"]);
    assert!(
        !cand.join("model").exists(),
        "the merged model is removed after scoring"
    );
    // More generations continue the same search.
    let more = run(&["--generations", "9"]);
    assert_eq!(
        (more["evaluations"].as_u64(), more["evaluated_now"].as_u64()),
        (Some(54), Some(6))
    );
    assert_eq!(more["generations"][7], r["generations"][7]);
    // Other settings in the same folder are refused.
    let e = fails(&["evolve", s(&cfg), "-o", s(&out), "--seed", "2"]);
    assert!(e.contains("'seed' differs"), "{e}");

    // best.yml is a mergekit config `engram merge` reads; its model scores the best score.
    let merged = d.path().join("best-merged");
    ok(&["merge", "-q", s(&out.join("best.yml")), "-o", s(&merged)]);
    let o = std::process::Command::new("sh")
        .args(["-c", &score.replace("{model}", s(&merged))])
        .output()
        .unwrap();
    let dist: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(dist, more["best"]["score"].as_f64().unwrap());
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let (base, fts) = family(&d.path().join("fam"), 2);
    let good = format!(
        "merge_method: ties\nbase_model: {}\nmodels:\n{}search:\n  weight: [0.0, 1.0]\n  density: [0.2, 1.0]\nscore: echo 1 {{model}}\n",
        base.display(),
        models_yaml(&fts)
    );
    let cfg = d.path().join("evolve.yml");
    let out = d.path().join("out");
    for (from, to, want) in [
        (
            "merge_method: ties",
            "merge_method: frankenmerge",
            "unknown method 'frankenmerge'",
        ),
        (
            "merge_method: ties",
            "merge_method: task_arithmetic",
            "search.density",
        ),
        (
            "density: [0.2, 1.0]",
            "density: [0.2, 1.5]",
            "1.5 is outside [0, 1]",
        ),
        ("weight: [0.0, 1.0]", "weight: [1.0, 0.0]", "min < max"),
        (
            "weight: [0.0, 1.0]",
            "weight: [0.0, 1.0]\n  layer_group: 2",
            "unknown key 'layer_group'",
        ),
        (
            "score: echo 1 {model}",
            "score: echo 1",
            "never mentions {model}",
        ),
        (
            "score: echo 1 {model}",
            "scores: echo 1 {model}",
            "unknown key 'scores'",
        ),
        ("search:", "population: 1\nsearch:", "population"),
    ] {
        std::fs::write(&cfg, good.replace(from, to)).unwrap();
        let e = fails(&["evolve", s(&cfg), "-o", s(&out)]);
        assert!(e.contains(want) && e.contains("evolve.yml"), "{to}: {e}");
        assert!(!out.exists(), "{to}: a refused config writes nothing");
    }
    // A score command that prints no number stops the search at that candidate.
    std::fs::write(
        &cfg,
        good.replace("echo 1 {model}", "echo no-number {model}"),
    )
    .unwrap();
    let e = fails(&["evolve", s(&cfg), "-o", s(&out), "--generations", "1", "-q"]);
    assert!(e.contains("gen-0/cand-0") || e.contains("failed"), "{e}");
    let log = std::fs::read_to_string(out.join("gen-0/cand-0/log.txt")).unwrap();
    assert!(log.contains("not a number"), "{log}");
}

fn data_missing(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("not found (looked in") {
        assert!(
            std::env::var("ENGRAM_REQUIRE_DATA").as_deref() != Ok("1"),
            "ENGRAM_REQUIRE_DATA=1 but a data set is missing: {err}"
        );
        eprintln!("skipping: {err}");
        return true;
    }
    false
}

/// The merge-8 score of `model` on `part` (mean Task-IL accuracy over the eight tasks, %),
/// through the score command.
fn score(study: &Path, model: &Path, part: &str) -> f64 {
    let out = ok(&[
        "study",
        "merge8-score",
        "--study",
        s(study),
        s(model),
        "--part",
        part,
        "--metric",
        "accuracy",
    ]);
    out.trim().parse().unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The test: evolving the eight per-model weights of a Task Arithmetic merge of the
/// merge-8 fine-tunes beats the best uniform λ of a grid, on validation (both chosen there);
/// the test-split scores of both are printed for the record.
#[test]
fn evolved_weights_beat_the_best_uniform_lambda_on_merge8() {
    let d = tempfile::tempdir().unwrap();
    let m8 = d.path().join("m8");
    let t0 = Instant::now();
    let study = engram(&["study", "merge8", "--quick", "-q", "-o", s(&m8)]);
    if data_missing(&study) {
        return;
    }
    assert!(
        study.status.success(),
        "{}",
        String::from_utf8_lossy(&study.stderr)
    );
    let t_study = t0.elapsed().as_secs_f64();
    let base = m8.join("models/base.safetensors");
    let mut fts: Vec<PathBuf> = std::fs::read_dir(m8.join("models/finetuned"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fts.sort();
    assert_eq!(fts.len(), 8);
    let head = format!(
        "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n{}",
        base.display(),
        models_yaml(&fts)
    );

    // The best uniform λ on validation (ties: the smaller), through the same score command.
    let t1 = Instant::now();
    let mut uniform: Option<(f64, f64, PathBuf)> = None;
    for k in 1..=15 {
        let lambda = f64::from(k) / 10.0;
        let cfg = d.path().join(format!("ta-{k}.yml"));
        std::fs::write(&cfg, format!("{head}parameters:\n  lambda: {lambda}\n")).unwrap();
        let merged = d.path().join(format!("ta-{k}.safetensors"));
        ok(&["merge", "-q", s(&cfg), "-o", s(&merged)]);
        let v = score(&m8, &merged, "valid");
        if uniform.as_ref().is_none_or(|(_, b, _)| v > *b) {
            uniform = Some((lambda, v, merged));
        }
    }
    let (lambda, uniform_val, uniform_model) = uniform.unwrap();
    let uniform_test = score(&m8, &uniform_model, "test");
    let t_grid = t1.elapsed().as_secs_f64();

    // Evolved per-model weights, bounds holding every λ of the grid.
    let t2 = Instant::now();
    let cfg = d.path().join("evolve.yml");
    std::fs::write(
        &cfg,
        format!(
            "{head}search:\n  weight: [0.0, 1.5]\nscore:\n  command: [{ENGRAM}, study, merge8-score, --study, {}, --metric, accuracy, \"{{model}}\"]\npopulation: 8\ngenerations: 5\nsigma0: 0.25\nseed: 0\n",
            m8.display()
        ),
    )
    .unwrap();
    let out = d.path().join("evolve");
    let r = json(&ok(&[
        "evolve",
        s(&cfg),
        "-o",
        s(&out),
        "--jobs",
        "2",
        "-q",
        "--json",
    ]));
    let t_evolve = t2.elapsed().as_secs_f64();
    let evolved_val = r["best"]["score"].as_f64().unwrap();
    let merged = d.path().join("evolved.safetensors");
    ok(&["merge", "-q", s(&out.join("best.yml")), "-o", s(&merged)]);
    assert_eq!(
        score(&m8, &merged, "valid"),
        evolved_val,
        "best.yml reproduces its score"
    );
    let evolved_test = score(&m8, &merged, "test");
    eprintln!(
        "merge-8 (quick), mean accuracy %: best uniform TA λ = {lambda}: validation {uniform_val:.2}, test {uniform_test:.2}; evolved weights ({} candidates): validation {evolved_val:.2}, test {evolved_test:.2}; seconds: study {t_study:.1}, λ grid {t_grid:.1}, evolve {t_evolve:.1}",
        r["evaluations"]
    );
    assert!(
        evolved_val > uniform_val,
        "evolved {evolved_val} <= uniform λ = {lambda}: {uniform_val}"
    );
}
