//! Crash-safe files: whole files are written to a temporary name and renamed
//! into place; logs are appended a whole line at a time and flushed. A crash at
//! any instant leaves every file either as it was or complete.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub(crate) fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory,
/// fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(at(path))?;
    tmp.write_all(bytes).map_err(at(path))?;
    tmp.as_file().sync_all().map_err(at(path))?;
    tmp.persist(path).map_err(|e| FileError {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// A log that only ever grows by whole lines.
#[derive(Debug)]
pub struct LineLog {
    path: PathBuf,
    file: File,
}

impl LineLog {
    /// Opens `path` for appending (creating it).
    pub fn append(path: &Path) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(at(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Appends one line (a newline is added) in a single write, then flushes.
    pub fn line(&mut self, line: &str) -> Result<(), FileError> {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        self.file.write_all(buf.as_bytes()).map_err(at(&self.path))?;
        self.file.flush().map_err(at(&self.path))
    }
}

/// Keeps the first `keep` complete lines of `path` (dropping a torn last line
/// too), atomically. Used on resume to cut rows logged after the checkpoint.
pub fn truncate_lines(path: &Path, keep: usize) -> Result<(), FileError> {
    let text = std::fs::read_to_string(path).map_err(at(path))?;
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .take(keep)
        .collect();
    write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left behind"
        );
    }

    #[test]
    fn truncation_drops_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        std::fs::write(&p, "h\n1\n2\n3\n4 torn").unwrap();
        truncate_lines(&p, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "h\n1\n2\n");
        truncate_lines(&p, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "h\n1\n2\n");
    }

    #[test]
    fn line_log_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        LineLog::append(&p).unwrap().line("a").unwrap();
        LineLog::append(&p).unwrap().line("b").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
    }
}
