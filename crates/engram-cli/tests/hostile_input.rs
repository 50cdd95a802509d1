//! A corpus of hostile but well-formed inputs, generated here: out-of-range and non-finite
//! numbers in every weight command (flags and YAML), sizes that would allocate or spawn
//! without bound, user strings that become paths, tensor names and metadata that attack the
//! terminal or the table layout, and patches applied to the wrong model. Each case names its
//! class of the reliability issue ("1-commit", "2-failure", "6-paths", "8-validation",
//! "9-sizes", "11-printing", "12-patches"); a failing case must exit with its status (1, or clap's 2 for a bad global
//! flag; never a panic's 101), name the parameter or tensor on stderr, and write no output.

use std::path::{Path, PathBuf};

mod common;
use common::{engram, s};

struct Case {
    class: &'static str,
    args: Vec<String>,
    /// Exit status wanted: 0, 1, or 2 (clap's usage error).
    code: i32,
    /// Substrings stderr (failures) or stdout (successes) must hold.
    expect: Vec<String>,
    /// A path that must not exist afterwards (the output of a refused run).
    absent: Option<PathBuf>,
    /// An environment variable set for the run.
    env: Option<(&'static str, &'static str)>,
}

fn case(class: &'static str, args: &[&str], code: i32, expect: &[&str]) -> Case {
    Case {
        class,
        args: args.iter().map(|a| a.to_string()).collect(),
        code,
        expect: expect.iter().map(|e| e.to_string()).collect(),
        absent: None,
        env: None,
    }
}

impl Case {
    fn absent(mut self, p: &Path) -> Case {
        self.absent = Some(p.to_path_buf());
        self
    }

    fn env(mut self, k: &'static str, v: &'static str) -> Case {
        self.env = Some((k, v));
        self
    }
}

/// A tensor of a hand-built file: name, dtype, shape.
type Tensor<'a> = (&'a str, &'a str, &'a [usize]);

