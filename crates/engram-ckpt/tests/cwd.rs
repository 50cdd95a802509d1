//! Paths given relative to the working folder: an index named by its bare file name (whose
//! `parent()` is the empty path). Alone in this test binary because it changes the process's
//! working folder.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::path::Path;

#[test]
fn bare_index_and_file_names_open() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("m");
    let specs = (0..3)
        .map(|i| TensorSpec::new(format!("t{i}"), DType::F32, &[100]))
        .collect();
    let opts = WriteOptions {
        max_shard_bytes: Some(400),
        metadata: Default::default(),
    };
    let w = ModelWriter::create(&d, specs, &opts).unwrap();
    for i in 0..3 {
        w.write_f32(&format!("t{i}"), &[i as f32; 100]).unwrap();
    }
    w.finish(&[]).unwrap();
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    std::env::set_current_dir(&d).unwrap();
    let m = Model::open(Path::new("model.safetensors.index.json")).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m.side_files().len(), 1);
    let one = Model::open(Path::new("model-00002-of-00003.safetensors")).unwrap();
    assert_eq!(one.len(), 1);
    // A single-file output named by a bare file name goes to the working folder.
    let w = ModelWriter::create(
        Path::new("x.safetensors"),
        vec![TensorSpec::new("a", DType::F16, &[2])],
        &WriteOptions::default(),
    )
    .unwrap();
    w.write_f32("a", &[1.0, 2.0]).unwrap();
    w.finish(&[]).unwrap();
    assert_eq!(Model::open(Path::new("x.safetensors")).unwrap().len(), 1);
}
