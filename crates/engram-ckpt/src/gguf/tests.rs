//! Tests of the GGUF reader and writer: round trips, partial-range decoding, checksums, and
//! malformed files (each an error, never a panic), by hand-built images and random mutations.

use super::*;
use std::path::Path;

/// A hand-built file image: header fields, key-value bytes, tensor-info bytes, then the data
/// section at the next multiple of 32.
fn image(n_tensors: u64, n_kv: u64, kvs: &[u8], infos: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(kvs);
    b.extend_from_slice(infos);
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend_from_slice(data);
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, s);
    b
}

/// A tensor info with dimensions innermost first, as the file stores them.
fn info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

fn kv(key: &str, v: &Value) -> Vec<u8> {
    let mut b = string(key);
    b.extend_from_slice(&v.ty().id().to_le_bytes());
    v.encode(&mut b);
    b
}

fn parse_err(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("parsed a malformed file"),
        Err(e) => format!("{:?}: {}", e.tensor, e.msg),
    }
}

fn all_value_types() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-5)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(0.25)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::String("héllo".into())),
        (
            "t.array".into(),
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("".into())],
            ),
        ),
        (
            "t.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
                    Value::Array(ValueType::F64, vec![]),
                ],
            ),
        ),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(-1.5e300)),
    ]
}

/// Writes `tensors` (name, type, shape, values) with the metadata of every value type.
fn write_file(path: &Path, tensors: &[(&str, GgmlType, Vec<usize>, Vec<f32>)]) {
    let specs = tensors
        .iter()
        .map(|(n, t, s, _)| TensorSpec::new(*n, *t, s))
        .collect();
    let w = GgufWriter::create(path, specs, all_value_types()).unwrap();
    for (n, _, _, v) in tensors {
        w.write_f32(n, v).unwrap();
    }
    w.finish().unwrap();
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37).sin() * scale).round() / 8.0)
        .collect()
}

#[test]
fn float_types_round_trip_exactly_with_metadata() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("m.gguf");
    // Multiples of 1/8 below 16 are exact in f16 and bf16.
    let v = ramp(2 * 3 * 5, 100.0);
    let tensors = vec![
        ("a.f32", GgmlType::F32, vec![2, 3, 5], v.clone()),
        ("b.f16", GgmlType::F16, vec![30], v.clone()),
        ("c.bf16", GgmlType::BF16, vec![5, 6], v.clone()),
        ("d.empty", GgmlType::F32, vec![0, 4], vec![]),
        ("e.scalar", GgmlType::F16, vec![], vec![2.5]),
    ];
    write_file(&p, &tensors);
    let f = GgufFile::open(&p).unwrap();
    f.verify().unwrap();
    assert_eq!(f.header().version, 3);
    assert_eq!(f.len(), 5);
    let md: Vec<_> = f
        .metadata()
        .iter()
        .filter(|(k, _)| k != CHECKSUM_KEY)
        .cloned()
        .collect();
    assert_eq!(md, all_value_types());
    for (n, ty, shape, vals) in &tensors {
        let g = f.get(n).unwrap();
        assert_eq!((g.ty(), g.shape()), (*ty, shape.as_slice()));
        assert_eq!(&g.to_f32().unwrap(), vals, "{n}");
        assert_eq!(g.info.start % 32, 0);
    }
    // The file stores dimensions innermost first.
    let bytes = std::fs::read(&p).unwrap();
    let mut want = string("a.f32");
    want.extend_from_slice(&3u32.to_le_bytes());
    for d in [5u64, 3, 2] {
        want.extend_from_slice(&d.to_le_bytes());
    }
    assert!(bytes.windows(want.len()).any(|w| w == want));
    assert_eq!(bytes.len() % 32, 0);
}

#[test]
fn block_types_decode_any_range_like_the_whole() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("q.gguf");
    let mut v = ramp(4 * 64, 50.0);
    v[..32].fill(0.0);
    let tensors = vec![
        ("q8", GgmlType::Q8_0, vec![4, 64], v.clone()),
        ("q4", GgmlType::Q4_0, vec![4, 64], v.clone()),
    ];
    write_file(&p, &tensors);
    let f = GgufFile::open(&p).unwrap();
    f.verify().unwrap();
    for (n, ty, _, vals) in &tensors {
        let g = f.get(n).unwrap();
        assert_eq!(g.bytes.len(), ty.nbytes(vals.len()).unwrap());
        let whole = g.to_f32().unwrap();
        let mut blocks = vec![0u8; g.bytes.len()];
        encode_f32(*ty, vals, &mut blocks).unwrap();
        assert_eq!(g.bytes, &blocks[..]);
        assert!(whole[..32].iter().all(|&x| x == 0.0));
        for (start, len) in [
            (0, 256),
            (5, 3),
            (31, 2),
            (30, 70),
            (64, 64),
            (255, 1),
            (100, 0),
        ] {
            let mut part = vec![f32::NAN; len];
            g.read_f32_into(start, &mut part).unwrap();
            assert_eq!(part, whole[start..start + len], "{n} {start}+{len}");
        }
        assert!(g.read_f32_into(250, &mut [0f32; 7]).is_err());
        assert!(g.read_f32_into(usize::MAX, &mut [0f32; 2]).is_err());
    }
}

