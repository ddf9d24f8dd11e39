//! The datasets gradscope knows by name, where their files live, and how a
//! directory of IDX files becomes a [`MnistLike`] dataset.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::idx::{self, IdxError};
use crate::split::{NUM_CLASSES, Split, SplitError, SplitKind};

/// Name of the bundled offline sample, the default dataset everywhere.
pub const BUNDLED_NAME: &str = "mnist-sample";

/// Environment variable that sets the download cache root.
pub const DATA_ENV: &str = "GRADSCOPE_DATA";

/// One of the four files of a dataset, with the MD5 its publisher gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: &'static str,
    pub md5: &'static str,
}

/// A downloadable MNIST-like dataset.
///
/// URLs and MD5s are those of torchvision 0.29.2 (`torchvision/datasets/mnist.py`),
/// which lists the canonical locations and the publishers' checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub homepage: &'static str,
    pub licence: &'static str,
    /// Base URLs tried in order; each file is `base + file name`.
    pub mirrors: &'static [&'static str],
    pub files: [RemoteFile; 4],
}

/// The downloadable datasets.
pub const CATALOG: [CatalogEntry; 3] = [
    CatalogEntry {
        name: "mnist",
        description: "handwritten digits 0-9, 60,000 train + 10,000 test, 28x28 grey",
        homepage: "http://yann.lecun.com/exdb/mnist/",
        licence: "CC BY-SA 3.0 (as distributed by Yann LeCun and Corinna Cortes)",
        mirrors: &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        files: [
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                md5: "d53e105ee54ea40749a09fcbcd1e9432",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                md5: "9fb629c4189551a2d022fa330f9573f3",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                md5: "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ],
    },
    CatalogEntry {
        name: "fashion-mnist",
        description: "Zalando clothing images in 10 classes, 60,000 train + 10,000 test, 28x28 grey",
        homepage: "https://github.com/zalandoresearch/fashion-mnist",
        licence: "MIT",
        mirrors: &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        files: [
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                md5: "25c81989df183df01b3e8a0aad5dffbe",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                md5: "bef4ecab320f06d8554ea6380940ec79",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                md5: "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ],
    },
    CatalogEntry {
        name: "kmnist",
        description: "Kuzushiji (cursive Japanese) characters in 10 classes, 60,000 train + 10,000 test",
        homepage: "https://github.com/rois-codh/kmnist",
        licence: "CC BY-SA 4.0",
        mirrors: &["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
        files: [
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                md5: "bdb82020997e1d708af4cf47b453dcf7",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                md5: "e144d726b3acfaa3e44228e80efcd344",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                md5: "5c965bf0a639b31b8f53240b1b52f4d7",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                md5: "7320c461ea6c1c855c0b718fb2a4b134",
            },
        ],
    },
];

/// The bundled sample's files, compiled into the binary so that the default
/// dataset needs neither network nor a checkout (see `datasets/README.md`).
const BUNDLED_FILES: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../../datasets/mnist-sample/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../../datasets/mnist-sample/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../../datasets/mnist-sample/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../../datasets/mnist-sample/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// Looks a downloadable dataset up by name.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// Every dataset name the tool accepts, the bundled one first.
pub fn names() -> Vec<&'static str> {
    std::iter::once(BUNDLED_NAME)
        .chain(CATALOG.iter().map(|e| e.name))
        .collect()
}

/// Where downloads go: `$GRADSCOPE_DATA`, else the platform cache dir + `gradscope`.
pub fn default_cache_root() -> PathBuf {
    match std::env::var_os(DATA_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("gradscope"),
    }
}

/// Why a dataset could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset `{name}`; expected one of: {}", names().join(", "))]
    UnknownDataset { name: String },
    #[error(
        "{dir}: no `{stem}` or `{stem}.gz`; a dataset directory holds the four standard IDX files \
         (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each plain or .gz)"
    )]
    MissingFile { dir: PathBuf, stem: String },
    #[error("dataset `{name}` is not downloaded in {dir}; run `gradscope data fetch {name}` first")]
    NotFetched { name: String, dir: PathBuf },
    #[error("{dir}: images are {found}; expected the same shape in train and test")]
    ShapeMismatch { dir: PathBuf, found: String },
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Idx(#[from] IdxError),
}

/// Where a dataset's four files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The sample compiled into the binary.
    Bundled,
    /// A directory holding the four IDX files.
    Dir(PathBuf),
}

