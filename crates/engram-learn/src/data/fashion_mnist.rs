//! Fashion-MNIST from the Debian package `dataset-fashion-mnist`.
//!
//! Files: `/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`
//! (IDX format, gzip). 60,000 train and 10,000 test images, 1×28×28, 10 classes, pixels
//! scaled from bytes to [0, 1] by x / 255.
//!
//! Search order: `data_dir` and `data_dir/fashion-mnist` when a data folder is given (nothing
//! else: a folder that does not exist or lacks a file is an error naming it), else the
//! package's directory. The `.gz` files are preferred; uncompressed files of the same names
//! (without `.gz`) are accepted too.
//!
//! IDX ([`super::idx`], the one IDX reader): magic `0x00000803` (unsigned bytes, 3
//! dimensions) then n, rows, cols for images; magic `0x00000801` then n for labels —
//! followed by exactly the announced number of bytes. Anything else (wrong magic, short
//! header, truncated or over-long data, count mismatch between images and labels, a label ≥
//! 10) is a [`DataError::Corrupt`] naming the file.

use std::path::{Path, PathBuf};

use super::{DataError, DataFile, Dataset, Split, read_maybe_gz};

pub const INSTALL: &str = "sudo apt-get install dataset-fashion-mnist";
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
pub const NUM_CLASSES: usize = 10;
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

#[cfg(test)]
const IMAGES_MAGIC: u32 = 0x0000_0803;
#[cfg(test)]
const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest decompressed file accepted (the train images are 47 MB).
const MAX_BYTES: u64 = 1 << 30;

/// An IDX image file: `n` images of `rows × cols` bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Parses an (uncompressed) IDX image file's bytes (3 dimensions, [`super::idx`]); `path`
/// names the file in errors.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages, DataError> {
    let a = super::idx::parse(bytes, path, Some(3), "images")?;
    Ok(IdxImages {
        n: a.dims[0],
        rows: a.dims[1],
        cols: a.dims[2],
        pixels: a.data,
    })
}

/// Parses an (uncompressed) IDX label file's bytes (1 dimension); `path` names the file in
/// errors.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    Ok(super::idx::parse(bytes, path, Some(1), "labels")?.data)
}

/// Reads one image file and its label file into a data set, with the files' records.
pub fn read_pair(
    images: &Path,
    labels: &Path,
    name: &str,
) -> Result<(Dataset, [DataFile; 2]), DataError> {
    let (img, img_file) = read_maybe_gz(images, MAX_BYTES)?;
    let (lab, lab_file) = read_maybe_gz(labels, MAX_BYTES)?;
    let img = parse_idx_images(&img, images)?;
    let lab = parse_idx_labels(&lab, labels)?;
    if img.n != lab.len() {
        return Err(DataError::corrupt(
            labels,
            format!(
                "{} labels but {} holds {} images",
                lab.len(),
                images.display(),
                img.n
            ),
        ));
    }
    if (img.rows, img.cols) != (28, 28) {
        return Err(DataError::corrupt(
            images,
            format!("images are {}x{}, expected 28x28", img.rows, img.cols),
        ));
    }
    if let Some(i) = lab.iter().position(|&l| l as usize >= NUM_CLASSES) {
        return Err(DataError::corrupt(
            labels,
            format!("label {} of example {i} is not in 0..{NUM_CLASSES}", lab[i]),
        ));
    }
    let x = img.pixels.iter().map(|&p| p as f32 / 255.0).collect();
    let set = Dataset {
        name: name.to_string(),
        x,
        y: lab.iter().map(|&l| l as u32).collect(),
        dim: 28 * 28,
        image: Some((1, 28, 28)),
        num_classes: NUM_CLASSES,
    };
    Ok((set, [img_file, lab_file]))
}

/// The directories searched, in order.
pub fn search_dirs(data_dir: Option<&Path>) -> Vec<PathBuf> {
    match data_dir {
        Some(d) => vec![d.to_path_buf(), d.join("fashion-mnist")],
        None => vec![PathBuf::from(DEFAULT_DIR)],
    }
}

