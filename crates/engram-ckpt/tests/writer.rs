//! The atomic writer under failure: killed writes, failed writes, rewrites of a folder that
//! already holds a model, and two writers aiming at one destination.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions, parse_index};
use std::path::Path;

fn specs(n: usize, len: usize) -> Vec<TensorSpec> {
    (0..n)
        .map(|i| TensorSpec::new(format!("t.{i}"), DType::F32, &[len]))
        .collect()
}

fn write(out: &Path, n: usize, len: usize, value: f32, shard: Option<u64>) {
    let opts = WriteOptions {
        max_shard_bytes: shard,
        metadata: Default::default(),
    };
    let w = ModelWriter::create(out, specs(n, len), &opts).unwrap();
    for i in 0..n {
        w.write_f32(&format!("t.{i}"), &vec![value; len]).unwrap();
    }
    w.finish(&[]).unwrap();
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A process killed in the middle of a write runs no destructor: `mem::forget` stands in for
/// that. The earlier output must be byte-identical and no final name may hold a partial file.
#[test]
fn killed_write_leaves_earlier_output_untouched() {
    let t = tempfile::tempdir().unwrap();
    // A single file.
    let x = t.path().join("x.safetensors");
    write(&x, 4, 1000, 1.0, None);
    let old = std::fs::read(&x).unwrap();
    let w = ModelWriter::create(&x, specs(4, 1000), &WriteOptions::default()).unwrap();
    w.write_f32("t.0", &[2.0; 1000]).unwrap();
    w.write_f32("t.1", &[2.0; 1000]).unwrap();
    std::mem::forget(w);
    assert_eq!(std::fs::read(&x).unwrap(), old);
    let m = Model::open(&x).unwrap();
    assert_eq!(m.require("t.3").unwrap().to_f32().unwrap(), vec![1.0; 1000]);
    for name in listing(t.path()) {
        assert!(
            name == "x.safetensors" || name.starts_with(".x.safetensors.engram-tmp-"),
            "{name}"
        );
    }

    // A sharded folder.
    let d = t.path().join("model");
    write(&d, 4, 1000, 1.0, Some(8000));
    let before: Vec<(String, Vec<u8>)> = listing(&d)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(d.join(&n)).unwrap()))
        .collect();
    assert_eq!(before.len(), 3); // two shards and the index
    let w = ModelWriter::create(
        &d,
        specs(4, 1000),
        &WriteOptions {
            max_shard_bytes: Some(4000),
            ..Default::default()
        },
    )
    .unwrap();
    w.write_f32("t.0", &[2.0; 1000]).unwrap();
    std::mem::forget(w);
    for (n, bytes) in &before {
        assert_eq!(&std::fs::read(d.join(n)).unwrap(), bytes, "{n} changed");
    }
    for name in listing(&d) {
        assert!(
            before.iter().any(|(n, _)| *n == name) || name.contains(".engram-tmp-"),
            "{name}"
        );
    }
    assert_eq!(Model::open(&d).unwrap().len(), 4);
}

#[test]
fn dropped_writer_removes_its_files_and_the_folders_it_made() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("a").join("b");
    let w = ModelWriter::create(&out, specs(2, 10), &WriteOptions::default()).unwrap();
    w.write_f32("t.0", &[1.0; 10]).unwrap();
    drop(w);
    assert!(!t.path().join("a").exists());

    // An existing folder stays, with its files.
    let keep = t.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("notes.txt"), b"mine").unwrap();
    let w = ModelWriter::create(&keep, specs(2, 10), &WriteOptions::default()).unwrap();
    let err = w.finish(&[]).unwrap_err().to_string();
    assert!(err.contains("incomplete"), "{err}");
    assert_eq!(listing(&keep), ["notes.txt"]);
}

#[test]
fn rewriting_a_folder_removes_stale_weight_files_only() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    write(&d, 6, 1000, 1.0, Some(8000)); // 3 shards + index
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    std::fs::write(d.join("model-notes.txt"), b"keep").unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"keep").unwrap();
    assert!(d.join("model-00003-of-00003.safetensors").is_file());

    // Single file now: the index and the shards go, and the old model's config (the new one
    // has none: the old config would describe other weights); everything else stays.
    write(&d, 6, 1000, 2.0, None);
    assert_eq!(
        listing(&d),
        ["model-notes.txt", "model.safetensors", "pytorch_model.bin"]
    );
    let m = Model::open(&d).unwrap();
    assert_eq!(m.require("t.5").unwrap().to_f32().unwrap(), vec![2.0; 1000]);
    // While the model is open (an input of this run), the folder cannot be replaced.
    let e = ModelWriter::create(&d, specs(1, 1), &WriteOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("an input of this run"), "{e}");
    drop(m);

    // Sharded again, in 2 shards: the single file goes.
    write(&d, 6, 1000, 3.0, Some(12000));
    let l = listing(&d);
    assert!(!l.contains(&"model.safetensors".to_string()), "{l:?}");
    assert!(l.contains(&"model-00002-of-00002.safetensors".to_string()));
    let m = Model::open(&d).unwrap();
    assert_eq!(m.files().len(), 2);
    assert_eq!(m.require("t.0").unwrap().to_f32().unwrap(), vec![3.0; 1000]);
}

