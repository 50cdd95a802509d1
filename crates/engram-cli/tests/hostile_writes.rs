//! An adversarial corpus for what engram writes and where (issue 14: "nothing lost, nothing
//! outside"), generated here. Every case carries its class:
//! 1 multi-file outputs commit as one (kills at many moments), 2 a failed run changes nothing,
//! 3 an output never overwrites an input, 4 checksums, 6 paths stay inside, 7 special files,
//! 11 safetensors strictness.

use engram_ckpt::{DType, Model, ModelWriter, TensorSpec, WriteOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{BLOBS_RUN as RUN, fails, family, mkfifo, ok, s, st};

/// Like `fails`, but the command must also finish within 20 s (a FIFO must not block it).
fn fails_fast(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert_eq!(st.code(), Some(1), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
            return err;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{args:?} hung (a special file was opened)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A model of `n` F32 tensors of `len` values, all `value` (plus the tensor index).
fn model(out: &Path, n: usize, len: usize, value: f32) {
    let specs: Vec<TensorSpec> = (0..n)
        .map(|i| TensorSpec::new(format!("layer.{i}.weight"), DType::F32, &[len]))
        .collect();
    let w = ModelWriter::create(out, specs, &WriteOptions::default()).unwrap();
    for i in 0..n {
        w.write_f32(&format!("layer.{i}.weight"), &vec![value + i as f32; len])
            .unwrap();
    }
    w.finish(&[]).unwrap();
}

/// Every file of a folder (recursively) with its bytes, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Entries beside `dir` (in its parent) other than `keep`: staging left-overs.
fn strays(parent: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Class 1: runs `args` and kills it with SIGKILL after each delay; after every kill the
/// output must open as exactly the old model or exactly the new one (`same_as`), never a mix
/// or an unreadable folder. A last run to completion must clean the dead runs' staging folders.
fn kill_trials(args: &[&str], out: &Path, old: &Path, new: &Path, open: &dyn Fn(&Path) -> Model) {
    let (mut saw_old, mut saw_new) = (0, 0);
    for delay in [0u64, 3, 8, 15, 25, 40, 60, 90, 130, 180, 250, 350, 500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let got = open(out);
        if got.same_tensors(&open(old)) {
            saw_old += 1;
        } else if got.same_tensors(&open(new)) {
            saw_new += 1;
        } else {
            panic!(
                "killed after {delay} ms: {} is neither the old nor the new output",
                out.display()
            );
        }
    }
    assert!(
        saw_old > 0,
        "no kill landed before the commit; make the model larger"
    );
    let _ = saw_new;
    ok(args);
    assert!(open(out).same_tensors(&open(new)));
    let parent = out.parent().unwrap();
    let name = out.file_name().unwrap().to_str().unwrap();
    let left: Vec<String> = strays(parent, &[])
        .into_iter()
        .filter(|n| n.starts_with(&format!(".{name}")))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn class1_a_killed_sharded_convert_leaves_the_old_model_or_the_new_one() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.safetensors");
    model(&src, 24, 1 << 20, 1.0); // 96 MiB
    let other = t.path().join("other.safetensors");
    model(&other, 24, 1 << 20, 5.0);
    // The old output: `other` in 3 shards, plus a user file that must survive.
    let out = t.path().join("out");
    ok(&[
        "convert",
        "-q",
        s(&other),
        "-o",
        s(&out),
        "--dtype",
        "f16",
        "--shard-size",
        "20MB",
    ]);
    std::fs::write(out.join("README.md"), "mine").unwrap();
    let old = t.path().join("old");
    ok(&["convert", "-q", s(&out), "-o", s(&old)]);
    let new = t.path().join("new");
    ok(&[
        "convert",
        "-q",
        s(&src),
        "-o",
        s(&new),
        "--dtype",
        "f16",
        "--shard-size",
        "8MB",
    ]);
    kill_trials(
        &[
            "convert",
            "-q",
            s(&src),
            "-o",
            s(&out),
            "--dtype",
            "f16",
            "--shard-size",
            "8MB",
        ],
        &out,
        &old,
        &new,
        &|p| Model::open(p).unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "mine"
    );
}

fn compress_args<'a>(
    base: &'a Path,
    fts: &'a [PathBuf],
    out: &'a Path,
    lambdas: &'a str,
) -> Vec<&'a str> {
    let mut a = vec![
        "compress",
        "-q",
        "--base",
        s(base),
        "--tasks",
        "a,b",
        "--lambdas",
        lambdas,
        "--mask-coding",
        "arith",
        "-o",
        s(out),
    ];
    a.extend(fts.iter().map(|p| s(p)));
    a
}

#[test]
fn class1_a_killed_compress_keeps_the_bundle_with_its_masks() {
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let out = t.path().join("bundle");
    ok(&compress_args(&base, &fts, &out, "0.3,0.3"));
    let before = snapshot(&out);
    let old_x = t.path().join("old-a");
    ok(&["extract", "-q", s(&out), "--task", "a", "-o", s(&old_x)]);
    let fresh = t.path().join("fresh");
    ok(&compress_args(&base, &fts, &fresh, "0.6,0.6"));
    let new_x = t.path().join("new-a");
    ok(&["extract", "-q", s(&fresh), "--task", "a", "-o", s(&new_x)]);
    let args = compress_args(&base, &fts, &out, "0.6,0.6");
    for delay in [0u64, 5, 20, 50, 100, 200] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(&args)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = c.kill();
        let _ = c.wait();
        // Whatever the moment, the bundle extracts to the old or the new task model.
        let x = t.path().join("x");
        ok(&["extract", "-q", s(&out), "--task", "a", "-o", s(&x)]);
        let m = Model::open(&x).unwrap();
        assert!(
            m.same_tensors(&Model::open(&old_x).unwrap())
                || m.same_tensors(&Model::open(&new_x).unwrap()),
            "after {delay} ms"
        );
    }
    ok(&args);
    assert_ne!(snapshot(&out), before);
    assert!(strays(t.path(), &["f", "bundle", "old-a", "fresh", "new-a", "x"]).is_empty());
}

#[test]
fn class2_a_failed_run_changes_nothing_in_an_existing_output() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let good = t.path().join("good");
    model(&good.join("model.safetensors"), 2, 8, 1.0);
    std::fs::write(good.join("config.json"), "{}").unwrap();
    ok(&["convert", "-q", s(&good), "-o", s(&out)]);
    let before = snapshot(&out);
    // Cases that fail after the weights are written or while side files are copied.
    let nan = t.path().join("nan");
    {
        let specs = vec![
            TensorSpec::new("a", DType::F32, &[4]),
            TensorSpec::new("z", DType::F32, &[4]),
        ];
        let w = ModelWriter::create(
            &nan.join("model.safetensors"),
            specs,
            &WriteOptions::default(),
        )
        .unwrap();
        w.write_f32("a", &[1.0; 4]).unwrap();
        w.write_f32("z", &[1.0, 2.0, f32::NAN, 0.0]).unwrap();
        w.finish(&[]).unwrap();
    }
    let fifo_side = t.path().join("fifo-side");
    model(&fifo_side.join("model.safetensors"), 2, 8, 2.0);
    mkfifo(&fifo_side.join("tokenizer.json"));
    let cases: &[(&str, Vec<&str>, &str)] = &[
        (
            "2-late-nan",
            vec!["convert", s(&nan), "-o", s(&out), "--check-finite"],
            "non-finite",
        ),
        (
            "2-side-file-fifo",
            vec!["convert", s(&fifo_side), "-o", s(&out)],
            "FIFO",
        ),
        (
            "2-late-nan-sharded",
            vec![
                "convert",
                s(&nan),
                "-o",
                s(&out),
                "--check-finite",
                "--shard-size",
                "16",
            ],
            "non-finite",
        ),
    ];
    for (class, args, want) in cases {
        let e = fails_fast(args);
        assert!(e.contains(want), "{class}: {e}");
        assert_eq!(snapshot(&out), before, "{class}: the output changed");
        assert!(
            strays(t.path(), &["out", "good", "nan", "fifo-side"]).is_empty(),
            "{class}"
        );
    }
}