/// Finds a dataset by name, or uses `data_dir`:
/// - if `data_dir` itself holds the IDX files, it is the dataset (any name is a label);
/// - `mnist-sample` is the bundled sample;
/// - a catalogue name lives in `<data_dir or cache root>/<name>/`.
pub fn resolve(name: &str, data_dir: Option<&Path>) -> Result<Source, DataError> {
    if let Some(dir) = data_dir
        && locate_files(dir).is_ok()
    {
        return Ok(Source::Dir(dir.to_owned()));
    }
    if name == BUNDLED_NAME {
        return match data_dir {
            Some(dir) => Err(locate_files(dir).unwrap_err()),
            None => Ok(Source::Bundled),
        };
    }
    let Some(entry) = find(name) else {
        // Any name goes with --data-dir: then what is wrong is the folder.
        return Err(match data_dir {
            Some(dir) => locate_files(dir).expect_err("checked above"),
            None => DataError::UnknownDataset { name: name.to_owned() },
        });
    };
    let dir = data_dir
        .map_or_else(default_cache_root, Path::to_path_buf)
        .join(entry.name);
    match locate_files(&dir) {
        Ok(_) => Ok(Source::Dir(dir)),
        Err(_) => Err(DataError::NotFetched {
            name: name.to_owned(),
            dir,
        }),
    }
}

/// The four file stems, in the order train images, train labels, test images, test labels.
pub fn file_stems() -> [String; 4] {
    [SplitKind::Train, SplitKind::Test]
        .map(|s| s.file_prefix())
        .as_slice()
        .iter()
        .flat_map(|p| [format!("{p}-images-idx3-ubyte"), format!("{p}-labels-idx1-ubyte")])
        .collect::<Vec<_>>()
        .try_into()
        .expect("four stems")
}

/// Finds the four IDX files in `dir`, accepting `stem`, `stem.gz`, and the
/// common `train-images.idx3-ubyte` spelling of each.
pub fn locate_files(dir: &Path) -> Result<[PathBuf; 4], DataError> {
    let find_one = |stem: &String| {
        let dotted = stem.replacen("-idx", ".idx", 1);
        [
            stem.clone(),
            format!("{stem}.gz"),
            dotted.clone(),
            format!("{dotted}.gz"),
        ]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            dir: dir.to_owned(),
            stem: stem.clone(),
        })
    };
    let stems = file_stems();
    Ok([
        find_one(&stems[0])?,
        find_one(&stems[1])?,
        find_one(&stems[2])?,
        find_one(&stems[3])?,
    ])
}

/// A file of a loaded dataset, for provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A loaded MNIST-like dataset: both splits, validated, with their files' checksums.
#[derive(Debug, Clone)]
pub struct MnistLike {
    pub name: String,
    pub source: Source,
    pub train: Split,
    pub test: Split,
    pub files: Vec<FileInfo>,
}

impl MnistLike {
    /// Loads the dataset `name` (see [`resolve`]).
    pub fn load(name: &str, data_dir: Option<&Path>) -> Result<Self, DataError> {
        match resolve(name, data_dir)? {
            Source::Bundled => Self::bundled(),
            Source::Dir(dir) => Self::from_dir(name, &dir),
        }
    }

    /// The sample compiled into the binary.
    pub fn bundled() -> Result<Self, DataError> {
        let named = |i: usize| {
            let (file, bytes) = BUNDLED_FILES[i];
            (PathBuf::from(format!("datasets/{BUNDLED_NAME}/{file}")), bytes)
        };
        let decoded: Vec<(PathBuf, Vec<u8>)> = (0..4)
            .map(|i| {
                let (path, raw) = named(i);
                idx::decompress(&path, raw.to_vec()).map(|d| (path, d))
            })
            .collect::<Result<_, _>>()?;
        let split = |i: usize| -> Result<Split, DataError> {
            let (ip, ib) = &decoded[i];
            let (lp, lb) = &decoded[i + 1];
            let images = idx::parse_images(ip, ib)?;
            let labels = idx::parse_labels(lp, lb, NUM_CLASSES)?;
            Ok(Split::new(images, labels, ip, lp)?)
        };
        let files = (0..4)
            .map(|i| {
                let (path, raw) = named(i);
                FileInfo {
                    path: path.display().to_string(),
                    bytes: raw.len() as u64,
                    sha256: hex::encode(Sha256::digest(raw)),
                }
            })
            .collect();
        Self::checked(
            BUNDLED_NAME,
            Source::Bundled,
            split(0)?,
            split(2)?,
            files,
            Path::new("datasets/mnist-sample"),
        )
    }