#[test]
fn two_writers_to_one_destination_do_not_share_a_temporary_file() {
    let t = tempfile::tempdir().unwrap();
    let x = t.path().join("x.safetensors");
    let a = ModelWriter::create(&x, specs(1, 100), &WriteOptions::default()).unwrap();
    let b = ModelWriter::create(&x, specs(1, 300), &WriteOptions::default()).unwrap();
    a.write_f32("t.0", &[1.0; 100]).unwrap();
    b.write_f32("t.0", &[2.0; 300]).unwrap();
    a.finish(&[]).unwrap();
    b.finish(&[]).unwrap();
    let m = Model::open(&x).unwrap();
    assert_eq!(m.require("t.0").unwrap().to_f32().unwrap(), vec![2.0; 300]);
}

#[test]
fn released_pages_read_back_the_same() {
    let t = tempfile::tempdir().unwrap();
    let x = t.path().join("x.safetensors");
    let w = ModelWriter::create(&x, specs(2, 100_000), &WriteOptions::default()).unwrap();
    let v: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
    w.write_f32("t.0", &v).unwrap();
    w.write_f32("t.1", &v).unwrap();
    w.finish(&[]).unwrap();
    let m = Model::open(&x).unwrap();
    let t0 = m.require("t.0").unwrap();
    let before = t0.to_f32().unwrap();
    t0.release(0, t0.numel());
    m.require("t.1").unwrap().release(10, 50_000);
    t0.release(5, 3); // empty range: nothing happens
    assert_eq!(t0.to_f32().unwrap(), before);
    assert_eq!(m.require("t.1").unwrap().to_f32().unwrap(), v);
}

#[test]
fn index_parser_validates_names() {
    let ok = parse_index(
        br#"{"metadata":{"total_size":8},"weight_map":{"a":"x.safetensors","b":"sub/y.safetensors"}}"#,
    )
    .unwrap();
    assert_eq!(ok.weight_map.len(), 2);
    assert_eq!(ok.metadata["total_size"], 8);
    for (bad, msg) in [
        (&b""[..], "empty"),
        (b"[]", "not a JSON object"),
        (b"{\"weight_map\":", "not valid JSON"),
        (b"{}", "no 'weight_map'"),
        (br#"{"weight_map":{}}"#, "empty 'weight_map'"),
        (br#"{"weight_map":[]}"#, "not an object"),
        (br#"{"weight_map":{"a":1}}"#, "not a file name"),
        (br#"{"weight_map":{"a":""}}"#, "leaves the model folder"),
        (br#"{"weight_map":{"a":"."}}"#, "leaves the model folder"),
        (br#"{"weight_map":{"a":"../x"}}"#, "leaves the model folder"),
        (br#"{"weight_map":{"a":"/x"}}"#, "absolute"),
        (br#"{"weight_map":{"a":"x","a":"x"}}"#, "listed twice"),
        (
            br#"{"weight_map":{"a":"x"},"weight_map":{"b":"y"}}"#,
            "two 'weight_map'",
        ),
    ] {
        let e = parse_index(bad).unwrap_err();
        assert!(
            e.msg.contains(msg),
            "{}: {e:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn same_tensors_compares_names_dtypes_shapes_and_bytes_not_layout() {
    let t = tempfile::tempdir().unwrap();
    let (one, sharded, other) = (
        t.path().join("one.safetensors"),
        t.path().join("sharded"),
        t.path().join("other.safetensors"),
    );
    write(&one, 3, 100, 1.0, None);
    write(&sharded, 3, 100, 1.0, Some(800));
    write(&other, 3, 100, 2.0, None);
    let (a, b, c) = (
        Model::open(&one).unwrap(),
        Model::open(&sharded).unwrap(),
        Model::open(&other).unwrap(),
    );
    assert!(a.same_tensors(&b) && b.same_tensors(&a));
    assert!(!a.same_tensors(&c));
    let fewer = t.path().join("fewer.safetensors");
    write(&fewer, 2, 100, 1.0, None);
    let fewer = Model::open(&fewer).unwrap();
    assert!(!a.same_tensors(&fewer) && !fewer.same_tensors(&a));
}
