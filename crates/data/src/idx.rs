//! The IDX file format of MNIST-like datasets, read and validated.
//!
//! An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndims>`, then `ndims`
//! big-endian `u32` dimensions, then the payload in row-major order. MNIST-like
//! data uses type `0x08` (unsigned byte): images are `idx3` (`[n, rows, cols]`),
//! labels `idx1` (`[n]`). Files may be gzip-compressed; compression is detected
//! from the content (the gzip magic `1f 8b`), not the file name.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// Largest decompressed file we accept, so a gzip bomb or a forged header
/// cannot make us allocate without bound (the full MNIST train set is 47 MB).
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// Type code of unsigned-byte payloads, the only one MNIST-like data uses.
const TYPE_U8: u8 = 0x08;

/// Why an IDX file could not be read. Every variant names the file and says what
/// was found and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: gzip stream is corrupt or truncated: {source}")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: decompressed size exceeds {limit} bytes; expected an MNIST-like IDX file")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: file is {found} bytes, too short for an IDX header of {expected} bytes")]
    TruncatedHeader {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("{path}: bad magic number {found:#010x}; expected {expected:#010x} ({what} of unsigned bytes)")]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },
    #[error("{path}: dimension {axis} is 0; expected a positive size")]
    ZeroDimension { path: PathBuf, axis: usize },
    #[error("{path}: payload is {found} bytes; the header {dims:?} expects {expected}")]
    PayloadLength {
        path: PathBuf,
        found: usize,
        expected: u128,
        dims: Vec<u32>,
    },
    #[error("{path}: label {found} at index {index}; expected a class in 0..{classes}")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        found: u8,
        classes: u8,
    },
}

/// Images from an `idx3-ubyte` file: `count` images of `rows x cols` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count * rows * cols` pixels, image after image, row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels[index * len..(index + 1) * len]
    }
}

/// Reads a file whole, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, IdxError> {
    let raw = std::fs::read(path).map_err(|source| IdxError::Io {
        path: path.to_owned(),
        source,
    })?;
    decompress(path, raw)
}