#[test]
fn class3_an_output_never_overwrites_an_input() {
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let one = t.path().join("one.safetensors");
    model(&one, 2, 64, 1.0);
    let link = t.path().join("link.safetensors");
    std::os::unix::fs::symlink(&one, &link).unwrap();
    let hard = t.path().join("hard.safetensors");
    std::fs::hard_link(&one, &hard).unwrap();
    let base_file = base.join("model.safetensors");
    let base_hard = t.path().join("base-hard.safetensors");
    std::fs::hard_link(&base_file, &base_hard).unwrap();
    let dirlink = t.path().join("dirlink");
    std::os::unix::fs::symlink(&base, &dirlink).unwrap();
    let respelled = format!("{}/../f/./base/", t.path().join("f").display());
    let ft0 = s(&fts[0]);
    let ft1 = s(&fts[1]);
    let parent = t.path().join("f");
    let index_in_input = base.join("model.safetensors.index.json");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "3-model-file-into-input-folder",
            vec!["analyze", s(&base), "--lift-masks", s(&index_in_input)],
        ),
        (
            "3-convert-same-file",
            vec!["convert", s(&one), "-o", s(&one)],
        ),
        (
            "3-convert-symlink",
            vec!["convert", s(&one), "-o", s(&link)],
        ),
        (
            "3-convert-hard-link",
            vec!["convert", s(&one), "-o", s(&hard)],
        ),
        (
            "3-convert-same-folder",
            vec!["convert", s(&base), "-o", s(&base)],
        ),
        (
            "3-convert-respelled",
            vec!["convert", s(&base), "-o", &respelled],
        ),
        (
            "3-convert-folder-symlink",
            vec!["convert", s(&base), "-o", s(&dirlink)],
        ),
        (
            "3-convert-into-parent",
            vec!["convert", s(&base), "-o", s(&parent)],
        ),
        (
            "3-merge-onto-base",
            vec![
                "merge",
                "--method",
                "task_arithmetic",
                "--base",
                s(&base),
                ft0,
                ft1,
                "-o",
                s(&base),
            ],
        ),
        (
            "3-merge-onto-model",
            vec!["merge", "--method", "linear", ft0, ft1, "-o", ft1],
        ),
        (
            "3-analyze-lift-masks",
            vec!["analyze", s(&base), "--lift-masks", s(&base_file)],
        ),
        (
            "3-analyze-lift-masks-hard-link",
            vec!["analyze", s(&base), "--lift-masks", s(&base_hard)],
        ),
    ];
    let before = snapshot(t.path());
    for (class, args) in &cases {
        let e = fails(args);
        assert!(e.contains("an input of this run"), "{class}: {e}");
        assert_eq!(snapshot(t.path()), before, "{class}: something changed");
    }
}