/// A safetensors file of `tensors`, values from `seed`, with metadata.
fn st(path: &Path, tensors: &[Tensor], seed: u32, md: &[(&str, &str)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for k in 0..n {
            let v = ((k as u32 * 7 + i as u32 * 13 + seed * 31) % 17) as f32 / 8.0 - 1.0;
            match *dtype {
                "F32" => data.extend_from_slice(&v.to_le_bytes()),
                "I32" => data.extend_from_slice(&(k as i32).to_le_bytes()),
                "U8" => data.push((k % 4) as u8),
                d => panic!("dtype {d}"),
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    if !md.is_empty() {
        let m: serde_json::Map<_, _> = md
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

const SHAPES: &[Tensor] = &[
    ("model.layers.0.w", "F32", &[4, 4]),
    ("model.layers.1.w", "F32", &[4, 4]),
    ("model.norm.weight", "F32", &[4]),
];

/// base, ft-1, ft-2 and an unrelated model of the same shapes, as single files.
fn family(d: &Path) -> [PathBuf; 4] {
    ["base", "ft-1", "ft-2", "other"].map(|n| {
        let p = d.join(format!("{n}.safetensors"));
        let seed = match n {
            "base" => 0,
            "ft-1" => 1,
            "ft-2" => 2,
            _ => 9,
        };
        st(&p, SHAPES, seed, &[]);
        p
    })
}

fn p(d: &Path, name: &str) -> String {
    s(&d.join(name)).to_string()
}

/// Class 8: every numeric merge parameter, in flag and YAML form; other commands' numbers.
fn validation(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let [base, ft1, ft2, _] = f.each_ref().map(|x| s(x).to_string());
    let out = d.join("merged");
    let mut v = Vec::new();
    // (method, flags, the parameter stderr names)
    let flags: &[(&str, &[&str], &str)] = &[
        ("task_arithmetic", &["--lambda", "nan"], "'lambda'"),
        ("task_arithmetic", &["--lambda", "inf"], "'lambda'"),
        ("task_arithmetic", &["--lambda=-inf"], "'lambda'"),
        ("task_arithmetic", &["--weights", "inf,1"], "'weight'"),
        ("task_arithmetic", &["--weights", "1,nan"], "'weight'"),
        ("slerp", &["--t", "nan"], "'t'"),
        ("slerp", &["--t", "inf"], "'t'"),
        ("ties", &["--density", "5"], "'density'"),
        ("ties", &["--density=-0.1"], "'density'"),
        ("ties", &["--density", "nan"], "'density'"),
        ("ties", &["--param", "normalize=2"], "'normalize'"),
        ("ties", &["--param", "rescale=nan"], "'rescale'"),
        ("ties", &["--param", "int8_mask=0.5"], "'int8_mask'"),
        ("ties", &["--param", "epsilon=0.1"], "'epsilon'"),
        ("dare_linear", &["--density", "1.5"], "'density'"),
        ("della", &["--param", "epsilon=nan"], "'epsilon'"),
        ("della", &["--param", "epsilon=2"], "'epsilon'"),
        (
            "della",
            &["--density", "0.5", "--param", "epsilon=0.6"],
            "epsilon 0.6",
        ),
        (
            "della_linear",
            &["--density", "0.9", "--param", "epsilon=0.2"],
            "epsilon 0.2",
        ),
        ("breadcrumbs", &["--param", "gamma=1.5"], "'gamma'"),
        (
            "breadcrumbs",
            &["--density", "0.9", "--param", "gamma=0.2"],
            "gamma 0.2",
        ),
        (
            "breadcrumbs_ties",
            &["--density", "0.995"],
            "gamma 0.01 + density 0.995",
        ),
        (
            "model_stock",
            &["--param", "filter_wise=inf"],
            "'filter_wise'",
        ),
        ("linear", &["--param", "normalize=-1"], "'normalize'"),
    ];
    for (method, extra, want) in flags {
        let models: &[&str] = if *method == "slerp" {
            &[&ft1]
        } else {
            &[&ft1, &ft2]
        };
        // linear takes no base.
        let mut args = vec!["merge", "--method", method];
        if *method != "linear" {
            args.extend(["--base", &base]);
        }
        args.extend_from_slice(models);
        args.extend_from_slice(extra);
        args.extend(["-o", s(&out)]);
        v.push(case("8-validation", &args, 1, &[want]).absent(&out));
    }
    // The same values in YAML: (method, global parameters, per-model parameters of ft-1).
    let yaml: &[(&str, &str, &str, &str)] = &[
        ("task_arithmetic", "lambda: .nan", "", "'lambda'"),
        ("task_arithmetic", "lambda: .inf", "", "'lambda'"),
        ("task_arithmetic", "", "weight: .inf", "'weight' of model"),
        (
            "task_arithmetic",
            "",
            "weight: [0.5, .nan]",
            "'weight' of model",
        ),
        (
            "task_arithmetic",
            "",
            "weight: [{filter: layers, value: .nan}, {value: 1}]",
            "'weight' of model",
        ),
        ("ties", "density: 5", "", "'density'"),
        ("ties", "density: -0.5", "", "'density'"),
        ("ties", "", "density: [0.5, 7]", "'density' of model"),
        ("ties", "normalize: 3", "", "'normalize'"),
        ("ties", "", "lambda: 0.5", "'lambda' of model"),
        ("della", "density: 0.5\n  epsilon: 0.6", "", "epsilon 0.6"),
        (
            "della",
            "",
            "density: 0.3\n      epsilon: 0.4",
            "epsilon 0.4",
        ),
        ("breadcrumbs", "density: 0.9\n  gamma: 0.2", "", "gamma 0.2"),
        ("breadcrumbs", "", "gamma: 1.01", "'gamma' of model"),
    ];
    for (i, (method, global, own, want)) in yaml.iter().enumerate() {
        let cfg = d.join(format!("cfg-{i}.yml"));
        let global = if global.is_empty() {
            String::new()
        } else {
            format!("parameters:\n  {global}\n")
        };
        let own = if own.is_empty() {
            String::new()
        } else {
            format!("    parameters:\n      {own}\n")
        };
        std::fs::write(
            &cfg,
            format!(
                "merge_method: {method}\nbase_model: {base}\nmodels:\n  - model: {ft1}\n{own}  - model: {ft2}\n{global}"
            ),
        )
        .unwrap();
        v.push(
            case(
                "8-validation",
                &["merge", s(&cfg), "-o", s(&out)],
                1,
                &[want],
            )
            .absent(&out),
        );
    }
    // Other weight commands that take numbers.
    let tall = ["--base", &base, &ft1, &ft2];
    let other: &[(&[&str], &str)] = &[
        (&["tall", "--lambda", "nan"], "lambda"),
        (&["tall", "--lambda", "inf"], "lambda"),
        (&["tall", "--lambdas", "0.5,nan"], "lambda"),
        (&["tall", "--tau", "ties", "--density", "5"], "density"),
        (&["tall", "--tau", "ties", "--density", "0"], "density"),
        (&["tall", "--tau", "ties", "--density", "nan"], "density"),
        (
            &["consensus", "--alpha", "nan", "-o", &p(d, "c")],
            "--alpha",
        ),
        (
            &["consensus", "--alpha", "inf", "-o", &p(d, "c")],
            "--alpha",
        ),
        (&["consensus", "-k", "3", "-o", &p(d, "c")], "-k 3"),
        (
            &["consensus", "--lambda", "nan", "-o", &p(d, "c")],
            "lambda",
        ),
        (&["compress", "--lambda", "nan", "-o", &p(d, "c")], "lambda"),
    ];
    for (args, want) in other {
        let mut a = args.to_vec();
        a.extend_from_slice(&tall);
        v.push(case("8-validation", &a, 1, &[want]).absent(&d.join("c")));
    }
    let tv = p(d, "tv");
    for scale in ["nan", "inf", "-inf"] {
        let o = d.join("applied");
        let spec = format!("{}:{scale}", ft1);
        let cases: [&[&str]; 3] = [
            &["tv", "apply", "--base", &base, &ft1, "--force", "-o", s(&o)],
            &["tv", "apply", "--base", &base, &spec, "-o", s(&o)],
            &["tv", "scale", &tv, "-o", s(&o)],
        ];
        for (k, args) in cases.iter().enumerate() {
            let mut a = args.to_vec();
            let flag = format!("--scale={scale}");
            let by = format!("--by={scale}");
            match k {
                0 => a.push(&flag),
                2 => a.push(&by),
                _ => {}
            }
            let want = if k == 1 { "finite" } else { "scale" };
            v.push(case("8-validation", &a, 1, &[want]).absent(&o));
        }
    }
    for bad in ["nan", "inf"] {
        let o = d.join("s");
        v.push(
            case(
                "8-validation",
                &["synth", "-q", "-o", s(&o), &format!("--delta-scale={bad}")],
                1,
                &["delta scale"],
            )
            .absent(&o),
        );
    }
    v
}

/// Class 9: sizes and counts checked before anything is allocated or started.
fn sizes(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let base = s(&f[0]);
    let mut v = Vec::new();
    for n in ["0", "1025", "100000", "99999999999999999999"] {
        v.push(case(
            "9-sizes",
            &["--threads", n, "inspect", base],
            2,
            &["--threads"],
        ));
    }
    let o = d.join("s");
    for (args, want) in [
        (vec!["--params", "1e30"], "1e30"),
        (vec!["--params", "5000B"], "at most"),
        (vec!["-n", "100000"], "fine-tunes"),
    ] {
        let mut a = vec!["synth", "-q", "-o", s(&o)];
        a.extend(args);
        v.push(case("9-sizes", &a, 1, &[want]).absent(&o));
    }
    let c = d.join("conv");
    for size in [
        "0", "0.1", "0.5", "0.1B", "1.0005k", "-5", "nan", "inf", "1e30",
    ] {
        let arg = format!("--shard-size={size}");
        v.push(case("9-sizes", &["convert", base, "-o", s(&c), &arg], 1, &[size]).absent(&c));
        let args = [
            "merge",
            "--method",
            "linear",
            s(&f[1]),
            s(&f[2]),
            &arg,
            "-o",
            s(&c),
        ];
        v.push(case("9-sizes", &args, 1, &[size]).absent(&c));
    }
    // A huge count that is only a bound must not overflow.
    v.push(case(
        "9-sizes",
        &["inspect", base, "--head", &u64::MAX.to_string()],
        0,
        &["model.norm.weight"],
    ));
    v
}

/// Class 6: task names become folder names (`tall --reconstruct`) and bundle tensor names.
fn paths(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let r = d.join("deep/er/rec");
    let long = "x".repeat(201);
    let mut v = Vec::new();
    let names: &[(&str, &str)] = &[
        ("../../escaped", "separator"),
        ("..", "plain name"),
        (".", "plain name"),
        ("a/b", "separator"),
        ("/tmp/abs", "separator"),
        ("a\\b", "separator"),
        ("", "empty"),
        (&long, "200 bytes"),
        ("a\u{1}b", "control"),
        ("a\u{1b}[2Jb", "control"),
        ("same", "twice"),
    ];
    for (bad, want) in names {
        let tasks = format!("{bad},same");
        for cmd in ["tall", "consensus", "compress"] {
            let mut a = vec![cmd, "--base", s(&f[0]), s(&f[1]), s(&f[2])];
            let t = format!("--tasks={tasks}");
            a.push(&t);
            match cmd {
                "tall" => a.extend(["--reconstruct", s(&r)]),
                _ => a.extend(["-o", s(&r)]),
            }
            v.push(case("6-paths", &a, 1, &["task name", want]).absent(&r));
        }
    }
    v
}

/// Class 11: tensor names of any length and with control characters, metadata likewise.
fn printing(d: &Path) -> Vec<Case> {
    let mut v = Vec::new();
    for len in [65_535, 65_536, 70_000] {
        let name = "n".repeat(len);
        let (a, b) = (
            d.join(format!("long{len}a.st")),
            d.join(format!("long{len}b.st")),
        );
        let t: &[Tensor] = &[(&name, "F32", &[3, 3]), ("b", "F32", &[2])];
        let (a, b) = (
            a.with_extension("safetensors"),
            b.with_extension("safetensors"),
        );
        st(&a, t, 0, &[]);
        st(&b, t, 1, &[]);
        let head = &name[..100];
        v.push(case("11-printing", &["inspect", s(&a)], 0, &[head]));
        v.push(case("11-printing", &["analyze", s(&a)], 0, &[head]));
        v.push(case("11-printing", &["diff", s(&a), s(&b)], 0, &[head]));
        v.push(case(
            "11-printing",
            &["diff", s(&a), s(&b), "--all"],
            0,
            &[head],
        ));
    }
    let evil = [
        ("esc", "w\u{1b}[31mred", "\\u{1b}"),
        ("bel", "w\u{7}", "\\u{7}"),
        ("cr", "w\rfake", "\\u{d}"),
        ("nl", "w\nfake", "\\u{a}"),
        ("csi", "w\u{9b}2J", "\\u{9b}"),
        ("bidi", "w\u{202e}txt", "\\u{202e}"),
        ("del", "w\u{7f}", "\\u{7f}"),
    ];
    for (tag, name, want) in evil {
        let (a, b) = (
            d.join(format!("{tag}-a.safetensors")),
            d.join(format!("{tag}-b.safetensors")),
        );
        let t: &[Tensor] = &[(name, "F32", &[3, 3])];
        st(&a, t, 0, &[(name, name)]);
        st(&b, t, 1, &[]);
        v.push(case("11-printing", &["inspect", s(&a)], 0, &[want]));
        v.push(case("11-printing", &["inspect", s(&a), "--json"], 0, &[]));
        v.push(case("11-printing", &["analyze", s(&a)], 0, &[want]));
        v.push(case(
            "11-printing",
            &["diff", s(&a), s(&b), "--all"],
            0,
            &[want],
        ));
        // Errors quote the name: escaped too (but for line breaks: some messages are lists
        // of lines, and the checkpoint layer's messages quote names as they are).
        if tag == "nl" {
            continue;
        }
        let (o, plain) = (d.join("o"), f_other(d));
        let args = ["merge", "--method", "linear", s(&a), s(&plain), "-o", s(&o)];
        v.push(case("11-printing", &args, 1, &[want]).absent(&o));
    }
    v
}

/// A model without the evil names, for merges that must fail naming one.
fn f_other(d: &Path) -> PathBuf {
    let p = d.join("plain.safetensors");
    if !p.exists() {
        st(&p, &[("x", "F32", &[3, 3])], 0, &[]);
    }
    p
}

/// Class 12: patches and task vectors check what they are applied to.
fn patches(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let [base, ft1, ft2, other] = f.each_ref().map(|x| s(x).to_string());
    let patch = p(d, "p.safetensors");
    let tv = p(d, "tv");
    let o = d.join("patched");
    let mut v = vec![
        case(
            "12-patches",
            &["patch", "apply", &other, "--patch", &patch, "-o", s(&o)],
            1,
            &["another base"],
        )
        .absent(&o),
        case(
            "12-patches",
            &["patch", "remove", &other, "--patch", &patch, "-o", s(&o)],
            1,
            &["another base"],
        )
        .absent(&o),
        case(
            "12-patches",
            &["patch", "apply", &ft2, "--patch", &patch, "-o", s(&o)],
            1,
            &["another base"],
        )
        .absent(&o),
        case(
            "12-patches",
            &["tv", "apply", "--base", &other, &tv, "-o", s(&o)],
            1,
            &["another base"],
        )
        .absent(&o),
        // What the patch was taken against, and --force, are accepted.
        case(
            "12-patches",
            &[
                "patch",
                "apply",
                &ft1,
                "--patch",
                &patch,
                "-o",
                &p(d, "ok1"),
            ],
            0,
            &[],
        ),
        case(
            "12-patches",
            &[
                "patch",
                "apply",
                &base,
                "--patch",
                &patch,
                "-o",
                &p(d, "ok2"),
            ],
            0,
            &[],
        ),
        case(
            "12-patches",
            &[
                "patch",
                "apply",
                &other,
                "--patch",
                &patch,
                "--force",
                "-o",
                &p(d, "ok3"),
            ],
            0,
            &[],
        ),
    ];
    // Hand-built patches (no fingerprint, so only the tensor checks apply).
    let rws = [("engram.patch", "rws"), ("patch.levels", "none")];
    let q4 = [("engram.patch", "rws"), ("patch.levels", "4")];
    type Bad<'a> = (&'a str, &'a [Tensor<'a>], &'a [(&'a str, &'a str)], &'a str);
    let bad: &[Bad] = &[
        (
            "missing",
            &[("model.layers.9.w", "F32", &[4, 4])],
            &rws,
            "not in the model",
        ),
        (
            "shape",
            &[("model.layers.0.w", "F32", &[2, 8])],
            &rws,
            "shape",
        ),
        (
            "dtype",
            &[("model.layers.0.w", "I32", &[4, 4])],
            &rws,
            "dtype",
        ),
        (
            "range",
            &[("model.norm.weight.__range", "F32", &[2])],
            &rws,
            "range",
        ),
        (
            "codes",
            &[
                ("model.norm.weight", "F32", &[4]),
                ("model.norm.weight.__range", "F32", &[2]),
            ],
            &q4,
            "dtype",
        ),
        (
            "norange",
            &[("model.norm.weight", "U8", &[4])],
            &q4,
            "model.norm.weight.__range",
        ),
        (
            "orphan",
            &[("model.norm.weight.__range", "F32", &[2])],
            &q4,
            "without its codes",
        ),
        (
            "rshape",
            &[
                ("model.norm.weight", "U8", &[4]),
                ("model.norm.weight.__range", "F32", &[3]),
            ],
            &q4,
            "shape",
        ),
    ];
    for (tag, tensors, md, want) in bad {
        let pf = d.join(format!("bad-{tag}.safetensors"));
        st(&pf, tensors, 3, md);
        let name = tensors[0].0.trim_end_matches(".__range");
        v.push(
            case(
                "12-patches",
                &["patch", "apply", &ft1, "--patch", s(&pf), "-o", s(&o)],
                1,
                &[name, want],
            )
            .absent(&o),
        );
    }
    // A patch onto an integer tensor of the model.
    let int_model = d.join("int.safetensors");
    st(&int_model, &[("model.norm.weight", "I32", &[4])], 0, &[]);
    let pf = d.join("bad-int.safetensors");
    st(&pf, &[("model.norm.weight", "F32", &[4])], 3, &rws);
    v.push(
        case(
            "12-patches",
            &[
                "patch",
                "apply",
                s(&int_model),
                "--patch",
                s(&pf),
                "-o",
                s(&o),
            ],
            1,
            &["model.norm.weight", "not a float"],
        )
        .absent(&o),
    );
    v
}

/// A mergekit config of task_arithmetic over ft-1 and ft-2, with `extra` lines at the end.
fn config(d: &Path, f: &[PathBuf; 4], name: &str, extra: &str) -> String {
    let cfg = d.join(name);
    let [base, ft1, ft2, _] = f.each_ref().map(|x| s(x).to_string());
    std::fs::write(
        &cfg,
        format!("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {ft1}\n  - model: {ft2}\n{extra}"),
    )
    .unwrap();
    s(&cfg).to_string()
}

/// Class 8: the config form of `merge` refuses the quick form's flags (they would be
/// ignored), takes --out-dtype and --seed once, and reads the config as a checked input.
fn config_form(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let out = d.join("merged");
    let cfg = config(d, f, "form.yml", "");
    let dare = |name: &str, extra: &str| {
        let c = config(d, f, name, extra);
        let text = std::fs::read_to_string(&c).unwrap();
        std::fs::write(&c, text.replace("task_arithmetic", "dare_linear")).unwrap();
        c
    };
    let seeded = dare("seeded.yml", "seed: 4\nout_dtype: float32\n");
    let dare_cfg = dare("dare.yml", "");
    let base = s(&f[0]);
    let mut v = Vec::new();
    let flags: &[&[&str]] = &[
        &["--lambda", "nan"],
        &["--lambda", "0.5"],
        &["--density", "7"],
        &["--weights", "3,3"],
        &["--t", "0.5"],
        &["--param", "lambda=9"],
        &["--trim-scope", "model"],
        &["--base", base],
    ];
    for extra in flags {
        let mut a = vec!["merge", &cfg];
        a.extend_from_slice(extra);
        a.extend(["-o", s(&out)]);
        v.push(case("8-validation", &a, 1, &[extra[0], "quick form"]).absent(&out));
    }
    for (flag, val) in [("--seed", "3"), ("--out-dtype", "f16")] {
        let a = ["merge", &seeded, flag, val, "-o", s(&out)];
        v.push(case("8-validation", &a, 1, &[flag, "give it once"]).absent(&out));
    }
    let a = ["merge", &cfg, "--out-dtype", "i8", "-o", s(&out)];
    v.push(case("8-validation", &a, 1, &["not a float type"]).absent(&out));
    for special in ["/dev/zero", "/dev/null"] {
        let a = ["merge", special, "-o", s(&out)];
        v.push(case("8-validation", &a, 1, &[special]).absent(&out));
    }
    // Where the config does not set them, --out-dtype and --seed take effect.
    let a = [
        "merge",
        &dare_cfg,
        "--seed",
        "3",
        "--out-dtype",
        "f16",
        "-o",
        &p(d, "cfg-ok"),
    ];
    v.push(case("8-validation", &a, 0, &["merged"]));
    v.push(case(
        "8-validation",
        &["inspect", &p(d, "cfg-ok")],
        0,
        &["F16"],
    ));
    v
}

/// Class 8: booleans where numbers belong, filter entries no tensor reaches, normalizing by
/// a zero sum of weights, overflow from finite inputs, and options of another mode.
fn loose_values(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let [base, ft1, ft2, _] = f.each_ref().map(|x| s(x).to_string());
    let out = d.join("merged");
    let mut v = Vec::new();
    let yaml: &[(&str, &str)] = &[
        ("parameters:\n  lambda: true\n", "boolean"),
        ("parameters:\n  lambda: false\n", "boolean"),
        ("parameters:\n  normalize: [0, 1]\n", "not a gradient"),
        (
            "parameters:\n  lambda: [{filter: layers, value: true}, {value: 1}]\n",
            "boolean",
        ),
        (
            "parameters:\n  lambda: [{value: 1}, {filter: layers, value: 2}]\n",
            "can never apply",
        ),
        (
            "parameters:\n  lambda: [{filter: layers, value: 1}, {filter: layers.0, value: 2}]\n",
            "can never apply",
        ),
        (
            "parameters:\n  lambda: [{filter: norm, value: 1}, {filter: norm, value: 2}, {value: 3}]\n",
            "can never apply",
        ),
        (
            "parameters:\n  normalize: true\n  lambda: 1e39\n",
            "not finite",
        ),
    ];
    for (i, (extra, want)) in yaml.iter().enumerate() {
        let cfg = config(d, f, &format!("loose-{i}.yml"), extra);
        v.push(case("8-validation", &["merge", &cfg, "-o", s(&out)], 1, &[want]).absent(&out));
    }
    // A model's own weight as a boolean (YAML and flags).
    let cfg = d.join("weight-bool.yml");
    std::fs::write(
        &cfg,
        format!("merge_method: linear\nmodels:\n  - model: {ft1}\n    parameters:\n      weight: false\n  - model: {ft2}\n"),
    )
    .unwrap();
    v.push(
        case(
            "8-validation",
            &["merge", s(&cfg), "-o", s(&out)],
            1,
            &["'weight' of model", "boolean"],
        )
        .absent(&out),
    );
    // (method, flags, what stderr names)
    let flags: &[(&str, &[&str], &str)] = &[
        ("task_arithmetic", &["--param", "lambda=true"], "boolean"),
        ("ties", &["--param", "density=false"], "boolean"),
        ("slerp", &["--param", "t=true"], "boolean"),
        (
            "task_arithmetic",
            &["--param", "normalize=1", "--weights", "1,-1"],
            "sum to 0",
        ),
        (
            "task_arithmetic",
            &["--param", "normalize=true", "--weights", "0,0"],
            "sum to 0",
        ),
        ("linear", &["--weights", "2,-2"], "sum to 0"),
        (
            "dare_linear",
            &["--param", "normalize=1", "--weights", "1,-1"],
            "sum to 0",
        ),
        (
            "breadcrumbs",
            &["--param", "normalize=1", "--weights=-3,3"],
            "sum to 0",
        ),
        (
            "della_linear",
            &["--param", "normalize=1", "--weights", "0.5,-0.5"],
            "sum to 0",
        ),
        ("task_arithmetic", &["--lambda", "1e300"], "not finite"),
        (
            "task_arithmetic",
            &["--lambda", "1e38", "--weights", "3,3"],
            "not finite",
        ),
        (
            "task_arithmetic",
            &["--lambda", "1e6", "--out-dtype", "f16"],
            "F16",
        ),
        (
            "linear",
            &["--weights", "3e38,3e38", "--param", "normalize=0"],
            "not finite",
        ),
    ];
    for (method, extra, want) in flags {
        let models: &[&str] = if *method == "slerp" {
            &[&ft1]
        } else {
            &[&ft1, &ft2]
        };
        // linear takes no base.
        let mut args = vec!["merge", "--method", method];
        if *method != "linear" {
            args.extend(["--base", &base]);
        }
        args.extend_from_slice(models);
        args.extend_from_slice(extra);
        args.extend(["-o", s(&out)]);
        v.push(case("8-validation", &args, 1, &[want]).absent(&out));
    }
    // Task-vector arithmetic overflows likewise.
    let (tv, o) = (p(d, "tv"), d.join("applied"));
    let args = [
        "tv",
        "apply",
        "--base",
        &base,
        &tv,
        "--scale",
        "3e38",
        "-o",
        s(&o),
    ];
    v.push(case("8-validation", &args, 1, &["not finite"]).absent(&o));
    // --density belongs to --tau ties.
    let c = d.join("c");
    for (cmd, tau) in [
        ("tall", "sum"),
        ("consensus", "sum"),
        ("compress", "ta"),
        ("tall", "ta"),
    ] {
        let mut a = vec![
            cmd,
            "--base",
            &base,
            &ft1,
            &ft2,
            "--tau",
            tau,
            "--density",
            "0.3",
        ];
        if cmd != "tall" {
            a.extend(["-o", s(&c)]);
        }
        v.push(case("8-validation", &a, 1, &["--density", "--tau ties"]).absent(&c));
    }
    // A study's options and data are checked before its folder is touched.
    let m8 = d.join("m8");
    let none = p(d, "no-data");
    for (flag, val, want) in [
        ("--finetune-lr", "nan", "lr"),
        ("--finetune-lr", "0", "lr"),
        ("--finetune-lr", "-1", "lr"),
        ("--finetune-lr", "1e309", "lr"),
        ("--finetune-steps", "0", "iterations"),
        ("--finetune-steps", "1000000000000000", "iterations"),
        ("--hidden", "0", "--hidden"),
        ("--seed", "1", "no-data"),
    ] {
        let a = [
            "study",
            "merge8",
            "--quick",
            "-o",
            s(&m8),
            "--data-dir",
            &none,
            flag,
            val,
        ];
        let a: Vec<&str> = if flag == "--finetune-lr" && val == "-1" {
            let mut a = a[..7].to_vec();
            a.push("--finetune-lr=-1");
            a
        } else {
            a.to_vec()
        };
        v.push(case("8-validation", &a, 1, &[want]).absent(&m8));
    }
    v
}

/// Class 12: no tensor is skipped: a tensor one input has and another lacks is an error
/// naming it in task vectors, patches, merges and the TALL family; task-vector commands take
/// task vectors only; a patch's checksums are verified.
fn completeness(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let [base, ft1, ft2, _] = f.each_ref().map(|x| s(x).to_string());
    let tvmark = [("engram.task_vector", "1")];
    let mut with_ghost = SHAPES.to_vec();
    with_ghost.push(("ghost.weight", "F32", &[2]));
    let less = &SHAPES[..2];
    let mk = |name: &str, t: &[Tensor], md: &[(&str, &str)]| {
        let f = d.join(name);
        st(&f, t, 5, md);
        s(&f).to_string()
    };
    let (extra, base_less) = (
        mk("extra.safetensors", &with_ghost, &[]),
        mk("base-less.safetensors", less, &[]),
    );
    let tv_ghost = mk("tv-ghost.safetensors", &with_ghost, &tvmark);
    let tv_less = mk("tv-less.safetensors", less, &tvmark);
    let unmarked = mk("tv-unmarked.safetensors", SHAPES, &[]);
    let (tv, patch, o) = (p(d, "tv"), p(d, "p.safetensors"), d.join("o12"));
    let o_ = s(&o);
    const GHOST: &str = "ghost.weight";
    const NORM: &str = "model.norm.weight";
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["tv", "apply", "--base", &base, &tv_ghost, "--force"],
            &[GHOST, "not in"],
        ),
        (
            vec!["tv", "apply", "--base", &base_less, &tv, "--force"],
            &[NORM, "not in"],
        ),
        (
            vec!["tv", "apply", "--base", &base, &tv_less, "--force"],
            &[NORM, "missing"],
        ),
        (vec!["tv", "add", &tv, &tv_less], &[NORM, "missing"]),
        (vec!["tv", "add", &tv_less, &tv], &[NORM, "not in"]),
        (vec!["tv", "add", &tv, &tv_ghost], &[GHOST, "not in"]),
        (
            vec!["tv", "extract", "--base", &base_less, "--model", &ft1],
            &[NORM, "missing"],
        ),
        (
            vec!["tv", "extract", "--base", &base, "--model", &extra],
            &[GHOST, "missing"],
        ),
        (
            vec!["tv", "extract", "--base", &extra, "--model", &ft1],
            &[GHOST, "not in"],
        ),
        (
            vec!["tv", "apply", "--base", &base, &ft2],
            &["not a task vector"],
        ),
        (
            vec!["tv", "apply", "--base", &base, &patch, "--force"],
            &["not a task vector"],
        ),
        (
            vec!["tv", "apply", "--base", &base, &unmarked],
            &["not a task vector"],
        ),
        (vec!["tv", "add", &tv, &unmarked], &["not a task vector"]),
        (vec!["tv", "add", &ft1, &ft2], &["not a task vector"]),
        (
            vec!["tv", "scale", &unmarked, "--by", "2"],
            &["not a task vector"],
        ),
        (
            vec!["patch", "extract", "--pre", &base, "--model", &base_less],
            &[NORM, "missing"],
        ),
        (
            vec![
                "patch", "extract", "--pre", &base, "--clean", &base_less, "--model", &ft1,
            ],
            &[NORM],
        ),
        (
            vec![
                "merge",
                "--method",
                "task_arithmetic",
                "--base",
                &base,
                &ft1,
                &extra,
            ],
            &[GHOST, "--allow-missing"],
        ),
        (
            vec!["merge", "--method", "linear", &ft1, &extra],
            &[GHOST, "--allow-missing"],
        ),
        (
            vec!["tall", "--base", &base, &ft1, &extra],
            &[GHOST, "not in the base"],
        ),
        (
            vec!["tall", "--base", &base_less, &ft1, &ft2],
            &[NORM, "not in the base"],
        ),
        (
            vec!["consensus", "--base", &base, &ft1, &extra],
            &[GHOST, "not in the base"],
        ),
        (
            vec!["compress", "--base", &base, &extra, &ft2],
            &[GHOST, "not in the base"],
        ),
        (
            vec![
                "compress", "--base", &base_less, &ft1, &ft2, "--tau", "ties",
            ],
            &[NORM, "not in the base"],
        ),
    ];
    let mut v = Vec::new();
    for (mut a, want) in cases {
        match a[0] {
            "tall" => a.extend(["--reconstruct", o_]),
            _ => a.extend(["-o", o_]),
        }
        v.push(case("12-patches", &a, 1, want).absent(&o));
    }
    // --allow-missing names what it leaves out.
    let a = [
        "merge",
        "--method",
        "task_arithmetic",
        "--base",
        &base,
        &ft1,
        &extra,
        "--allow-missing",
        "-o",
        &p(d, "ok-missing"),
    ];
    v.push(case(
        "12-patches",
        &a,
        0,
        &["ignored (not in the base): ghost.weight"],
    ));
    // A patch with a flipped byte is refused by apply and remove.
    let bad = d.join("p-flipped.safetensors");
    let mut bytes = std::fs::read(d.join("p.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&bad, bytes).unwrap();
    for cmd in ["apply", "remove"] {
        let a = ["patch", cmd, &ft1, "--patch", s(&bad), "-o", o_];
        v.push(case("12-patches", &a, 1, &["checksum"]).absent(&o));
    }
    v
}

/// Sizes that cannot be honoured, the thread count from the environment, and outputs: a
/// failing run writes nothing; a rewritten synthetic family leaves no model of the old one.
fn outputs(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let base = s(&f[0]);
    let o = d.join("s");
    let mut v = Vec::new();
    for n in ["1", "1k", "2M"] {
        let a = ["synth", "-q", "-o", s(&o), "--params", n];
        v.push(case("9-sizes", &a, 1, &["within 10%"]).absent(&o));
    }
    let c = d.join("conv-max");
    let max = u64::MAX.to_string();
    v.push(case(
        "9-sizes",
        &["convert", base, "-o", s(&c), "--shard-size", &max],
        0,
        &[],
    ));
    let over = "18446744073709551616";
    let a = [
        "convert",
        base,
        "-o",
        &p(d, "conv-over"),
        "--shard-size",
        over,
    ];
    v.push(case("9-sizes", &a, 1, &[&format!("from 1 to {max}")]).absent(&d.join("conv-over")));
    for n in ["0", "1025", "100000", "lots"] {
        let bad = Box::leak(n.to_string().into_boxed_str());
        let a = ["inspect", base, "--stats"];
        v.push(
            case("9-sizes", &a, 1, &["RAYON_NUM_THREADS", "1 to 1024"])
                .env("RAYON_NUM_THREADS", bad),
        );
    }
    v.push(
        case("9-sizes", &["inspect", base], 0, &["model.norm.weight"])
            .env("RAYON_NUM_THREADS", "3"),
    );
    // analyze: a bad --out fails before the masks file is written.
    let afile = d.join("afile");
    std::fs::write(&afile, "x").unwrap();
    let m = d.join("lift.safetensors");
    let a = [
        "analyze",
        base,
        "--out",
        &p(d, "afile/sub"),
        "--lift-masks",
        s(&m),
    ];
    v.push(case("2-failure", &a, 1, &["afile"]).absent(&m));
    // synth over an earlier, larger family: the old ft-3 goes, a user's file stays.
    let fam = d.join("fam-s");
    v.push(case(
        "1-commit",
        &["synth", "-q", "-o", s(&fam), "-n", "3"],
        0,
        &[],
    ));
    v.push(case(
        "1-commit",
        &["inspect", &p(d, "fam-s/ft-3")],
        0,
        &["model"],
    ));
    v.push(
        case(
            "1-commit",
            &["synth", "-q", "-o", s(&fam), "-n", "1"],
            0,
            &[],
        )
        .absent(&fam.join("ft-3")),
    );
    v.push(
        case("1-commit", &["inspect", &p(d, "fam-s/ft-1")], 0, &["model"])
            .absent(&fam.join("ft-2")),
    );
    v
}

/// A safetensors file of one-dimensional tensors with the given values (`F32` or `I32`).
fn vals(path: &Path, tensors: &[(&str, &str, &[f64])]) -> String {
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, dtype, v) in tensors {
        let start = data.len();
        for x in *v {
            match *dtype {
                "F32" => data.extend_from_slice(&(*x as f32).to_le_bytes()),
                _ => data.extend_from_slice(&(*x as i32).to_le_bytes()),
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": [v.len()], "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
    s(path).to_string()
}

/// Class 13: a finite value beyond the output dtype's range (f8 would saturate, f16 become
/// infinite) is an error naming the tensor and element, in every command that writes floats.
fn ranges(d: &Path) -> Vec<Case> {
    let small = vals(&d.join("r-small.safetensors"), &[("w", "F32", &[1.0, 2.0])]);
    let big = vals(
        &d.join("r-big.safetensors"),
        &[("w", "F32", &[1.0, 1000.0])],
    );
    let big2 = vals(
        &d.join("r-big2.safetensors"),
        &[("w", "F32", &[2.0, 900.0])],
    );
    let huge = vals(&d.join("r-huge.safetensors"), &[("w", "F32", &[1.0, 1e5])]);
    let o = d.join("r-out");
    let mut v = Vec::new();
    let e4 = ["tensor 'w'", "element 1", "beyond the range of F8_E4M3"];
    for (src, dt, want) in [
        (&big, "f8_e4m3", "F8_E4M3"),
        (&huge, "f8_e5m2", "F8_E5M2"),
        (&huge, "f16", "F16"),
    ] {
        let a = ["convert", src, "-o", s(&o), "--dtype", dt];
        let want = format!("beyond the range of {want}");
        v.push(case("13-ranges", &a, 1, &["tensor 'w'", "element 1", &want]).absent(&o));
    }
    let runs: &[&[&str]] = &[
        &[
            "merge",
            "--method",
            "linear",
            &big,
            &big2,
            "--out-dtype",
            "f8_e4m3",
        ],
        &[
            "tv", "extract", "--base", &small, "--model", &big, "--dtype", "f8_e4m3",
        ],
        &[
            "consensus",
            "--base",
            &small,
            &big,
            &big2,
            "-k",
            "1",
            "--out-dtype",
            "f8_e4m3",
        ],
    ];
    for r in runs {
        let mut a = r.to_vec();
        a.extend(["-o", s(&o)]);
        v.push(case("13-ranges", &a, 1, &e4).absent(&o));
    }
    let a = [
        "synth",
        "-q",
        "-o",
        s(&o),
        "--delta-scale",
        "1e30",
        "--dtype",
        "f16",
    ];
    v.push(case("13-ranges", &a, 1, &["beyond the range of F16"]).absent(&o));
    // Values that fit convert; --check-finite keeps refusing non-finite input.
    let a = [
        "convert",
        &big,
        "-o",
        &p(d, "r-ok.safetensors"),
        "--dtype",
        "f16",
    ];
    v.push(case("13-ranges", &a, 0, &["wrote"]));
    v
}

/// Class 14: non-float tensors are copied, never computed: one that differs between inputs,
/// or that only some inputs have, is an error naming it (its values would be lost).
fn non_floats(d: &Path) -> Vec<Case> {
    let m = |n: &str, w: f64, pos: &[f64], extra: bool| {
        let mut t: Vec<(&str, &str, &[f64])> = vec![("w", "F32", &[1.0, 2.0]), ("pos", "I32", pos)];
        let wv = [w, 2.0];
        t[0].2 = &wv;
        if extra {
            t.push(("ids", "I32", &[7.0]));
        }
        vals(&d.join(format!("{n}.safetensors")), &t)
    };
    let base = m("n-base", 1.0, &[0.0, 1.0, 2.0], false);
    let same = m("n-same", 1.5, &[0.0, 1.0, 2.0], false);
    let diff = m("n-diff", 1.7, &[0.0, 1.0, 5.0], false);
    let extra = m("n-extra", 1.7, &[0.0, 1.0, 2.0], true);
    let o = d.join("n-out");
    let mut v = Vec::new();
    let runs: &[(&[&str], &str)] = &[
        (
            &["tall", "--base", &base, &same, &diff, "--reconstruct"],
            "'pos'",
        ),
        (&["compress", "--base", &base, &same, &diff, "-o"], "'pos'"),
        (&["consensus", "--base", &base, &same, &diff, "-o"], "'pos'"),
        (
            &["tv", "extract", "--base", &base, "--model", &diff, "-o"],
            "'pos'",
        ),
        (
            &["tv", "extract", "--base", &base, "--model", &extra, "-o"],
            "'ids'",
        ),
        (
            &[
                "patch", "extract", "--pre", &base, "--clean", &same, "--model", &diff, "-o",
            ],
            "'pos'",
        ),
        (
            &[
                "patch", "extract", "--pre", &base, "--clean", &same, "--model", &extra, "-o",
            ],
            "'ids'",
        ),
        (
            &[
                "merge",
                "--method",
                "task_arithmetic",
                "--base",
                &base,
                &same,
                &diff,
                "-o",
            ],
            "'pos'",
        ),
    ];
    for (r, want) in runs {
        let mut a = r.to_vec();
        a.push(s(&o));
        v.push(case("14-non-float", &a, 1, &[want]).absent(&o));
    }
    let a = [
        "tv",
        "extract",
        "--base",
        &base,
        "--model",
        &same,
        "-o",
        &p(d, "n-ok"),
    ];
    v.push(case("14-non-float", &a, 0, &[]));
    v
}

/// Class 8: merge flags that conflict or would have no effect are errors naming them.
fn flags(d: &Path, f: &[PathBuf; 4]) -> Vec<Case> {
    let [base, ft1, ft2, _] = f.each_ref().map(|x| s(x).to_string());
    let out = d.join("merged");
    let mut v = Vec::new();
    let runs: &[(&str, &[&str], &[&str])] = &[
        (
            "task_arithmetic",
            &["--param", "lambda=0.5", "--lambda", "0.4"],
            &["lambda", "given twice"],
        ),
        (
            "della",
            &["--param", "epsilon=0.1", "--param", "epsilon=0.2"],
            &["epsilon=0.2", "given twice"],
        ),
        (
            "linear",
            &[],
            &["--base has no effect", "linear takes no base"],
        ),
        ("ties", &["--seed", "3"], &["--seed has no effect"]),
    ];
    for (method, extra, want) in runs {
        let mut a = vec![
            "merge",
            "--method",
            method,
            "--base",
            &base,
            &ft1,
            &ft2,
            "-o",
            s(&out),
        ];
        a.extend_from_slice(extra);
        v.push(case("8-validation", &a, 1, want).absent(&out));
    }
    let listed = format!("  - model: {base}\n    parameters:\n      weight: 0.3\n");
    for (name, extra, want) in [
        (
            "listed.yml",
            listed.as_str(),
            "models[2].parameters.weight has no effect",
        ),
        ("seed.yml", "seed: 3\n", "seed has no effect"),
    ] {
        let cfg = config(d, f, name, extra);
        v.push(case("8-validation", &["merge", &cfg, "-o", s(&out)], 1, &[want]).absent(&out));
    }
    v
}

#[test]
fn hostile_inputs_are_refused_by_class() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let f = family(d);
    let (patch, tv) = (d.join("p.safetensors"), d.join("tv"));
    common::ok(&[
        "patch",
        "extract",
        "-q",
        "--pre",
        s(&f[0]),
        "--clean",
        s(&f[1]),
        "--model",
        s(&f[2]),
        "-o",
        s(&patch),
    ]);
    common::ok(&[
        "tv",
        "extract",
        "-q",
        "--base",
        s(&f[0]),
        "--model",
        s(&f[1]),
        "-o",
        s(&tv),
    ]);

    let cases: Vec<Case> = vec![
        validation(d, &f),
        sizes(d, &f),
        paths(d, &f),
        printing(d),
        patches(d, &f),
        config_form(d, &f),
        loose_values(d, &f),
        completeness(d, &f),
        outputs(d, &f),
        ranges(d),
        non_floats(d),
        flags(d, &f),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut counts = std::collections::BTreeMap::new();
    for c in &cases {
        let out = match c.env {
            None => engram(&c.args.iter().map(String::as_str).collect::<Vec<_>>()),
            Some((k, v)) => std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
                .args(&c.args)
                .env(k, v)
                .output()
                .unwrap(),
        };
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let what = format!(
            "[{}] {:?}\nstdout: {}\nstderr: {se}",
            c.class,
            c.args,
            so.chars().take(2000).collect::<String>()
        );
        assert_eq!(out.status.code(), Some(c.code), "{what}");
        assert!(!se.contains("panicked"), "{what}");
        let text = if c.code == 0 { &so } else { &se };
        for e in &c.expect {
            assert!(text.contains(e.as_str()), "missing {e:?}: {what}");
        }
        // Nothing printed reaches the terminal raw: no control character but the line breaks.
        for t in [&so, &se] {
            let raw = t
                .chars()
                .find(|&ch| ch != '\n' && engram_ckpt::names::unsafe_char(ch));
            assert!(raw.is_none(), "raw {raw:?} printed: {what}");
        }
        if c.args.iter().any(|a| a == "--json") {
            serde_json::from_str::<serde_json::Value>(&so)
                .unwrap_or_else(|e| panic!("{e}: {what}"));
        }
        if let Some(a) = &c.absent {
            assert!(!a.exists(), "{} written: {what}", a.display());
        }
        // A refused path component never creates anything outside the output folder.
        assert!(
            !d.join("escaped").exists() && !d.join("deep/escaped").exists(),
            "{what}"
        );
        *counts.entry(c.class).or_insert(0) += 1;
    }
    eprintln!("hostile input cases by class: {counts:?}");
    for class in [
        "6-paths",
        "8-validation",
        "9-sizes",
        "11-printing",
        "12-patches",
    ] {
        assert!(
            counts.get(class).is_some_and(|n| *n >= 8),
            "{class}: {counts:?}"
        );
    }
}
