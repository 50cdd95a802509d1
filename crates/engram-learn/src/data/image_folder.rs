//! Folders of images, one folder per class (the user's `kind = "images"` data sets, the
//! layout of torchvision's `ImageFolder`).
//!
//! `root/train/<class>/*.png|jpg|jpeg` and `root/test/<class>/...`, or, without `train` and
//! `test` folders, `root/<class>/...` (then the data table's `test-fraction` makes the test
//! set). Classes are the train folder's class folders sorted by name (byte order), ids 0, 1,
//! ...; a test class folder must be one of them. Images in a class folder are read in name
//! order. Names starting with `.` are skipped; any other file that is not a PNG or JPEG (by
//! extension), a folder inside a class folder, or a special file (FIFO, device) is an error
//! naming it.
//!
//! Pixels become f32 in [0, 1], stored channels-first. `channels` (1: gray, 3: RGB; default:
//! 3 if the first image has colour, else 1) converts every image; alpha is dropped. All
//! images must be as large as the first (an error names the first that is not) unless
//! `size = [h, w]` resizes every image (bilinear, `image`'s Triangle filter).
//!
//! The folder is recorded as one [`DataFile`] (not one per image): its path, the total size
//! of the images and the SHA-256 of its manifest, which is what `sha256sum` prints for the
//! images in the order read (train, then test; class folders by name, then files by name),
//! with paths relative to the folder: one line `<sha256>  train/cat/001.png` per image.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::Digest;

use super::{DataError, DataFile};

/// Most images a folder may hold.
pub const MAX_IMAGES: usize = 1 << 21;
/// Largest image file accepted.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Largest width or height decoded (before any resize).
pub const MAX_SIDE: u32 = 8192;
/// Largest `size = [h, w]` side.
pub const MAX_SIZE: u32 = 1024;

/// The images of one part (train or test): pixels channels-first, row-major per image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePart {
    pub x: Vec<f32>,
    pub labels: Vec<u32>,
}

/// A folder read.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub classes: Vec<String>,
    /// (channels, height, width).
    pub image: (usize, usize, usize),
    pub train: ImagePart,
    /// `None` when the folder has no `train`/`test` split.
    pub test: Option<ImagePart>,
    pub file: DataFile,
}

/// How images are read: `size` as [h, w], `channels` 1 or 3.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ImageOptions {
    pub size: Option<[u32; 2]>,
    pub channels: Option<usize>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The entries of `dir` that count (names not starting with `.`), sorted by name.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(String::from) else {
            return Err(DataError::corrupt(&path, "its name is not UTF-8"));
        };
        if !name.starts_with('.') {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The class folders of `dir`, sorted.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let list = entries(dir)?;
    for (_, p) in &list {
        if !p.is_dir() {
            return Err(DataError::corrupt(
                p,
                format!(
                    "is not a folder: {} holds one folder per class",
                    dir.display()
                ),
            ));
        }
    }
    if list.is_empty() {
        return Err(DataError::corrupt(
            dir,
            "holds no class folder (one folder per class, each holding its images)",
        ));
    }
    Ok(list)
}

/// An image to read: its path relative to the root, its path and its class.
struct Item {
    rel: String,
    path: PathBuf,
    class: u32,
}

fn list_images(
    dir: &Path,
    part: Option<&str>,
    classes: &[String],
    out: &mut Vec<Item>,
) -> Result<(), DataError> {
    for (name, class_dir) in class_dirs(dir)? {
        let Some(c) = classes.iter().position(|k| *k == name) else {
            return Err(DataError::corrupt(
                &class_dir,
                format!(
                    "is a class folder the train folder lacks (its classes: {})",
                    classes.join(", ")
                ),
            ));
        };
        for (file, path) in entries(&class_dir)? {
            if path.is_dir() {
                return Err(DataError::corrupt(
                    &path,
                    "is a folder inside a class folder (a class folder holds images only)",
                ));
            }
            let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
            if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                return Err(DataError::corrupt(
                    &path,
                    "is not a PNG or JPEG image (.png, .jpg, .jpeg); move it out of the folder",
                ));
            }
            if out.len() >= MAX_IMAGES {
                return Err(DataError::corrupt(
                    dir,
                    format!("holds more than {MAX_IMAGES} images"),
                ));
            }
            let rel = match part {
                Some(p) => format!("{p}/{name}/{file}"),
                None => format!("{name}/{file}"),
            };
            out.push(Item {
                rel,
                path,
                class: c as u32,
            });
        }
    }
    Ok(())
}