/// Rewrites bytes of a file in place.
fn patch_bytes(p: &Path, f: &dyn Fn(&mut Vec<u8>)) {
    let mut b = std::fs::read(p).unwrap();
    f(&mut b);
    std::fs::write(p, b).unwrap();
}

/// The header JSON of a safetensors image, as text (to rewrite in place, same length).
fn replace_in_header(p: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    patch_bytes(p, &|b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
        assert!(h.contains(from), "{from} not in header");
        let h = h.replacen(from, to, 1);
        b[8..8 + n].copy_from_slice(h.as_bytes());
    });
}

/// Swaps a tensor's dtype between BF16 and F16 (same size) in place, keeping valid JSON.
fn rewrite_dtype(p: &Path, tensor: &str) {
    patch_bytes(p, &|b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
        let at = h.find(&format!("\"{tensor}\":{{")).unwrap();
        let d = at + h[at..].find("\"dtype\":").unwrap() + 8;
        let (from, to) = if h[d..].starts_with("\"BF16\"") {
            ("\"BF16\"", "\"F16\" ")
        } else {
            ("\"F16\" ", "\"BF16\"")
        };
        assert!(h[d..].starts_with(from), "{}", &h[d..d + 10]);
        b[8 + d..8 + d + 6].copy_from_slice(to.as_bytes());
    });
}

/// Offset of a tensor's first data byte.
fn data_offset(p: &Path, tensor: &str) -> usize {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    8 + n + h[tensor]["data_offsets"][0].as_u64().unwrap() as usize
}