#[test]
fn checksums_catch_changed_bytes_and_rewritten_headers() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("c.gguf");
    write_file(
        &p,
        &[
            ("x", GgmlType::F32, vec![4], vec![1.0, 2.0, 3.0, 4.0]),
            ("y", GgmlType::Q8_0, vec![32], ramp(32, 9.0)),
        ],
    );
    let good = std::fs::read(&p).unwrap();
    let h = parse(&good).unwrap();
    let y = h.tensors.iter().find(|t| t.name == "y").unwrap();
    let mut bad = good.clone();
    bad[h.data_start + y.start + 5] ^= 1;
    std::fs::write(&p, &bad).unwrap();
    let e = GgufFile::open(&p)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.gguf") && e.contains("'y'") && e.contains("checksum"),
        "{e}"
    );
    // A checksum key that is not a string.
    let img = image(0, 1, &kv(CHECKSUM_KEY, &Value::U32(1)), &[], &[]);
    std::fs::write(&p, img).unwrap();
    assert!(GgufFile::open(&p).unwrap().verify().is_err());
    // A file from another tool, without checksums, passes.
    let img = image(1, 0, &[], &info("w", &[2], 0, 0), &[0; 8]);
    std::fs::write(&p, img).unwrap();
    GgufFile::open(&p).unwrap().verify().unwrap();
}

#[test]
fn the_writer_refuses_bad_specs_and_leaves_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("sub/w.gguf");
    let bad = [
        TensorSpec::new("n", GgmlType::Q8_0, &[2, 31]),
        TensorSpec::new("n", GgmlType::Q4_0, &[]),
        TensorSpec::new("n", GgmlType::F32, &[1, 1, 1, 1, 1]),
        TensorSpec::new("", GgmlType::F32, &[1]),
        TensorSpec::new("n", GgmlType::F32, &[usize::MAX, 2]),
    ];
    for s in bad {
        assert!(GgufWriter::create(&p, vec![s], vec![]).is_err());
    }
    let dup = vec![
        TensorSpec::new("n", GgmlType::F32, &[1]),
        TensorSpec::new("n", GgmlType::F16, &[1]),
    ];
    assert!(GgufWriter::create(&p, dup, vec![]).is_err());
    let md = vec![(ALIGNMENT_KEY.to_string(), Value::U32(48))];
    assert!(GgufWriter::create(&p, vec![], md).is_err());
    let md = vec![(
        "a".to_string(),
        Value::Array(ValueType::U8, vec![Value::I8(1)]),
    )];
    assert!(GgufWriter::create(&p, vec![], md).is_err());
    // An unfinished write leaves no file and removes the folder it made.
    {
        let w = GgufWriter::create(&p, vec![TensorSpec::new("n", GgmlType::F32, &[2])], vec![])
            .unwrap();
        w.write_f32("n", &[1.0]).unwrap();
        assert!(w.write_f32_at("n", 1, &[1.0, 2.0]).is_err());
        assert!(w.finish().is_err());
    }
    assert!(!t.path().join("sub").exists());
    // A Q8_0 value beyond the scale's range names the tensor and the element.
    let w = GgufWriter::create(
        &p,
        vec![TensorSpec::new("q", GgmlType::Q8_0, &[32])],
        vec![],
    )
    .unwrap();
    let mut v = vec![0f32; 32];
    v[7] = 1e9;
    let e = w.write_f32("q", &v).unwrap_err().to_string();
    assert!(e.contains("'q'") && e.contains("element 7"), "{e}");
}

#[test]
fn honours_a_custom_alignment() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("a.gguf");
    let md = vec![(ALIGNMENT_KEY.to_string(), Value::U32(64))];
    let specs = vec![
        TensorSpec::new("a", GgmlType::F32, &[3]),
        TensorSpec::new("b", GgmlType::F32, &[3]),
    ];
    let w = GgufWriter::create(&p, specs, md).unwrap();
    w.write_f32("a", &[1.0, 2.0, 3.0]).unwrap();
    w.write_f32("b", &[4.0, 5.0, 6.0]).unwrap();
    w.finish().unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.header().alignment, 64);
    assert_eq!(f.header().data_start % 64, 0);
    assert_eq!(f.get("b").unwrap().info.start, 64);
    assert_eq!(f.get("b").unwrap().to_f32().unwrap(), [4.0, 5.0, 6.0]);
}