/// `dir/stem.gz`, else `dir/stem`, if present.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if super::present(&gz) {
        return Some(gz);
    }
    let raw = dir.join(stem);
    super::present(&raw).then_some(raw)
}

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The first searched directory holding all four files.
pub fn locate(data_dir: Option<&Path>) -> Result<[PathBuf; 4], DataError> {
    let dirs = search_dirs(data_dir);
    match data_dir {
        None => locate_in(&dirs),
        Some(d) => {
            super::user_dir(d)?;
            locate_in(&dirs).map_err(|_| {
                let files = FILES.map(|f| format!("{f}[.gz]"));
                super::missing_in("Fashion-MNIST", d, &dirs, &files, |d, f| {
                    find_file(d, f.trim_end_matches("[.gz]")).is_some()
                })
            })
        }
    }
}

fn locate_in(dirs: &[PathBuf]) -> Result<[PathBuf; 4], DataError> {
    for dir in dirs {
        let found: Vec<PathBuf> = FILES.iter().filter_map(|f| find_file(dir, f)).collect();
        if let Ok(files) = <[PathBuf; 4]>::try_from(found) {
            return Ok(files);
        }
    }
    Err(DataError::Missing {
        name: format!("Fashion-MNIST ({}[.gz] ...)", FILES[0]),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        install: INSTALL.to_string(),
    })
}