#[test]
fn class4_a_damaged_bundle_or_checkpoint_is_refused_naming_the_tensor() {
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let good = t.path().join("good");
    let mut a = vec![
        "compress",
        "-q",
        "--base",
        s(&base),
        "--tasks",
        "a,b",
        "-o",
        s(&good),
    ];
    a.extend(fts.iter().map(|p| s(p)));
    ok(&a);
    let bf = "bundle.safetensors";
    let m = Model::open(&good.join(bf)).unwrap();
    let tau = m
        .tensors()
        .find(|v| v.name().starts_with("tau."))
        .unwrap()
        .name()
        .to_string();
    let base_t = format!("base.{}", &tau[4..]);
    let mask = m
        .tensors()
        .find(|v| v.name().starts_with("tall.mask.a."))
        .unwrap()
        .name()
        .to_string();
    drop(m);
    type Damage = Box<dyn Fn(&Path)>;
    let flip = |name: String| -> Damage {
        Box::new(move |p: &Path| {
            let at = data_offset(p, &name);
            patch_bytes(p, &|b| b[at + 1] ^= 0x10);
        })
    };
    let (t2, b2, m2) = (tau.clone(), base_t.clone(), tau.clone());
    let cases: Vec<(&str, Damage, String)> = vec![
        ("4-flip-tau", flip(tau.clone()), tau.clone()),
        ("4-flip-base", flip(base_t.clone()), base_t.clone()),
        ("4-flip-mask", flip(mask.clone()), mask.clone()),
        (
            "4-dtype-rewritten",
            Box::new(move |p: &Path| rewrite_dtype(p, &t2)),
            tau.clone(),
        ),
        (
            "4-tau-renamed-away",
            Box::new(move |p: &Path| {
                replace_in_header(p, &format!("\"{m2}\":{{"), &format!("\"x{}\":{{", &m2[1..]))
            }),
            tau.clone(),
        ),
        (
            "4-base-renamed-away",
            Box::new(move |p: &Path| {
                replace_in_header(p, &format!("\"{b2}\":{{"), &format!("\"X{}\":{{", &b2[1..]))
            }),
            base_t.clone(),
        ),
        (
            "4-checksums-removed",
            Box::new(|p: &Path| replace_in_header(p, "engram.crc32", "engram.crc99")),
            "no checksums".into(),
        ),
        (
            "4-checksum-edited",
            Box::new(move |p: &Path| {
                patch_bytes(p, &|b| {
                    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                    let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
                    let at = h.find("engram.crc32").unwrap();
                    let q = at + h[at..].find(":\\\"").unwrap() + 3;
                    b[8 + q] = if b[8 + q] == b'0' { b'1' } else { b'0' };
                });
            }),
            "checksum mismatch".into(),
        ),
    ];
    for (class, damage, want) in &cases {
        let bad = t.path().join(class);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(good.join(bf), bad.join(bf)).unwrap();
        damage(&bad.join(bf));
        let out = t.path().join(format!("{class}-out"));
        let e = fails(&["extract", s(&bad), "--task", "a", "-o", s(&out)]);
        assert!(e.contains(want.as_str()), "{class}: {e}");
        assert!(!out.exists(), "{class}");
    }
}

#[test]
fn class4_a_damaged_model_is_refused_by_every_command_reading_it() {
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let bad = t.path().join("bad");
    ok(&["convert", "-q", s(&fts[0]), "-o", s(&bad)]);
    let file = bad.join("model.safetensors");
    let name = "model.layers.1.mlp.up_proj.weight";
    let at = data_offset(&file, name);
    patch_bytes(&file, &|b| b[at + 7] ^= 0x01);
    let out = t.path().join("out");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("4-model-convert", vec!["convert", s(&bad), "-o", s(&out)]),
        (
            "4-model-merge",
            vec![
                "merge",
                "--method",
                "linear",
                s(&bad),
                s(&fts[1]),
                "-o",
                s(&out),
            ],
        ),
        (
            "4-model-tv-extract",
            vec![
                "tv",
                "extract",
                "--base",
                s(&base),
                "--model",
                s(&bad),
                "-o",
                s(&out),
            ],
        ),
        ("4-model-diff", vec!["diff", s(&bad), s(&fts[1])]),
        ("4-model-inspect-stats", vec!["inspect", "--stats", s(&bad)]),
        ("4-model-analyze", vec!["analyze", s(&bad)]),
    ];
    for (class, args) in &cases {
        let e = fails(args);
        assert!(
            e.contains(name) && e.contains("checksum mismatch"),
            "{class}: {e}"
        );
        assert!(!out.exists(), "{class}");
    }
}