#[test]
fn version_2_reads() {
    let mut img = image(
        1,
        0,
        &[],
        &info("w", &[2], 0, 0),
        &[0, 0, 128, 63, 0, 0, 0, 64],
    );
    img[4] = 2;
    let h = parse(&img).unwrap();
    assert_eq!(h.version, 2);
    assert_eq!(h.tensors[0].shape, [2]);
}

#[test]
fn malformed_files_are_errors() {
    let good = image(1, 0, &[], &info("w", &[2], 0, 0), &[0; 8]);
    parse(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("bad magic", b"GGUX\x03\0\0\0".to_vec(), "magic"),
        ("short magic", b"GG".to_vec(), "truncated"),
        (
            "version 1",
            {
                let mut b = good.clone();
                b[4] = 1;
                b
            },
            "version 1",
        ),
        (
            "version 9",
            {
                let mut b = good.clone();
                b[4] = 9;
                b
            },
            "version 9",
        ),
        (
            "big-endian",
            {
                let mut b = good.clone();
                b[4..8].copy_from_slice(&3u32.to_be_bytes());
                b
            },
            "big-endian",
        ),
        ("truncated header", good[..30].to_vec(), "implausible"),
        ("truncated counts", good[..20].to_vec(), "truncated"),
        (
            "huge tensor count",
            image(u64::MAX, 0, &[], &[], &[]),
            "tensor count",
        ),
        (
            "huge kv count",
            image(0, 1 << 40, &[], &[], &[]),
            "key-value count",
        ),
        (
            "string beyond the file",
            {
                let mut k = 1000u64.to_le_bytes().to_vec();
                k.extend_from_slice(b"abc");
                image(0, 1, &k, &[], &[0; 64])
            },
            "bytes left",
        ),
        (
            "string beyond the limit",
            {
                let k = u64::MAX.to_le_bytes().to_vec();
                image(0, 1, &k, &[], &[])
            },
            "limit",
        ),
        (
            "unknown value type",
            {
                let mut k = string("k");
                k.extend_from_slice(&13u32.to_le_bytes());
                image(0, 1, &k, &[], &[])
            },
            "unknown value type",
        ),
        (
            "huge array",
            {
                let mut k = string("k");
                k.extend_from_slice(&9u32.to_le_bytes());
                k.extend_from_slice(&0u32.to_le_bytes());
                k.extend_from_slice(&(1u64 << 50).to_le_bytes());
                image(0, 1, &k, &[], &[0; 64])
            },
            "array",
        ),
        (
            "deep arrays",
            {
                let mut k = string("k");
                k.extend_from_slice(&9u32.to_le_bytes());
                for _ in 0..20 {
                    k.extend_from_slice(&9u32.to_le_bytes());
                    k.extend_from_slice(&1u64.to_le_bytes());
                }
                image(0, 1, &k, &[], &[0; 64])
            },
            "nested",
        ),
        (
            "bad bool",
            image(
                0,
                1,
                &{
                    let mut k = string("k");
                    k.extend_from_slice(&7u32.to_le_bytes());
                    k.push(2);
                    k
                },
                &[],
                &[0; 32],
            ),
            "boolean",
        ),
        (
            "bad utf-8",
            image(
                0,
                1,
                &{
                    let mut k = 2u64.to_le_bytes().to_vec();
                    k.extend_from_slice(&[0xff, 0xfe]);
                    k.extend_from_slice(&4u32.to_le_bytes());
                    k.extend_from_slice(&1u32.to_le_bytes());
                    k
                },
                &[],
                &[0; 32],
            ),
            "UTF-8",
        ),
        (
            "duplicate key",
            {
                let mut k = kv("k", &Value::U8(1));
                k.extend(kv("k", &Value::U8(2)));
                image(0, 2, &k, &[], &[0; 32])
            },
            "twice",
        ),
        (
            "bad alignment",
            image(
                1,
                1,
                &kv(ALIGNMENT_KEY, &Value::U32(24)),
                &info("w", &[2], 0, 0),
                &[0; 8],
            ),
            "power of two",
        ),
        (
            "alignment of another type",
            image(0, 1, &kv(ALIGNMENT_KEY, &Value::U64(32)), &[], &[0; 32]),
            "power of two",
        ),
        (
            "offset out of range",
            image(1, 0, &[], &info("w", &[2], 0, 1 << 20), &[0; 8]),
            "end of the file",
        ),
        (
            "offset past the data section",
            image(1, 0, &[], &info("w", &[2], 0, 32), &[0; 8]),
            "end of the file",
        ),
        (
            "offset near u64::MAX",
            image(1, 0, &[], &info("w", &[2], 0, u64::MAX - 31), &[0; 8]),
            "end of the file",
        ),
        (
            "misaligned offset",
            image(1, 0, &[], &info("w", &[2], 0, 4), &[0; 16]),
            "alignment",
        ),
        (
            "overlapping tensors",
            {
                let mut i = info("a", &[16], 0, 0);
                i.extend(info("b", &[16], 0, 32));
                image(2, 0, &[], &i, &[0; 96])
            },
            "overlaps",
        ),
        (
            "unknown type",
            image(1, 0, &[], &info("w", &[32], 12, 0), &[0; 160]),
            "Q4_K",
        ),
        (
            "unknown type number",
            image(1, 0, &[], &info("w", &[32], 99, 0), &[0; 160]),
            "99",
        ),
        (
            "dims product overflow",
            image(1, 0, &[], &info("w", &[1 << 32, 1 << 32, 4], 0, 0), &[0; 8]),
            "overflow",
        ),
        (
            "bytes overflow",
            image(1, 0, &[], &info("w", &[1 << 62], 0, 0), &[0; 8]),
            "overflow",
        ),
        (
            "dimension beyond i64",
            image(1, 0, &[], &info("w", &[u64::MAX], 0, 0), &[0; 8]),
            "beyond range",
        ),
        (
            "too many dimensions",
            image(1, 0, &[], &info("w", &[1, 1, 1, 1, 1], 0, 0), &[0; 8]),
            "dimensions",
        ),
        (
            "block type with a partial row",
            image(1, 0, &[], &info("w", &[16, 2], 8, 0), &[0; 64]),
            "multiple of 32",
        ),
        (
            "block type scalar",
            image(1, 0, &[], &info("w", &[], 2, 0), &[0; 64]),
            "multiple of 32",
        ),
        (
            "duplicate names",
            {
                let mut i = info("a", &[2], 0, 0);
                i.extend(info("a", &[2], 0, 32));
                image(2, 0, &[], &i, &[0; 64])
            },
            "twice",
        ),
        (
            "empty name",
            image(1, 0, &[], &info("", &[2], 0, 0), &[0; 8]),
            "empty name",
        ),
        (
            "truncated tensor info",
            {
                let i = info("w", &[2], 0, 0);
                image(1, 0, &[], &i, &[])[..24 + i.len() - 3].to_vec()
            },
            "truncated",
        ),
    ];
    for (what, bytes, needle) in cases {
        let e = parse_err(&bytes);
        assert!(e.contains(needle), "{what}: {e}");
    }
}