/// One image read and decoded: its bytes' size and SHA-256, and the image.
fn decode(path: &Path) -> Result<(u64, String, image::DynamicImage), DataError> {
    super::check_file(path, None)?;
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    if size > MAX_FILE_BYTES {
        return Err(DataError::corrupt(
            path,
            format!("holds more than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut rd = image::ImageReader::new(Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(io(path))?;
    match rd.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        _ => return Err(DataError::corrupt(path, "is not a PNG or JPEG file")),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 << 20);
    rd.limits(limits);
    let img = rd
        .decode()
        .map_err(|e| DataError::corrupt(path, format!("cannot decode the image ({e})")))?;
    Ok((bytes.len() as u64, sha, img))
}

/// `img` as channels-first f32 in [0, 1] with `c` channels, resized to (h, w) if `resize`.
fn pixels(
    img: image::DynamicImage,
    path: &Path,
    (c, h, w): (usize, usize, usize),
    resize: bool,
    first: &Path,
) -> Result<Vec<f32>, DataError> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let img = if (ih, iw) == (h, w) {
        img
    } else if resize {
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        return Err(DataError::corrupt(
            path,
            format!(
                "is {ih}x{iw} (height x width) but the first image, {}, is {h}x{w}; give \
                 size = [h, w] to resize every image",
                first.display()
            ),
        ));
    };
    Ok(match c {
        1 => img.to_luma32f().into_raw(),
        _ => {
            let hwc = img.to_rgb32f().into_raw();
            let plane = h * w;
            let mut chw = vec![0.0; 3 * plane];
            for (p, px) in hwc.chunks_exact(3).enumerate() {
                for (k, &v) in px.iter().enumerate() {
                    chw[k * plane + p] = v;
                }
            }
            chw
        }
    })
}

/// A PNG of `c` channels (1: gray, 3: RGB) of `h × w` bytes, interleaved row-major: for tests
/// and tools that write image folders.
pub fn png_bytes(c: usize, h: u32, w: u32, pixels: Vec<u8>) -> Result<Vec<u8>, String> {
    let img = match c {
        1 => image::GrayImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(w, h, pixels).map(image::DynamicImage::ImageRgb8),
        _ => None,
    }
    .ok_or_else(|| format!("{c} channels of {h}x{w}: wrong pixel count or channels"))?;
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// Reads the image folder `root` (see the module for the layout).
pub fn read(root: &Path, opts: ImageOptions) -> Result<ImageSet, DataError> {
    if !root.is_dir() {
        return Err(DataError::corrupt(
            root,
            if root.exists() {
                "is not a folder (kind = \"images\" reads a folder of class folders)"
            } else {
                "does not exist"
            },
        ));
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let split = train_dir.exists() || test_dir.exists();
    let mut items = Vec::new();
    let classes: Vec<String>;
    if split {
        for d in [&train_dir, &test_dir] {
            if !d.is_dir() {
                return Err(DataError::corrupt(
                    d,
                    "is missing: a folder with train/ needs test/ too (or neither, with \
                     test-fraction)",
                ));
            }
        }
        classes = class_dirs(&train_dir)?.into_iter().map(|c| c.0).collect();
        list_images(&train_dir, Some("train"), &classes, &mut items)?;
    } else {
        classes = class_dirs(root)?.into_iter().map(|c| c.0).collect();
        list_images(root, None, &classes, &mut items)?;
    }
    let n_train = items.len();
    if split {
        list_images(&test_dir, Some("test"), &classes, &mut items)?;
    }
    let Some(first) = items.first() else {
        return Err(DataError::corrupt(root, "holds no image"));
    };
    if let Some(c) = opts.channels.filter(|c| !matches!(c, 1 | 3)) {
        return Err(DataError::Invalid(format!(
            "dataset.channels = {c}: 1 (gray) or 3 (RGB)"
        )));
    }
    if let Some(s) = opts
        .size
        .filter(|s| s.iter().any(|&v| v == 0 || v > MAX_SIZE))
    {
        return Err(DataError::Invalid(format!(
            "dataset.size = [{}, {}]: each side in 1..={MAX_SIZE}",
            s[0], s[1]
        )));
    }
    let (_, _, img0) = decode(&first.path)?;
    let c = opts
        .channels
        .unwrap_or(if img0.color().has_color() { 3 } else { 1 });
    let (h, w) = match opts.size {
        Some([h, w]) => (h as usize, w as usize),
        None => (img0.height() as usize, img0.width() as usize),
    };
    let shape = (c, h, w);
    let values = items.len().saturating_mul(c * h * w);
    if values > super::user::MAX_VALUES {
        return Err(DataError::corrupt(
            root,
            format!(
                "{} images of {c}x{h}x{w} are more than {} values: engram holds data sets in \
                 memory",
                items.len(),
                super::user::MAX_VALUES
            ),
        ));
    }
    type Read = Result<(u64, String, Vec<f32>), DataError>;
    let read: Vec<Read> = items
        .par_iter()
        .map(|it| {
            let (bytes, sha, img) = decode(&it.path)?;
            let px = pixels(img, &it.path, shape, opts.size.is_some(), &first.path)?;
            Ok((bytes, sha, px))
        })
        .collect();
    let mut manifest = String::new();
    let mut total = 0u64;
    let mut parts = [
        ImagePart {
            x: Vec::with_capacity(n_train * c * h * w),
            labels: Vec::with_capacity(n_train),
        },
        ImagePart {
            x: Vec::new(),
            labels: Vec::new(),
        },
    ];
    for (k, (it, r)) in items.iter().zip(read).enumerate() {
        let (bytes, sha, px) = r?;
        total += bytes;
        manifest.push_str(&format!("{sha}  {}\n", it.rel));
        let part = &mut parts[usize::from(k >= n_train)];
        part.x.extend_from_slice(&px);
        part.labels.push(it.class);
    }
    let [train, test] = parts;
    if split && test.labels.is_empty() {
        return Err(DataError::corrupt(&test_dir, "holds no image"));
    }
    Ok(ImageSet {
        classes,
        image: shape,
        train,
        test: split.then_some(test),
        file: DataFile {
            path: root.to_path_buf(),
            bytes: total,
            sha256: sha2::Sha256::digest(manifest.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        },
    })
}