#[test]
fn class6_and_7_side_files_and_special_files_are_refused_before_opening() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m");
    model(&m.join("model.safetensors"), 2, 8, 1.0);
    let out = t.path().join("out");
    let mk = |name: &str| -> PathBuf {
        let d = t.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(m.join("model.safetensors"), d.join("model.safetensors")).unwrap();
        d
    };
    let passwd = mk("passwd");
    std::os::unix::fs::symlink("/etc/passwd", passwd.join("tokenizer_config.json")).unwrap();
    let environ = mk("environ");
    std::os::unix::fs::symlink("/proc/self/environ", environ.join("config.json")).unwrap();
    let up = mk("up");
    std::fs::write(t.path().join("secret.txt"), "s").unwrap();
    std::os::unix::fs::symlink("../secret.txt", up.join("vocab.txt")).unwrap();
    let dangling = mk("dangling");
    std::os::unix::fs::symlink("nowhere", dangling.join("config.json")).unwrap();
    let dev = mk("dev");
    std::os::unix::fs::symlink("/dev/zero", dev.join("merges.txt")).unwrap();
    let fifo_dir = t.path().join("fifo-shard");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    mkfifo(&fifo_dir.join("model.safetensors"));
    let fifo_file = t.path().join("fifo.safetensors");
    mkfifo(&fifo_file);
    let fifo_index = t.path().join("fifo-index");
    std::fs::create_dir_all(&fifo_index).unwrap();
    mkfifo(&fifo_index.join("model.safetensors.index.json"));
    let sock_dir = mk("socket");
    let _sock = std::os::unix::net::UnixListener::bind(sock_dir.join("config.json")).unwrap();
    let fifo_results = t.path().join("runs");
    std::fs::create_dir_all(fifo_results.join("r1")).unwrap();
    mkfifo(&fifo_results.join("r1/results.json"));
    let rep = t.path().join("rep");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "6-side-symlink-etc-passwd",
            vec!["convert", s(&passwd), "-o", s(&out)],
            "outside the model folder",
        ),
        (
            "6-side-symlink-proc-environ",
            vec!["convert", s(&environ), "-o", s(&out)],
            "outside the model folder",
        ),
        (
            "6-side-symlink-parent",
            vec!["convert", s(&up), "-o", s(&out)],
            "outside the model folder",
        ),
        (
            "6-side-symlink-dangling",
            vec!["convert", s(&dangling), "-o", s(&out)],
            "outside the model folder",
        ),
        (
            "6-side-symlink-device",
            vec!["convert", s(&dev), "-o", s(&out)],
            "outside the model folder",
        ),
        ("7-fifo-model-file", vec!["inspect", s(&fifo_file)], "FIFO"),
        (
            "7-fifo-model-convert",
            vec!["convert", s(&fifo_file), "-o", s(&out)],
            "FIFO",
        ),
        (
            "7-fifo-single-in-folder",
            vec!["inspect", s(&fifo_dir)],
            "FIFO",
        ),
        ("7-fifo-index", vec!["inspect", s(&fifo_index)], "FIFO"),
        (
            "7-socket-side-file",
            vec!["convert", s(&sock_dir), "-o", s(&out)],
            "socket",
        ),
        ("7-device-as-model", vec!["inspect", "/dev/zero"], "device"),
        (
            "7-fifo-results",
            vec!["report", s(&fifo_results), "-o", s(&rep)],
            "FIFO",
        ),
    ];
    for (class, args, want) in &cases {
        let e = fails_fast(args);
        assert!(e.contains(want), "{class}: {e}");
        assert!(!out.exists(), "{class}: wrote output");
    }
}

