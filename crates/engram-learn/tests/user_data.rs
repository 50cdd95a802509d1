//! The user's own data sets (IDX, NumPy, CSV, image folders) declared in run files: each
//! format read back from small files written here, every bad input a named error, every
//! scenario kind on them (`data/user.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use engram_learn::config::{RunConfig, RunFile};
use engram_learn::data::image_folder::png_bytes;
use engram_learn::data::numpy::{npy_bytes, npz_bytes};
use engram_learn::data::{DataError, DatasetSpec, Split};
use engram_learn::scenario::{EvalMode, ScenarioConfig};

type R = Result<(), Box<dyn std::error::Error>>;

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap_or_default();
    e.finish().unwrap_or_default()
}

fn write(p: &Path, b: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(p, b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// A run file's scenario with `dataset` (TOML), read from folder `dir`.
fn scenario(dir: &Path, kind: &str, dataset: &str, extra: &str) -> Result<ScenarioConfig, String> {
    let text = format!("[scenario]\nkind = \"{kind}\"\ndataset = {dataset}\n{extra}\n");
    match RunFile::parse_toml_in(&text, Some(dir)).map_err(|e| e.to_string())? {
        RunFile::Run(r) => Ok(r.scenario),
        RunFile::Curriculum(_) => Err("a curriculum".into()),
    }
}

fn load(dir: &Path, dataset: &str) -> Result<Split, String> {
    let c = scenario(dir, "joint", dataset, "")?;
    c.source()
        .map_err(|e| e.to_string())?
        .load(None)
        .map_err(|e: DataError| e.to_string())
}

/// The error reading (or building `kind` on) `dataset`.
fn err(dir: &Path, kind: &str, dataset: &str, extra: &str) -> String {
    match scenario(dir, kind, dataset, extra).and_then(|c| c.build(None).map_err(|e| e.to_string()))
    {
        Ok(_) => "<no error>".into(),
        Err(e) => e,
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Six 4×4 gray u8 train images (classes 0, 1, 2 twice) and three test images.
fn gray_npz(dir: &Path, name: &str, deflate: bool) -> PathBuf {
    let x: Vec<u8> = (0..6 * 16).map(|v| (v * 3 % 256) as u8).collect();
    let xt: Vec<u8> = (0..3 * 16).map(|v| (v * 5 % 256) as u8).collect();
    let b = ok(npz_bytes(
        &[
            ("x_train", npy_bytes("|u1", &[6, 4, 4], &x)),
            (
                "y_train",
                npy_bytes("<i8", &[6], &i64s(&[0, 1, 2, 0, 1, 2])),
            ),
            ("x_test", npy_bytes("|u1", &[3, 4, 4], &xt)),
            ("y_test", npy_bytes("<i8", &[3], &i64s(&[2, 1, 0]))),
        ],
        deflate,
    ));
    let p = dir.join(name);
    write(&p, &b);
    p
}

#[test]
fn npz_stored_and_compressed_read_the_same() -> R {
    use sha2::Digest;
    let d = tempfile::tempdir()?;
    let p = gray_npz(d.path(), "data.npz", false);
    gray_npz(d.path(), "packed.npz", true);
    let a = ok(load(d.path(), r#"{ kind = "npz", path = "data.npz" }"#));
    let b = ok(load(d.path(), r#"{ kind = "npz", path = "packed.npz" }"#));
    assert_eq!(
        (a.train.x.clone(), a.train.y.clone()),
        (b.train.x, b.train.y)
    );
    assert_eq!(a.train.image, Some((1, 4, 4)));
    assert_eq!(a.train.num_classes, 3);
    assert_eq!(a.train.y, vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(a.test.y, vec![2, 1, 0]);
    assert!((a.train.x[5] - 15.0 / 255.0).abs() < 1e-7);
    assert_eq!(a.train.name, "data");
    // The file is recorded with its path (taken from the run file's folder) and SHA-256.
    assert_eq!(a.files.len(), 1);
    assert_eq!(a.files[0].path, d.path().canonicalize()?.join("data.npz"));
    let want: String = sha2::Sha256::digest(std::fs::read(&p)?)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(a.files[0].sha256, want);
    // The normalized config records the table with its defaults; the run's name uses the
    // data set's name.
    let text = "[scenario]\nkind = \"joint\"\ndataset = { kind = \"npz\", path = \"data.npz\" }\n";
    let RunFile::Run(run) = ok(RunFile::parse_toml_in(text, Some(d.path()))) else {
        panic!("not a run");
    };
    assert_eq!(run.run_name(), "naive-joint-data-seed0");
    let n = ok(run.normalized());
    let DatasetSpec::User(u) = &n.scenario.dataset else {
        panic!("not a user data set");
    };
    assert_eq!(u.name.as_deref(), Some("data"));
    assert_eq!(
        u.arrays.as_ref().map(|a| a.x_train.as_str()),
        Some("x_train")
    );
    let json = serde_json::to_string(&n)?;
    let back: RunConfig = serde_json::from_str(&json)?;
    assert_eq!(back.scenario, n.scenario);
    Ok(())
}

#[test]
fn channels_first_last_and_ambiguous_layouts() -> R {
    let d = tempfile::tempdir()?;
    // (2, 4, 4, 3): channels last, told apart from the shape alone.
    let x: Vec<u8> = (0..2 * 48).map(|v| v as u8).collect();
    let y = npy_bytes("<i8", &[2], &i64s(&[0, 1]));
    let mk = |name: &str, shape: &[usize]| {
        let x = &x[..shape.iter().product::<usize>()];
        let b = ok(npz_bytes(
            &[
                ("x_train", npy_bytes("|u1", shape, x)),
                ("y_train", y.clone()),
                ("x_test", npy_bytes("|u1", shape, x)),
                ("y_test", y.clone()),
            ],
            false,
        ));
        write(&d.path().join(name), &b);
    };
    mk("last.npz", &[2, 4, 4, 3]);
    mk("first.npz", &[2, 3, 4, 4]);
    mk("both.npz", &[2, 3, 4, 3]);
    let s = ok(load(d.path(), r#"{ kind = "npz", path = "last.npz" }"#));
    assert_eq!(s.train.image, Some((3, 4, 4)));
    // Channel k of pixel p is input value p·3 + k.
    for p in 0..16 {
        for k in 0..3 {
            assert_eq!(s.train.x[k * 16 + p], (p * 3 + k) as f32 / 255.0);
        }
    }
    let s = ok(load(d.path(), r#"{ kind = "npz", path = "first.npz" }"#));
    assert_eq!(s.train.image, Some((3, 4, 4)));
    assert_eq!(s.train.x[17], 17.0 / 255.0);
    // (2, 3, 4, 3): either could be the channels.
    let e = err(
        d.path(),
        "joint",
        r#"{ kind = "npz", path = "both.npz" }"#,
        "",
    );
    assert!(e.contains("both.npz") && e.contains("layout"), "{e}");
    let s = ok(load(
        d.path(),
        r#"{ kind = "npz", path = "both.npz", layout = "nhwc" }"#,
    ));
    assert_eq!(s.train.image, Some((3, 3, 4)));
    Ok(())
}

#[test]
fn npz_features_domains_and_bad_arrays() -> R {
    let d = tempfile::tempdir()?;
    let dir = d.path();
    let x: Vec<f32> = (0..8 * 5).map(|v| v as f32 * 0.5 - 3.0).collect();
    let y = [0i64, 1, 0, 1, 0, 1, 0, 1];
    let dom = [0i64, 0, 0, 0, 7, 7, 7, 7];
    let arrays = |x: &[f32], y: &[i64]| {
        vec![
            ("feats", npy_bytes("<f4", &[8, 5], &f32s(x))),
            ("labels", npy_bytes("<i8", &[8], &i64s(y))),
            ("x_test", npy_bytes("<f4", &[8, 5], &f32s(x))),
            ("y_test", npy_bytes("<i8", &[8, 1], &i64s(y))),
            ("domain_train", npy_bytes("<i8", &[8], &i64s(&dom))),
            ("domain_test", npy_bytes("<i8", &[8], &i64s(&dom))),
        ]
    };
    write(&dir.join("f.npz"), &ok(npz_bytes(&arrays(&x, &y), true)));
    let table =
        r#"{ kind = "npz", path = "f.npz", arrays = { x-train = "feats", y-train = "labels" } }"#;
    let s = ok(load(dir, table));
    assert_eq!((s.train.dim, s.train.image), (5, None));
    assert_eq!(&s.train.x[..3], &[-3.0, -2.5, -2.0]);
    let doms = s.meta.domains.clone().ok_or("no domains")?;
    assert_eq!(doms.names, vec!["0", "7"]);
    assert_eq!(doms.train, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    // Domain-incremental over the domains; permuted works on features, rotated does not.
    let c = ok(scenario(dir, "domains", table, ""));
    let sc = ok(c.build(None));
    assert_eq!((sc.num_tasks(), sc.eval), (2, EvalMode::DomainIl));
    assert_eq!(sc.tasks[1].train, vec![4, 5, 6, 7]);
    assert_eq!(sc.tasks[1].name, "task 1: domain 7");
    assert!(
        ok(scenario(dir, "permuted", table, "tasks = 2"))
            .build(None)
            .is_ok()
    );
    let e = err(dir, "rotated", table, "");
    assert!(e.contains("not a set of square images"), "{e}");
    // Every other kind builds on the same data.
    for (kind, extra) in [
        ("class-incremental", "tasks = 2\nclasses-per-task = 1"),
        ("task-incremental", "tasks = 2\nclasses-per-task = 1"),
        ("joint", ""),
        ("scole", "tasks = 4\nclasses-per-task = 1"),
    ] {
        let s = ok(ok(scenario(dir, kind, table, extra)).build(None));
        assert!(s.num_tasks() >= 1, "{kind}");
    }
    // Bad arrays: each an error naming the file (and the array or example).
    let bad = |name: &str, arrays: Vec<(&str, Vec<u8>)>| -> String {
        write(&dir.join(name), &ok(npz_bytes(&arrays, false)));
        let t = format!(
            r#"{{ kind = "npz", path = "{name}", arrays = {{ x-train = "feats", y-train = "labels" }} }}"#
        );
        err(dir, "joint", &t, "")
    };
    let mut nan = x.clone();
    nan[7] = f32::NAN;
    let e = bad("nan.npz", arrays(&nan, &y));
    assert!(
        e.contains("nan.npz") && e.contains("example 1") && e.contains("finite"),
        "{e}"
    );
    let e = bad("neg.npz", arrays(&x, &[0, 1, 0, -1, 0, 1, 0, 1]));
    assert!(
        e.contains("neg.npz") && e.contains("-1") && e.contains("example 3"),
        "{e}"
    );
    let mut a = arrays(&x, &y);
    a[1].1 = npy_bytes("<i8", &[7], &i64s(&y[..7]));
    let e = bad("short.npz", a);
    assert!(
        e.contains("7 labels but") && e.contains("8 examples"),
        "{e}"
    );
    let mut a = arrays(&x, &y);
    a.remove(0);
    let e = bad("nox.npz", a);
    assert!(
        e.contains("no array 'feats'") && e.contains("labels, x_test"),
        "{e}"
    );
    let mut a = arrays(&x, &y);
    a[0].1 = npy_bytes("<i4", &[8, 5], &[0; 160]);
    let e = bad("int.npz", a);
    assert!(e.contains("int32") && e.contains("float32"), "{e}");
    let e = err(
        dir,
        "joint",
        &table.replace("f.npz\",", "f.npz\", num-classes = 1,"),
        "",
    );
    assert!(
        e.contains("label 1 of example 1") && e.contains("num-classes = 1"),
        "{e}"
    );
    let e = err(dir, "joint", r#"{ kind = "npz", path = "gone.npz" }"#, "");
    assert!(e.contains("gone.npz"), "{e}");
    write(&dir.join("junk.npz"), b"not a zip at all");
    let e = err(dir, "joint", r#"{ kind = "npz", path = "junk.npz" }"#, "");
    assert!(e.contains("junk.npz") && e.contains("ZIP"), "{e}");
    Ok(())
}

#[test]
fn npy_files_gzip_and_test_fraction() -> R {
    let d = tempfile::tempdir()?;
    let dir = d.path();
    let n = 40;
    let x: Vec<f32> = (0..n * 3).map(|v| v as f32).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    write(
        &dir.join("x.npy.gz"),
        &gz(&npy_bytes("<f4", &[n, 3], &f32s(&x))),
    );
    write(&dir.join("y.npy"), &npy_bytes("<i8", &[n], &i64s(&y)));
    let both = r#"{ kind = "npy", train-x = "x.npy.gz", train-y = "y.npy", test-x = "x.npy.gz", test-y = "y.npy" }"#;
    let s = ok(load(dir, both));
    assert_eq!((s.train.len(), s.test.len(), s.files.len()), (n, n, 4));
    assert_eq!(s.train.row(2), &[6.0, 7.0, 8.0]);
    // One file pair and a seeded, stratified test split.
    let frac = |seed: u64| -> Result<Split, String> {
        let t =
            r#"{ kind = "npy", train-x = "x.npy.gz", train-y = "y.npy", test-fraction = 0.25 }"#;
        let c = scenario(dir, "joint", t, &format!("seed = {seed}"))?;
        c.source()
            .map_err(|e| e.to_string())?
            .load(None)
            .map_err(|e| e.to_string())
    };
    let (a, b, c) = (ok(frac(1)), ok(frac(1)), ok(frac(2)));
    assert_eq!((a.train.len(), a.test.len()), (n - 12, 12));
    assert_eq!(a.test.class_counts(), vec![3; 4]);
    assert_eq!(a.test.x, b.test.x);
    assert_ne!(a.test.x, c.test.x);
    let e = err(
        dir,
        "joint",
        r#"{ kind = "npy", train-x = "x.npy.gz", train-y = "y.npy" }"#,
        "",
    );
    assert!(
        e.contains("no test set") && e.contains("test-fraction"),
        "{e}"
    );
    let e = err(
        dir,
        "joint",
        &both.replace(" }", ", test-fraction = 0.5 }"),
        "",
    );
    assert!(e.contains("test-fraction has no effect"), "{e}");
    Ok(())
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for v in dims {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

#[test]
fn idx_files_and_a_file_per_domain() -> R {
    let d = tempfile::tempdir()?;
    let dir = d.path();
    for (site, fill) in [("a", 0u8), ("b", 255u8)] {
        write(
            &dir.join(site).join("img.gz"),
            &gz(&idx(&[4, 2, 2], &[fill; 16])),
        );
        write(&dir.join(site).join("lab"), &idx(&[4], &[0, 1, 1, 0]));
    }
    let one = r#"{ kind = "idx", train-images = "a/img.gz", train-labels = "a/lab", test-images = "b/img.gz", test-labels = "b/lab" }"#;
    let s = ok(load(dir, one));
    assert_eq!((s.train.image, s.train.num_classes), (Some((1, 2, 2)), 2));
    assert!(s.train.x.iter().all(|&v| v == 0.0) && s.test.x.iter().all(|&v| v == 1.0));
    let per_domain = r#"{ kind = "idx", name = "sites", test-fraction = 0.5, domains = [
        { name = "dark", train-images = "a/img.gz", train-labels = "a/lab" },
        { train-images = "b/img.gz", train-labels = "b/lab" } ] }"#;
    let s = ok(load(dir, per_domain));
    let doms = s.meta.domains.clone().ok_or("no domains")?;
    assert_eq!(doms.names, vec!["dark", "img"]);
    assert_eq!(s.files.len(), 4);
    let sc = ok(ok(scenario(dir, "domains", per_domain, "")).build(None));
    assert_eq!(sc.num_tasks(), 2);
    for (t, task) in sc.tasks.iter().enumerate() {
        let (x, _) = sc.task_train(t);
        assert!(x.iter().all(|&v| v == t as f32), "task {t}");
        assert_eq!(task.train.len(), 2);
    }
    // Labels over num-classes, a truncated file.
    write(&dir.join("c/lab"), &idx(&[4], &[0, 1, 9, 0]));
    let e = err(
        dir,
        "joint",
        &one.replace("a/lab", "c/lab")
            .replace(" }", ", num-classes = 2 }"),
        "",
    );
    assert!(
        e.contains("label 9 of example 2") && e.contains("c/lab"),
        "{e}"
    );
    write(&dir.join("c/lab"), &idx(&[4], &[0, 1]));
    let e = err(dir, "joint", &one.replace("a/lab", "c/lab"), "");
    assert!(e.contains("truncated") && e.contains("c/lab"), "{e}");
    Ok(())
}

#[test]
fn csv_text_labels_domains_and_bad_cells() -> R {
    let d = tempfile::tempdir()?;
    let dir = d.path();
    write(
        &dir.join("train.csv"),
        b"id,x1,x2,label,site\nr1,0.5,1,dog,north\nr2,1.5,2,cat,south\nr3,2.5,3,ant,north\nr4,3.5,4,cat,south\n",
    );
    write(
        &dir.join("test.csv"),
        b"id,x1,x2,label,site\nt1,9,9,ant,south\nt2,8,8,dog,north\n",
    );
    let t = r#"{ kind = "csv", train = "train.csv", test = "test.csv", domain = "site" }"#;
    let s = ok(load(dir, t));
    assert_eq!(s.meta.classes, vec!["ant", "cat", "dog"]);
    assert_eq!(s.train.y, vec![2, 1, 0, 1]);
    assert_eq!(s.test.y, vec![0, 2]);
    assert_eq!((s.train.dim, s.train.row(1)), (2, &[1.5f32, 2.0][..]));
    let doms = s.meta.domains.clone().ok_or("no domains")?;
    assert_eq!(
        (doms.names.clone(), doms.test.clone()),
        (vec!["north".into(), "south".into()], vec![1, 0])
    );
    let sc = ok(ok(scenario(dir, "domains", t, "")).build(None));
    assert_eq!(sc.tasks[0].train, vec![0, 2]);
    // Integer labels stay integers; one file with a test fraction.
    write(
        &dir.join("all.csv"),
        b"a,b,label\n1,2,3\n3,4,0\n5,6,3\n7,8,0\n",
    );
    let s = ok(load(
        dir,
        r#"{ kind = "csv", path = "all.csv", test-fraction = 0.5, features = ["b"] }"#,
    ));
    assert_eq!(
        (s.train.num_classes, s.meta.classes.len(), s.train.dim),
        (4, 0, 1)
    );
    assert_eq!((s.train.len(), s.test.len()), (2, 2));
    // A text cell among the features.
    write(&dir.join("bad.csv"), b"a,label\n1,0\nx,1\n");
    let e = err(
        dir,
        "joint",
        r#"{ kind = "csv", path = "bad.csv", test-fraction = 0.5 }"#,
        "",
    );
    assert!(
        e.contains("bad.csv") && e.contains("line 3") && e.contains("column 'a'"),
        "{e}"
    );
    let e = err(
        dir,
        "domains",
        r#"{ kind = "csv", path = "all.csv", test-fraction = 0.5 }"#,
        "",
    );
    assert!(e.contains("has no domains"), "{e}");
    Ok(())
}

fn png(dir: &Path, rel: &str, c: usize, h: u32, w: u32, v: u8) {
    let b = ok(png_bytes(c, h, w, vec![v; c * (h * w) as usize]));
    write(&dir.join(rel), &b);
}

#[test]
fn image_folders() -> R {
    let d = tempfile::tempdir()?;
    let dir = d.path();
    for (part, n) in [("train", 3), ("test", 1)] {
        for (class, v) in [("b-cat", 200u8), ("a-dog", 100u8)] {
            for i in 0..n {
                png(dir, &format!("pets/{part}/{class}/{i}.png"), 1, 4, 4, v);
            }
        }
    }
    let t = r#"{ kind = "images", path = "pets" }"#;
    let s = ok(load(dir, t));
    assert_eq!(s.meta.classes, vec!["a-dog", "b-cat"]);
    assert_eq!(s.train.y, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!((s.train.image, s.test.len()), (Some((1, 4, 4)), 2));
    assert!((s.train.x[0] - 100.0 / 255.0).abs() < 1e-6);
    assert_eq!(s.files.len(), 1);
    assert_eq!(s.files[0].path, dir.canonicalize()?.join("pets"));
    assert_eq!(s.files[0].sha256.len(), 64);
    // Rotation and class splits work on images; channels and size convert.
    assert!(
        ok(scenario(dir, "rotated", t, "tasks = 2"))
            .build(None)
            .is_ok()
    );
    assert!(
        ok(scenario(
            dir,
            "class-incremental",
            t,
            "tasks = 2\nclasses-per-task = 1"
        ))
        .build(None)
        .is_ok()
    );
    let s = ok(load(
        dir,
        r#"{ kind = "images", path = "pets", channels = 3, size = [2, 3] }"#,
    ));
    assert_eq!(s.train.image, Some((3, 2, 3)));
    // An image of another size, a stray file, a missing folder.
    png(dir, "pets/train/a-dog/9.png", 1, 5, 4, 0);
    let e = err(dir, "joint", t, "");
    assert!(
        e.contains("9.png") && e.contains("5x4") && e.contains("size = [h, w]"),
        "{e}"
    );
    std::fs::remove_file(dir.join("pets/train/a-dog/9.png"))?;
    write(&dir.join("pets/train/a-dog/notes.txt"), b"hi");
    let e = err(dir, "joint", t, "");
    assert!(e.contains("notes.txt") && e.contains("PNG or JPEG"), "{e}");
    std::fs::remove_file(dir.join("pets/train/a-dog/notes.txt"))?;
    write(&dir.join("pets/train/a-dog/fake.png"), b"not a png");
    let e = err(dir, "joint", t, "");
    assert!(e.contains("fake.png"), "{e}");
    std::fs::remove_file(dir.join("pets/train/a-dog/fake.png"))?;
    let e = err(dir, "joint", r#"{ kind = "images", path = "cats" }"#, "");
    assert!(e.contains("cats") && e.contains("does not exist"), "{e}");
    // A folder per domain, each split by test-fraction.
    for site in ["x", "y"] {
        for i in 0..4 {
            png(dir, &format!("{site}/k{}/{i}.png", i % 2), 3, 2, 2, 10);
        }
    }
    let per = r#"{ kind = "images", domains = ["x", "y"], test-fraction = 0.5 }"#;
    let sc = ok(ok(scenario(dir, "domains", per, "")).build(None));
    assert_eq!(sc.num_tasks(), 2);
    assert_eq!(sc.train.image, Some((3, 2, 2)));
    assert_eq!(sc.tasks[1].name, "task 1: domain y");
    Ok(())
}

#[test]
fn bad_tables_are_refused_before_any_file_is_read() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = d.path();
    for (table, want) in [
        (r#"{ kind = "npz", pth = "a.npz" }"#, "pth"),
        (r#"{ kind = "hdf5", path = "a.h5" }"#, "hdf5"),
        (
            r#"{ kind = "npz", path = "a.npz", label = "y" }"#,
            "key `label` does not apply",
        ),
        (r#"{ kind = "npz" }"#, "`path` is missing"),
        (
            r#"{ kind = "npz", path = "a", domains = ["b"] }"#,
            "not both",
        ),
        (r#"{ kind = "npy", train-x = "x" }"#, "`train-y` is missing"),
        (
            r#"{ kind = "npy", domains = ["a.npy"], test-fraction = 0.5 }"#,
            "domains[0]",
        ),
        (r#"{ kind = "csv", train = "a.csv" }"#, "no test set"),
        (
            r#"{ kind = "csv", path = "a.csv", test-fraction = 1.5 }"#,
            "test-fraction = 1.5",
        ),
        (
            r#"{ kind = "images", path = "p", channels = 2 }"#,
            "channels = 2",
        ),
        (
            r#"{ kind = "npz", path = "a", num-classes = 0 }"#,
            "num-classes",
        ),
        (
            r#"{ kind = "npz", path = "a", image-shape = [4611686018427387905, 4, 1] }"#,
            "holds more than",
        ),
        (
            r#"{ kind = "csv", domains = ["a.csv", "b/a.csv"], test-fraction = 0.5 }"#,
            "both named 'a'",
        ),
    ] {
        let e = match scenario(dir, "joint", table, "") {
            Ok(_) => "<no error>".into(),
            Err(e) => e,
        };
        assert!(e.contains(want), "{table}: {e}");
    }
    let e = match scenario(
        dir,
        "joint",
        r#"{ kind = "npz", path = "a" }"#,
        "blobs = { classes = 3 }",
    ) {
        Ok(_) => "<no error>".into(),
        Err(e) => e,
    };
    assert!(e.contains("blobs"), "{e}");
}

#[test]
fn curriculum_phases_resolve_their_paths() {
    let text = r#"
[[phase]]
name = "a"
scenario = { kind = "joint", dataset = { kind = "npz", path = "sub/a.npz" } }
[[phase]]
name = "b"
scenario = { kind = "joint", dataset = "blobs" }
"#;
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path_of = |f: RunFile| match f {
        RunFile::Curriculum(c) => match &c.phases[0].scenario.dataset {
            DatasetSpec::User(u) => u.path.clone(),
            _ => None,
        },
        RunFile::Run(_) => None,
    };
    let base = d.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
    let f = ok(RunFile::parse_toml_in(text, Some(d.path())));
    assert_eq!(path_of(f), Some(base.join("sub/a.npz")));
    let f = ok(RunFile::parse_toml_in(text, None));
    assert_eq!(path_of(f), Some(PathBuf::from("sub/a.npz")));
}