#[test]
fn open_names_the_file_and_refuses_special_files() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bad.gguf");
    std::fs::write(&p, image(1, 0, &[], &info("w", &[32], 12, 0), &[0; 160])).unwrap();
    let e = GgufFile::open(&p).err().unwrap().to_string();
    assert!(
        e.contains("bad.gguf") && e.contains("'w'") && e.contains("Q4_K"),
        "{e}"
    );
    std::fs::write(&p, b"").unwrap();
    assert!(GgufFile::open(&p).is_err());
    assert!(GgufFile::open(t.path()).is_err());
    assert!(GgufFile::open(Path::new("/dev/zero")).is_err());
}

/// Random byte mutations of a valid file: every outcome is a header whose promises hold, or
/// an error; never a panic.
#[test]
fn mutated_files_never_panic() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("m.gguf");
    write_file(
        &p,
        &[
            ("a", GgmlType::F32, vec![2, 3], ramp(6, 10.0)),
            ("b", GgmlType::Q4_0, vec![64], ramp(64, 10.0)),
            ("c", GgmlType::Q8_0, vec![2, 32], ramp(64, 10.0)),
            ("d", GgmlType::BF16, vec![3], ramp(3, 10.0)),
        ],
    );
    let good = std::fs::read(&p).unwrap();
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut ok = 0;
    for round in 0..4000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % b.len();
            match next() % 4 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                2 => b.truncate(at),
                _ => {
                    // A length or count field made large.
                    let end = (at + 8).min(b.len());
                    for x in &mut b[at..end] {
                        *x = 0xff;
                    }
                }
            }
            if b.is_empty() {
                break;
            }
        }
        let Ok(h) = parse(&b) else { continue };
        ok += 1;
        for t in &h.tensors {
            assert!(
                t.start <= t.end && h.data_start + t.end <= b.len(),
                "round {round}"
            );
            assert_eq!(t.end - t.start, t.ty.nbytes(t.numel()).unwrap());
            let bytes = &b[h.data_start + t.start..h.data_start + t.end];
            let mut out = vec![0f32; t.numel()];
            decode_blocks(t.ty, bytes, &mut out);
        }
    }
    assert!(
        ok > 0,
        "some mutations (in data bytes) leave the file valid"
    );
}