#[test]
fn class11_holes_trailing_bytes_and_unlisted_shards_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let w = |name: &str, bytes: Vec<u8>| -> PathBuf {
        let p = t.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    };
    const A: &str = r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
    let hole = w(
        "hole.safetensors",
        st(
            &format!(r#"{{{A},"b":{{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}}}"#),
            12,
        ),
    );
    let front = w(
        "front.safetensors",
        st(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ),
    );
    let trailing = w("trailing.safetensors", st(&format!("{{{A}}}"), 4 + 100));
    let polyglot = {
        let mut b = st(&format!("{{{A}}}"), 4);
        b.extend_from_slice(b"PK\x03\x04 a zip archive appended");
        w("polyglot.safetensors", b)
    };
    let inner = w(
        "inner.safetensors",
        st(
            &format!(r#"{{{A},"e":{{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}}}"#),
            4,
        ),
    );
    // An index that does not name a shard file lying in its folder.
    let sharded = t.path().join("sharded");
    w(
        "sharded/model-00001-of-00002.safetensors",
        st(&format!("{{{A}}}"), 4),
    );
    w(
        "sharded/model-00002-of-00002.safetensors",
        st(
            r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
    );
    w(
        "sharded/model.safetensors.index.json",
        br#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#.to_vec(),
    );
    let cases: Vec<(&str, &Path, &str)> = vec![
        ("11-hole", &hole, "hole of 4"),
        ("11-hole-in-front", &front, "hole of 4"),
        ("11-trailing", &trailing, "100 trailing bytes"),
        ("11-polyglot", &polyglot, "trailing bytes"),
        ("11-empty-tensor-inside-another", &inner, "overlap"),
        (
            "11-unlisted-shard-file",
            &sharded,
            "model-00002-of-00002.safetensors",
        ),
    ];
    for (class, p, want) in &cases {
        for args in [
            vec!["inspect", s(p)],
            vec!["convert", s(p), "-o", s(&t.path().join("o"))],
        ] {
            let e = fails(&args);
            assert!(e.contains(want) && e.contains(s(p)), "{class}: {e}");
            assert!(!t.path().join("o").exists());
        }
    }
}

#[test]
fn class3_a_report_never_replaces_its_results() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("run.toml");
    std::fs::write(&cfg, RUN).unwrap();
    let runs = t.path().join("runs");
    ok(&["train", "-q", "-c", s(&cfg), "-o", s(&runs)]);
    let before = snapshot(&runs);
    let run = runs.join("t");
    // Onto the run's own results.json: refused.
    let e = fails(&["report", "-q", s(&run), "-o", s(&run)]);
    assert!(e.contains("an input of this run"), "3-report-onto-run: {e}");
    assert_eq!(snapshot(&runs), before, "3-report-onto-run");
    // Into the folder holding the runs: the runs' files stay as they were, and the report's
    // own results.json is not read back as a run.
    ok(&["report", "-q", s(&runs), "-o", s(&runs)]);
    let after = snapshot(&runs);
    assert!(
        before.iter().all(|f| after.contains(f)),
        "3-report-into-runs"
    );
    ok(&["report", "-q", s(&runs), "-o", s(&t.path().join("rep0"))]);
    // A report written inside the runs folder is not read back as a run by later reports.
    ok(&["report", "-q", s(&run), "-o", s(&runs.join("rep"))]);
    ok(&["report", "-q", s(&runs), "-o", s(&t.path().join("rep2"))]);
    // A results.json symlink leading out of the folder named.
    let outside = t.path().join("elsewhere");
    std::fs::create_dir_all(outside.join("r")).unwrap();
    std::fs::copy(run.join("results.json"), outside.join("r/results.json")).unwrap();
    let named = t.path().join("named/r");
    std::fs::create_dir_all(&named).unwrap();
    std::os::unix::fs::symlink(outside.join("r/results.json"), named.join("results.json")).unwrap();
    let e = fails(&[
        "report",
        "-q",
        s(&t.path().join("named")),
        "-o",
        s(&t.path().join("rep")),
    ]);
    assert!(e.contains("outside"), "6-results-symlink-out: {e}");
}

#[test]
fn class1_and_4_files_of_different_outputs_are_not_one_model() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (
        t.path().join("a.safetensors"),
        t.path().join("b.safetensors"),
    );
    model(&a, 6, 1000, 1.0);
    model(&b, 6, 1000, 2.0);
    let (sa, sb) = (t.path().join("sa"), t.path().join("sb"));
    ok(&["convert", "-q", s(&a), "-o", s(&sa), "--shard-size", "8KB"]);
    ok(&["convert", "-q", s(&b), "-o", s(&sb), "--shard-size", "8KB"]);
    // A shard of another output (same names, same layout, valid checksums of its own).
    let shard = "model-00002-of-00003.safetensors";
    std::fs::copy(sb.join(shard), sa.join(shard)).unwrap();
    for args in [
        vec!["inspect", s(&sa)],
        vec!["convert", s(&sa), "-o", s(&t.path().join("o"))],
    ] {
        let e = fails(&args);
        assert!(e.contains("different outputs"), "1-mixed-shard: {e}");
    }
    // A bundle with the masks file of another bundle.
    let (base, fts) = family(&t.path().join("f"), 2);
    let (b1, b2) = (t.path().join("b1"), t.path().join("b2"));
    ok(&compress_args(&base, &fts, &b1, "0.3,0.3"));
    ok(&compress_args(&base, &fts, &b2, "0.6,0.6"));
    std::fs::copy(b2.join("masks.safetensors"), b1.join("masks.safetensors")).unwrap();
    let e = fails(&[
        "extract",
        s(&b1),
        "--task",
        "a",
        "-o",
        s(&t.path().join("x")),
    ]);
    assert!(
        e.contains("not the masks file written with"),
        "1-foreign-masks: {e}"
    );
    // A folder holding a whole model and an index of shards: two models.
    std::fs::copy(&a, sb.join("model.safetensors")).unwrap();
    let e = fails(&["inspect", s(&sb)]);
    assert!(e.contains("holds both"), "11-single-and-index: {e}");
}