    /// Reads the four IDX files of `dir`.
    pub fn from_dir(name: &str, dir: &Path) -> Result<Self, DataError> {
        let [ti, tl, vi, vl] = locate_files(dir)?;
        let train = Split::read(&ti, &tl)?;
        let test = Split::read(&vi, &vl)?;
        let files = [ti, tl, vi, vl]
            .iter()
            .map(|p| {
                let raw = std::fs::read(p).map_err(|source| IdxError::Io {
                    path: p.clone(),
                    source,
                })?;
                Ok(FileInfo {
                    path: p.display().to_string(),
                    bytes: raw.len() as u64,
                    sha256: hex::encode(Sha256::digest(&raw)),
                })
            })
            .collect::<Result<_, DataError>>()?;
        Self::checked(name, Source::Dir(dir.to_owned()), train, test, files, dir)
    }

    fn checked(
        name: &str,
        source: Source,
        train: Split,
        test: Split,
        files: Vec<FileInfo>,
        dir: &Path,
    ) -> Result<Self, DataError> {
        let shape = |s: &Split| (s.images.rows, s.images.cols);
        if shape(&train) != shape(&test) {
            return Err(DataError::ShapeMismatch {
                dir: dir.to_owned(),
                found: format!("{:?} in train and {:?} in test", shape(&train), shape(&test)),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            source,
            train,
            test,
            files,
        })
    }

    /// The split of the given kind.
    pub fn split(&self, kind: SplitKind) -> &Split {
        match kind {
            SplitKind::Train => &self.train,
            SplitKind::Test => &self.test,
        }
    }

    /// Image shape `(rows, cols)`.
    pub fn image_shape(&self) -> (usize, usize) {
        (self.train.images.rows, self.train.images.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::{IdxImages, encode_images, encode_labels};

    fn write_dir(dir: &Path, train_n: usize, test_labels: usize) {
        let img = |n: usize| IdxImages {
            count: n,
            rows: 2,
            cols: 2,
            pixels: vec![7; n * 4],
        };
        std::fs::write(dir.join("train-images-idx3-ubyte"), encode_images(&img(train_n))).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), encode_labels(&vec![1; train_n])).unwrap();
        std::fs::write(dir.join("t10k-images.idx3-ubyte"), encode_images(&img(3))).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_labels(&vec![2; test_labels])).unwrap();
    }

    #[test]
    fn bundled_sample_is_8000_plus_2000_stratified() {
        let d = MnistLike::bundled().unwrap();
        assert_eq!((d.train.len(), d.test.len()), (8000, 2000));
        assert_eq!(d.image_shape(), (28, 28));
        let (tr, te) = (d.train.class_counts(), d.test.class_counts());
        for c in 0..10 {
            let share = te[c] as f64 / (tr[c] + te[c]) as f64;
            assert!((share - 0.2).abs() < 0.002, "class {c}: test share {share}");
        }
        // MNIST's pixel mean is about 33 on the 0..255 scale (0.13 on [0, 1]).
        let (mean, std) = d.train.pixel_mean_std();
        assert!(
            (25.0..40.0).contains(&mean) && (70.0..90.0).contains(&std),
            "{mean} {std}"
        );
    }

    #[test]
    fn bundled_checksums_match_datasets_readme() {
        let readme = include_str!("../../../datasets/README.md");
        for f in MnistLike::bundled().unwrap().files {
            let name = Path::new(&f.path).file_name().unwrap().to_str().unwrap().to_owned();
            let line = readme.lines().find(|l| l.contains(&name) && l.contains(&f.sha256));
            assert!(
                line.is_some(),
                "datasets/README.md lacks `{}` with SHA-256 {}",
                name,
                f.sha256
            );
        }
    }

    #[test]
    fn any_directory_of_idx_files_is_a_dataset() {
        let tmp = tempfile::tempdir().unwrap();
        write_dir(tmp.path(), 5, 3);
        let d = MnistLike::load("whatever", Some(tmp.path())).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.image_shape()), (5, 3, (2, 2)));
        assert_eq!(d.files.len(), 4);
    }

    #[test]
    fn count_mismatch_in_a_directory_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        write_dir(tmp.path(), 5, 4);
        let err = MnistLike::load("x", Some(tmp.path())).unwrap_err().to_string();
        assert!(
            err.contains("holds 3 images but") && err.contains("holds 4 labels"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_directory_and_stem() {
        let tmp = tempfile::tempdir().unwrap();
        write_dir(tmp.path(), 5, 3);
        std::fs::remove_file(tmp.path().join("train-labels-idx1-ubyte")).unwrap();
        let err = MnistLike::from_dir("x", tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("no `train-labels-idx1-ubyte` or `train-labels-idx1-ubyte.gz`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_and_unfetched_names_are_explained() {
        let err = resolve("cifar", None).unwrap_err().to_string();
        assert!(
            err.contains("unknown dataset `cifar`; expected one of: mnist-sample, mnist"),
            "{err}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve("kmnist", Some(tmp.path())).unwrap_err().to_string();
        assert!(err.contains("run `gradscope data fetch kmnist` first"), "{err}");
    }
}