/// Loads Fashion-MNIST (train 60,000, test 10,000).
pub fn load(data_dir: Option<&Path>) -> Result<Split, DataError> {
    let files = locate(data_dir)?;
    for f in &files {
        super::check_file(f, data_dir)?;
    }
    let [train_x, train_y, test_x, test_y] = files;
    let (train, test) = rayon::join(
        || read_pair(&train_x, &train_y, "fashion-mnist"),
        || read_pair(&test_x, &test_y, "fashion-mnist"),
    );
    let ((train, a), (test, b)) = (train?, test?);
    Ok(Split {
        train,
        test,
        files: a.into_iter().chain(b).collect(),
        meta: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_images(n: u32, rows: u32, cols: u32, fill: u8) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [IMAGES_MAGIC, n, rows, cols] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend(std::iter::repeat_n(fill, (n * rows * cols) as usize));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [LABELS_MAGIC, labels.len() as u32] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(labels);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap_or_default();
        enc.finish().unwrap_or_default()
    }

    /// Writes a complete small fake data set (3 train, 2 test images) into `dir`.
    fn write_fake(dir: &Path) -> std::io::Result<()> {
        std::fs::write(
            dir.join("train-images-idx3-ubyte.gz"),
            gz(&idx_images(3, 28, 28, 255)),
        )?;
        std::fs::write(
            dir.join("train-labels-idx1-ubyte.gz"),
            gz(&idx_labels(&[0, 9, 4])),
        )?;
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            idx_images(2, 28, 28, 51),
        )?;
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[1, 2]))?;
        Ok(())
    }

    fn err_of(r: Result<Split, DataError>) -> String {
        match r {
            Ok(_) => String::from("<no error>"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fake_files_load() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_fake(dir.path())?;
        let s = load(Some(dir.path()))?;
        assert_eq!(s.train.len(), 3);
        assert_eq!(s.test.len(), 2);
        assert_eq!(s.train.y, vec![0, 9, 4]);
        assert!(s.train.x.iter().all(|&v| v == 1.0));
        assert!(s.test.x.iter().all(|&v| (v - 0.2).abs() < 1e-6));
        s.train.check()?;
        Ok(())
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let imgs = p.join("train-images-idx3-ubyte.gz");
        let labs = p.join("train-labels-idx1-ubyte.gz");
        write_fake(p)?;

        // Truncated image data (inside a valid gzip stream).
        let mut b = idx_images(3, 28, 28, 255);
        b.truncate(b.len() - 10);
        std::fs::write(&imgs, gz(&b))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("train-images") && e.contains("truncated"), "{e}");

        // Truncated gzip stream.
        let full = gz(&idx_images(3, 28, 28, 255));
        std::fs::write(&imgs, &full[..full.len() / 2])?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("train-images") && e.contains("gzip"), "{e}");

        // Trailing bytes.
        let mut b = idx_images(3, 28, 28, 255);
        b.push(0);
        std::fs::write(&imgs, gz(&b))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("trailing"), "{e}");

        // Wrong magic: a label file where the images should be.
        std::fs::write(&imgs, gz(&idx_labels(&[0, 1, 2])))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("magic") && e.contains("train-images"), "{e}");

        // Header shorter than 16 bytes.
        std::fs::write(&imgs, gz(&[0, 0, 8, 3, 0]))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("header"), "{e}");

        // Absurd dimensions do not overflow or allocate.
        let mut b = Vec::new();
        for v in [IMAGES_MAGIC, u32::MAX, u32::MAX, u32::MAX] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        std::fs::write(&imgs, gz(&b))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("train-images"), "{e}");

        // Count mismatch between images and labels.
        std::fs::write(&imgs, gz(&idx_images(3, 28, 28, 255)))?;
        std::fs::write(&labs, gz(&idx_labels(&[0, 1])))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("2 labels but") && e.contains("3 images"), "{e}");

        // Label out of range.
        std::fs::write(&labs, gz(&idx_labels(&[0, 1, 10])))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("label 10") && e.contains("train-labels"), "{e}");

        // Not 28x28.
        std::fs::write(&imgs, gz(&idx_images(3, 8, 8, 0)))?;
        std::fs::write(&labs, gz(&idx_labels(&[0, 1, 2])))?;
        let e = err_of(load(Some(p)));
        assert!(e.contains("8x8"), "{e}");

        // Truncated label file (raw, not gzip).
        std::fs::remove_file(&labs)?;
        let mut b = idx_labels(&[0, 1, 2]);
        b.pop();
        std::fs::write(p.join("train-labels-idx1-ubyte"), b)?;
        std::fs::write(&imgs, gz(&idx_images(3, 28, 28, 255)))?;
        let e = err_of(load(Some(p)));
        assert!(
            e.contains("train-labels-idx1-ubyte") && e.contains("truncated"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn missing_data_names_the_install_command() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert_eq!(search_dirs(None), vec![PathBuf::from(DEFAULT_DIR)]);
        // A data folder is the only place searched.
        let dirs = search_dirs(Some(dir.path()));
        assert_eq!(
            dirs,
            vec![dir.path().to_path_buf(), dir.path().join("fashion-mnist")]
        );
        let e = match locate_in(&[dir.path().to_path_buf()]) {
            Ok(_) => String::from("<no error>"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(INSTALL) && e.contains("setup-data.sh"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        // Three of the four files are not enough.
        write_fake(dir.path())?;
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte"))?;
        assert!(locate_in(&[dir.path().to_path_buf()]).is_err());
        Ok(())
    }

    /// A data folder that does not exist or lacks a file is an error naming the folder and
    /// the file, never a fall-back to the system's copy; the files read are recorded.
    #[test]
    fn a_data_folder_is_the_only_place_searched() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let gone = dir.path().join("nowhere");
        let e = err_of(load(Some(&gone)));
        assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
        let sub = dir.path().join("fashion-mnist");
        std::fs::create_dir(&sub)?;
        write_fake(&sub)?;
        std::fs::remove_file(sub.join("t10k-images-idx3-ubyte"))?;
        let e = err_of(load(Some(dir.path())));
        assert!(e.contains("lacks t10k-images-idx3-ubyte[.gz]"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        write_fake(&sub)?;
        let s = load(Some(dir.path()))?;
        assert_eq!(s.files.len(), 4);
        assert_eq!(s.files[0].path, sub.join("train-images-idx3-ubyte.gz"));
        assert_eq!(s.files[3].bytes, 8 + 2);
        assert!(s.files.iter().all(|f| f.sha256.len() == 64));
        Ok(())
    }

    #[test]
    fn real_fashion_mnist() -> Result<(), DataError> {
        let s = match load(None) {
            Ok(s) => s,
            Err(e @ DataError::Missing { .. }) => {
                assert!(
                    !crate::data::data_required(),
                    "ENGRAM_REQUIRE_DATA=1 but Fashion-MNIST is missing: {e}"
                );
                eprintln!("skipping: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        assert_eq!((s.train.len(), s.test.len()), (60_000, 10_000));
        s.train.check()?;
        s.test.check()?;
        assert_eq!(s.train.class_counts(), vec![6000; 10]);
        assert_eq!(s.test.class_counts(), vec![1000; 10]);
        let (lo, hi) = s
            .train
            .x
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert_eq!((lo, hi), (0.0, 1.0));
        // The first training image is an ankle boot (label 9) in the published files.
        assert_eq!(s.train.y[0], 9);
        Ok(())
    }
}
