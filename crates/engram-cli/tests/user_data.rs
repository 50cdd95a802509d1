//! `engram train` on the user's own files: an npz archive and a folder of PNG images, paths
//! taken from the run file's folder, every file recorded in results.json.

use std::path::Path;

use engram_learn::data::image_folder::png_bytes;
use engram_learn::data::numpy::{npy_bytes, npz_bytes};

mod common;
use common::{fails, ok, s};

fn run_file(dataset: &str, kind: &str) -> String {
    format!(
        "name = \"t\"\nseed = 1\n[scenario]\nkind = \"{kind}\"\ndataset = {dataset}\n\
         tasks = 2\nclasses-per-task = 1\n[model]\nkind = \"mlp\"\nhidden = [8]\n\
         [train]\niterations = 2\nbatch-size = 4\n[train.optimizer]\nkind = \"adam\"\n\
         lr = 0.01\n"
    )
}

fn results(out: &Path) -> serde_json::Value {
    let bytes = std::fs::read(out.join("t/results.json")).expect("results.json");
    serde_json::from_slice(&bytes).expect("json")
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn trains_on_an_npz_archive() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let x: Vec<u8> = (0..8 * 16).map(|v| (v * 7 % 256) as u8).collect();
    let y = i64s(&[0, 1, 0, 1, 0, 1, 0, 1]);
    let npz = npz_bytes(
        &[
            ("x_train", npy_bytes("|u1", &[8, 4, 4], &x)),
            ("y_train", npy_bytes("<i8", &[8], &y)),
            ("x_test", npy_bytes("|u1", &[8, 4, 4], &x)),
            ("y_test", npy_bytes("<i8", &[8], &y)),
        ],
        true,
    )
    .unwrap();
    std::fs::write(data.join("set.npz"), &npz).unwrap();
    let cfg = data.join("run.toml");
    let table = r#"{ kind = "npz", path = "set.npz" }"#;
    std::fs::write(&cfg, run_file(table, "class-incremental")).unwrap();
    // Run from another working directory: the path is the run file's folder's.
    let out = d.path().join("out");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&out)]);
    let r = results(&out);
    assert_eq!(r["accuracy"].as_array().map(Vec::len), Some(2));
    let files = r["data"].as_array().expect("data files");
    assert_eq!(files.len(), 1);
    let path = files[0]["path"].as_str().unwrap();
    assert!(path.ends_with("data/set.npz"), "{path}");
    assert_eq!(files[0]["bytes"].as_u64(), Some(npz.len() as u64));
    assert_eq!(files[0]["sha256"].as_str().map(str::len), Some(64));

    // A missing file is an error naming it, before any training.
    std::fs::write(
        &cfg,
        run_file(&table.replace("set.npz", "gone.npz"), "class-incremental"),
    )
    .unwrap();
    let e = fails(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&d.path().join("o2")),
    ]);
    assert!(e.contains("gone.npz"), "{e}");
}

#[test]
fn trains_on_an_image_folder() {
    let d = tempfile::tempdir().unwrap();
    for part in ["train", "test"] {
        for (class, v) in [("circle", 30u8), ("square", 220u8)] {
            for i in 0..3 {
                let p = d.path().join(format!("shapes/{part}/{class}/{i}.png"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, png_bytes(3, 6, 6, vec![v + i; 108]).unwrap()).unwrap();
            }
        }
    }
    let cfg = d.path().join("run.toml");
    let table = r#"{ kind = "images", path = "shapes", name = "shapes" }"#;
    std::fs::write(&cfg, run_file(table, "class-incremental")).unwrap();
    let out = d.path().join("out");
    ok(&["train", "-q", "--config", s(&cfg), "-o", s(&out)]);
    let r = results(&out);
    let files = r["data"].as_array().expect("data files");
    assert_eq!(files.len(), 1, "one record for the folder");
    assert!(files[0]["path"].as_str().unwrap().ends_with("shapes"));
    assert_eq!(files[0]["sha256"].as_str().map(str::len), Some(64));
    assert!(files[0]["bytes"].as_u64().unwrap() > 0);
    // The scenario refuses a data set without domains, with a message saying why.
    std::fs::write(
        &cfg,
        run_file(table, "domains").replace("tasks = 2\nclasses-per-task = 1\n", ""),
    )
    .unwrap();
    let e = fails(&[
        "train",
        "-q",
        "--config",
        s(&cfg),
        "-o",
        s(&d.path().join("o2")),
    ]);
    assert!(e.contains("has no domains"), "{e}");
}
