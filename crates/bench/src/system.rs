//! What the machine and the process measure: peak memory, IDX load time.

use std::path::Path;
use std::time::Instant;

use crate::{BenchError, median};

/// This process's peak resident set size, MiB (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Seconds to read a 60,000-image IDX file, plain and gzip (median of 5 each).
pub fn idx_load_seconds() -> Result<(f64, f64), BenchError> {
    use gradscope_data::idx::{IdxImages, encode_images};
    use std::io::Write;
    // 60,000 real MNIST digits: the bundled 8,000, repeated.
    let sample = gradscope_data::MnistLike::bundled()?;
    let src = &sample.train.images;
    let mut pixels = Vec::with_capacity(60_000 * 784);
    while pixels.len() < 60_000 * 784 {
        let need = (60_000 * 784 - pixels.len()).min(src.pixels.len());
        pixels.extend_from_slice(&src.pixels[..need]);
    }
    let bytes = encode_images(&IdxImages {
        count: 60_000,
        rows: 28,
        cols: 28,
        pixels,
    });
    let tmp = tempfile::tempdir()?;
    let plain = tmp.path().join("train-images-idx3-ubyte");
    std::fs::write(&plain, &bytes)?;
    let gz = tmp.path().join("train-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::default());
    enc.write_all(&bytes)?;
    enc.finish()?;
    let time = |p: &Path| -> Result<f64, BenchError> {
        let mut t = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let images = gradscope_data::idx::read_images(p)?;
            t.push(start.elapsed().as_secs_f64());
            if images.count != 60_000 {
                return Err(BenchError::Failed(format!("read {} images", images.count)));
            }
        }
        Ok(median(&mut t))
    };
    Ok((time(&plain)?, time(&gz)?))
}