/// Gunzips `raw` if it is gzip, else returns it unchanged; `path` names it in errors.
pub fn decompress(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, IdxError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    GzDecoder::new(raw.as_slice())
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|source| IdxError::Gzip {
            path: path.to_owned(),
            source,
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(IdxError::TooLarge {
            path: path.to_owned(),
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    Ok(out)
}

/// Parses the header of an unsigned-byte IDX file with `ndims` dimensions and
/// checks the payload length; returns the dimensions and the payload.
fn parse<'a>(path: &Path, bytes: &'a [u8], ndims: u8, what: &'static str) -> Result<(Vec<u32>, &'a [u8]), IdxError> {
    let header_len = 4 + 4 * ndims as usize;
    if bytes.len() < header_len {
        return Err(IdxError::TruncatedHeader {
            path: path.to_owned(),
            found: bytes.len(),
            expected: header_len,
        });
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let expected_magic = u32::from_be_bytes([0, 0, TYPE_U8, ndims]);
    if word(0) != expected_magic {
        return Err(IdxError::BadMagic {
            path: path.to_owned(),
            found: word(0),
            expected: expected_magic,
            what,
        });
    }
    let dims: Vec<u32> = (1..=ndims as usize).map(word).collect();
    if let Some(axis) = dims.iter().position(|&d| d == 0) {
        return Err(IdxError::ZeroDimension {
            path: path.to_owned(),
            axis,
        });
    }
    let payload = &bytes[header_len..];
    // u128: three u32 dimensions can overflow u64.
    let expected: u128 = dims.iter().map(|&d| u128::from(d)).product();
    if payload.len() as u128 != expected {
        return Err(IdxError::PayloadLength {
            path: path.to_owned(),
            found: payload.len(),
            expected,
            dims,
        });
    }
    Ok((dims, payload))
}

/// Parses an `idx3-ubyte` image file already in memory (decompressed).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages, IdxError> {
    let (dims, payload) = parse(path, bytes, 3, "idx3 images")?;
    Ok(IdxImages {
        count: dims[0] as usize,
        rows: dims[1] as usize,
        cols: dims[2] as usize,
        pixels: payload.to_vec(),
    })
}

/// Parses an `idx1-ubyte` label file already in memory (decompressed) and checks
/// that every label is a class below `classes`.
pub fn parse_labels(path: &Path, bytes: &[u8], classes: u8) -> Result<Vec<u8>, IdxError> {
    let (_, payload) = parse(path, bytes, 1, "idx1 labels")?;
    if let Some(index) = payload.iter().position(|&l| l >= classes) {
        return Err(IdxError::LabelOutOfRange {
            path: path.to_owned(),
            index,
            found: payload[index],
            classes,
        });
    }
    Ok(payload.to_vec())
}

/// Reads an image file (plain or gzip) from disk.
pub fn read_images(path: &Path) -> Result<IdxImages, IdxError> {
    parse_images(path, &read_maybe_gz(path)?)
}

/// Reads a label file (plain or gzip) from disk; labels must be below `classes`.
pub fn read_labels(path: &Path, classes: u8) -> Result<Vec<u8>, IdxError> {
    parse_labels(path, &read_maybe_gz(path)?, classes)
}

/// Encodes images as an uncompressed `idx3-ubyte` file (for tests and tools).
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, 3];
    for d in [images.count, images.rows, images.cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as an uncompressed `idx1-ubyte` file (for tests and tools).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p() -> &'static Path {
        Path::new("mem.idx")
    }

    fn sample() -> IdxImages {
        IdxImages {
            count: 2,
            rows: 2,
            cols: 3,
            pixels: (0..12).collect(),
        }
    }

    #[test]
    fn images_round_trip() {
        let img = sample();
        let parsed = parse_images(p(), &encode_images(&img)).unwrap();
        assert_eq!(parsed, img);
        assert_eq!(parsed.image(1), &[6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn labels_round_trip() {
        assert_eq!(
            parse_labels(p(), &encode_labels(&[3, 1, 9]), 10).unwrap(),
            vec![3, 1, 9]
        );
    }

    #[test]
    fn gzip_is_detected_by_content() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&encode_labels(&[1, 2])).unwrap();
        let gz = enc.finish().unwrap();
        let plain = decompress(p(), gz).unwrap();
        assert_eq!(parse_labels(p(), &plain, 10).unwrap(), vec![1, 2]);
    }

    #[test]
    fn truncated_gzip_is_an_error_naming_the_file() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&encode_images(&sample())).unwrap();
        let mut gz = enc.finish().unwrap();
        gz.truncate(gz.len() / 2);
        let err = decompress(Path::new("cut.gz"), gz).unwrap_err();
        assert!(matches!(err, IdxError::Gzip { .. }), "{err}");
        assert!(err.to_string().starts_with("cut.gz: "), "{err}");
    }

    #[test]
    fn short_header_is_reported_with_sizes() {
        let err = parse_images(p(), &[0, 0, 8, 3, 0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mem.idx: file is 5 bytes, too short for an IDX header of 16 bytes"
        );
    }

    #[test]
    fn labels_file_given_as_images_is_a_bad_magic() {
        let err = parse_images(p(), &encode_labels(&[1; 20])).unwrap_err();
        assert!(
            err.to_string()
                .contains("bad magic number 0x00000801; expected 0x00000803 (idx3 images"),
            "{err}"
        );
    }

    #[test]
    fn payload_mismatch_is_reported() {
        let mut bytes = encode_images(&sample());
        bytes.pop();
        let err = parse_images(p(), &bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mem.idx: payload is 11 bytes; the header [2, 2, 3] expects 12"
        );
        bytes.extend_from_slice(&[0, 0]);
        assert!(matches!(
            parse_images(p(), &bytes),
            Err(IdxError::PayloadLength { found: 13, .. })
        ));
    }

    #[test]
    fn zero_dimension_is_rejected() {
        let img = IdxImages {
            count: 1,
            rows: 0,
            cols: 28,
            pixels: vec![],
        };
        let err = parse_images(p(), &encode_images(&img)).unwrap_err();
        assert!(matches!(err, IdxError::ZeroDimension { axis: 1, .. }), "{err}");
    }

    #[test]
    fn label_out_of_range_names_index_and_value() {
        let err = parse_labels(p(), &encode_labels(&[0, 4, 10]), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mem.idx: label 10 at index 2; expected a class in 0..10"
        );
    }

    #[test]
    fn huge_header_does_not_allocate() {
        // A forged header claiming 2^32-1 images must fail on length, not allocate.
        let mut bytes = vec![0, 0, 8, 3];
        for _ in 0..3 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(matches!(parse_images(p(), &bytes), Err(IdxError::PayloadLength { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Random bytes never panic the parser (plain or as a would-be gzip stream).
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_images(p(), &bytes);
            let _ = parse_labels(p(), &bytes, 10);
            let mut gz = vec![0x1f, 0x8b];
            gz.extend_from_slice(&bytes);
            let _ = decompress(p(), gz);
        }

        /// Truncating a valid file anywhere gives an error, never a panic or a bogus success.
        #[test]
        fn truncation_is_always_an_error(cut in 0usize..28) {
            let bytes = encode_images(&sample());
            prop_assert!(parse_images(p(), &bytes[..cut]).is_err());
        }

        /// Flipping any bit of a valid file never panics; a flip in the header
        /// changes the outcome to an error unless it only changed pixel data.
        #[test]
        fn bit_flips_never_panic(pos in 0usize..28, bit in 0u8..8) {
            let mut bytes = encode_images(&sample());
            bytes[pos] ^= 1 << bit;
            let parsed = parse_images(p(), &bytes);
            if pos < 16 {
                prop_assert!(parsed.is_err());
            } else {
                prop_assert!(parsed.is_ok());
            }
        }
    }
}