#[test]
fn class1_reruns_and_killed_runs_of_tall_leave_no_copies_and_no_mix() {
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let out = t.path().join("rec");
    let args = |tasks: &'static str| -> Vec<String> {
        let mut a: Vec<String> = [
            "tall",
            "-q",
            "--base",
            s(&base),
            "--tasks",
            tasks,
            "--reconstruct",
            s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(fts.iter().map(|p| s(p).to_string()));
        a
    };
    let run = |a: &[String]| ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..3 {
        run(&args("a,b"));
    }
    assert_eq!(strays(t.path(), &["f", "rec"]), Vec::<String>::new());
    // Killed at many moments, then rerun with other task names: the folder holds the old
    // tasks or the new ones, never a killed run's task beside them.
    for delay in [0u64, 10, 30, 60, 120] {
        let a = args("x,y");
        let mut c = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(&a)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = c.kill();
        let _ = c.wait();
    }
    run(&args("p,q"));
    let mut names = strays(&out, &[]);
    names.sort();
    assert!(
        names == ["a", "b", "p", "q"] || names == ["a", "b", "p", "q", "x", "y"],
        "{names:?}"
    );
    assert_eq!(strays(t.path(), &["f", "rec"]), Vec::<String>::new());
}

#[test]
fn class6_model_files_stay_inside_their_folder_and_hub_caches_open() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().join("real.safetensors");
    model(&real, 2, 8, 1.0);
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::os::unix::fs::symlink(&real, m.join("model.safetensors")).unwrap();
    let e = fails(&["inspect", s(&m)]);
    assert!(
        e.contains("outside the model folder"),
        "6-model-file-symlink-out: {e}"
    );
    // A bundle file symlinked out of its bundle folder.
    let (base, fts) = family(&t.path().join("f"), 2);
    let b = t.path().join("b");
    ok(&compress_args(&base, &fts, &b, "0.3,0.3"));
    let bl = t.path().join("bl");
    std::fs::create_dir(&bl).unwrap();
    std::os::unix::fs::symlink(b.join("bundle.safetensors"), bl.join("bundle.safetensors"))
        .unwrap();
    let e = fails(&[
        "extract",
        s(&bl),
        "--task",
        "a",
        "-o",
        s(&t.path().join("x")),
    ]);
    assert!(
        e.contains("outside the model folder"),
        "6-bundle-symlink-out: {e}"
    );
    // A Hugging Face hub cache: snapshot files are symlinks into the repository's blobs.
    let repo = t.path().join("models--org--name");
    let snap = repo.join("snapshots/abc123");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(&real, repo.join("blobs/1111")).unwrap();
    std::fs::write(repo.join("blobs/2222"), "{}").unwrap();
    std::os::unix::fs::symlink("../../blobs/1111", snap.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("../../blobs/2222", snap.join("config.json")).unwrap();
    ok(&["inspect", s(&snap)]);
    let out = t.path().join("from-cache");
    ok(&["convert", "-q", s(&snap), "-o", s(&out)]);
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        "{}"
    );
}

#[test]
fn class1_a_replaced_output_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.safetensors");
    model(&src, 2, 8, 1.0);
    let dir = t.path().join("private");
    ok(&["convert", "-q", s(&src), "-o", s(&dir)]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = t.path().join("private.safetensors");
    ok(&["convert", "-q", s(&src), "-o", s(&file)]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&["convert", "-q", s(&src), "-o", s(&dir)]);
    ok(&["convert", "-q", s(&src), "-o", s(&file)]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn class11_headers_start_with_a_brace_and_are_not_nul_padded() {
    let t = tempfile::tempdir().unwrap();
    const A: &str = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let cases = [
        (
            "11-leading-space",
            format!(" {A}"),
            "does not start with '{'",
        ),
        ("11-bom", format!("\u{feff}{A}"), "does not start with '{'"),
        ("11-nul-padding", format!("{A}\0\0\0"), "not valid JSON"),
    ];
    for (class, json, want) in cases {
        let p = t.path().join(format!("{class}.safetensors"));
        std::fs::write(&p, st(&json, 4)).unwrap();
        let e = fails(&["inspect", s(&p)]);
        assert!(e.contains(want), "{class}: {e}");
    }
    // Space padding (what writers add) stays valid.
    let p = t.path().join("padded.safetensors");
    std::fs::write(&p, st(&format!("{A}   "), 4)).unwrap();
    ok(&["inspect", s(&p)]);
}

#[test]
fn class1_replacing_an_output_keeps_user_files_but_not_the_old_models_files() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (base, fts) = family(&t.path().join("f"), 2);
    let rec = t.path().join("rec");
    let tall = |lambda: &str| {
        let mut a = vec![
            "tall",
            "-q",
            "--base",
            s(&base),
            "--lambda",
            lambda,
            "--reconstruct",
            s(&rec),
        ];
        a.extend(fts.iter().map(|p| s(p)));
        ok(&a);
    };
    tall("0.6");
    // User files inside a task folder that the next run rewrites survive it, with their modes.
    std::fs::write(rec.join("ft-1/eval.txt"), "notes").unwrap();
    std::fs::create_dir(rec.join("ft-1/lora")).unwrap();
    std::fs::write(rec.join("ft-1/lora/a"), "w").unwrap();
    let weights = rec.join("ft-1/model.safetensors");
    std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o600)).unwrap();
    tall("0.3");
    assert_eq!(
        std::fs::read_to_string(rec.join("ft-1/eval.txt")).unwrap(),
        "notes"
    );
    assert_eq!(
        std::fs::read_to_string(rec.join("ft-1/lora/a")).unwrap(),
        "w"
    );
    let mode = std::fs::metadata(&weights).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "1-file-mode-inside-folder");
    // A model without side files replacing one with them: the old config does not stay to
    // describe other weights; the user's notes do.
    let out = t.path().join("cv");
    ok(&["convert", "-q", s(&fts[0]), "-o", s(&out)]);
    assert!(out.join("config.json").is_file());
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let bare = t.path().join("bare.safetensors");
    model(&bare, 2, 8, 1.0);
    ok(&["convert", "-q", s(&bare), "-o", s(&out)]);
    assert!(!out.join("config.json").exists(), "1-old-side-file-mix");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn class7_an_output_file_that_is_a_special_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.safetensors");
    model(&src, 2, 8, 1.0);
    let fifo = t.path().join("fifo.safetensors");
    mkfifo(&fifo);
    let dev = t.path().join("dev.safetensors");
    std::os::unix::fs::symlink("/dev/null", &dev).unwrap();
    for (class, out) in [
        ("7-output-fifo", &fifo),
        ("7-output-symlink-to-device", &dev),
    ] {
        let e = fails_fast(&["convert", s(&src), "-o", s(out)]);
        assert!(e.contains("replaces only regular files"), "{class}: {e}");
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn class1_the_users_readme_and_config_beside_an_output_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    model(&src.join("model.safetensors"), 2, 8, 1.0);
    std::fs::write(src.join("README.md"), "base card").unwrap();
    // A repository folder with the user's own card and the merge config kept inside it.
    let repo = t.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "my card").unwrap();
    let a = t.path().join("a.safetensors");
    let b = t.path().join("b.safetensors");
    model(&a, 2, 8, 1.0);
    model(&b, 2, 8, 3.0);
    std::fs::write(
        repo.join("merge.yml"),
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n  - model: {}\n",
            s(&a),
            s(&b)
        ),
    )
    .unwrap();
    ok(&["convert", "-q", s(&src), "-o", s(&repo)]);
    assert_eq!(
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
        "my card"
    );
    ok(&["merge", "-q", s(&repo.join("merge.yml")), "-o", s(&repo)]);
    assert!(repo.join("merge.yml").is_file());
    // Negative values are values, not flags.
    let neg = t.path().join("neg");
    ok(&[
        "merge",
        "-q",
        "--method",
        "linear",
        "--weights",
        "-1,2",
        s(&a),
        s(&b),
        "-o",
        s(&neg),
    ]);
}
