//! Crash-safe files: whole files are written to a temporary name and renamed
//! into place; logs grow only by whole lines. A crash, a full disk or a failed
//! write at any instant leaves every file either as it was or complete.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An I/O failure, naming the file. (The cause is part of the message, not a
/// separate `source`, so an error chain prints it once.)
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct FileError {
    pub path: PathBuf,
    pub error: io::Error,
}

pub(crate) fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |error| FileError {
        path: path.to_owned(),
        error,
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory,
/// fsync, rename). The file is readable by everyone (mode 0644 less the umask),
/// like the CSV logs beside it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(at(path))?;
    tmp.write_all(bytes).map_err(at(path))?;
    tmp.as_file().sync_all().map_err(at(path))?;
    tmp.persist(path).map_err(|e| FileError {
        path: path.to_owned(),
        error: e.error,
    })?;
    Ok(())
}

/// What a [`LineLog`] writes to: a file, or in tests a sink that fails on cue.
pub trait LogFile: Read + Write + Seek {
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// A log that only ever grows by whole lines.
///
/// Opening it cuts a torn last line (left by a crash or a full disk) back to
/// the last newline; a write that fails part-way (full disk, file-size limit)
/// is undone before the error is returned, so the file never ends mid-line.
#[derive(Debug)]
pub struct LineLog<F: LogFile = File> {
    path: PathBuf,
    file: F,
    /// Length of the file's whole lines: where the next line starts.
    len: u64,
}

impl LineLog<File> {
    /// Opens `path` for appending (creating it), repairing a torn tail.
    pub fn append(path: &Path) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(at(path))?;
        Self::over(path, file)
    }
}

impl<F: LogFile> LineLog<F> {
    /// A log over an open file, repairing a torn tail.
    pub fn over(path: &Path, mut file: F) -> Result<Self, FileError> {
        let len = whole_lines_len(&mut file).map_err(at(path))?;
        if file.seek(SeekFrom::End(0)).map_err(at(path))? != len {
            file.set_len(len).map_err(at(path))?;
        }
        file.seek(SeekFrom::Start(len)).map_err(at(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
        })
    }

    /// Appends `text` (one line, or several joined by newlines; a newline is
    /// added) in a single write, or nothing at all if the write fails.
    pub fn line(&mut self, text: &str) -> Result<(), FileError> {
        let mut buf = String::with_capacity(text.len() + 1);
        buf.push_str(text);
        buf.push('\n');
        match self.file.write_all(buf.as_bytes()).and_then(|_| self.file.flush()) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Undo the part written; if even that fails, the next open repairs it.
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
                Err(at(&self.path)(e))
            }
        }
    }

    /// Whether the log holds no line yet (a new file needs its header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying file (for tests).
    pub fn into_inner(self) -> F {
        self.file
    }
}

/// The length of `file` up to and including its last newline.
fn whole_lines_len(file: &mut impl LogFile) -> io::Result<u64> {
    let end = file.seek(SeekFrom::End(0))?;
    let mut pos = end;
    let mut chunk = vec![0u8; 64 * 1024];
    while pos > 0 {
        let n = (chunk.len() as u64).min(pos) as usize;
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

/// Rewrites `path` atomically with only the complete lines for which `keep`
/// (given the line's 0-based index and text, without the newline) is true; a
/// torn last line is dropped. A missing file is left missing.
pub fn retain_lines(path: &Path, mut keep: impl FnMut(usize, &str) -> bool) -> Result<(), FileError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(at(path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut index = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(at(path))? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        if keep(index, &text) {
            out.extend_from_slice(&line);
        }
        index += 1;
    }
    write_atomic(path, &out)
}

/// Keeps the first `keep` complete lines of `path` (dropping a torn last line
/// too), atomically. Used on resume to cut rows logged after the checkpoint.
pub fn truncate_lines(path: &Path, keep: usize) -> Result<(), FileError> {
    retain_lines(path, |i, _| i < keep)
}

/// Non-finite floats in JSON files: JSON has no `inf` or `nan`, and serde_json
/// writes them as `null`, which then does not read back as a number. These
/// write `"inf"`, `"-inf"` and `"nan"` as strings and read them (and `null`,
/// as older files have it) back. Use with `#[serde(with = "...")]`.
pub mod json_float {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        Null,
    }

    fn parse<E: serde::de::Error>(repr: Repr) -> Result<f64, E> {
        match repr {
            Repr::Number(x) => Ok(x),
            Repr::Null => Ok(f64::NAN),
            Repr::Text(s) => match s.as_str() {
                "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                "nan" | "NaN" => Ok(f64::NAN),
                other => Err(E::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\"; found \"{other}\""
                ))),
            },
        }
    }

    fn text(x: f64) -> &'static str {
        if x.is_nan() {
            "nan"
        } else if x > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(text(*x))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        parse(Repr::deserialize(d)?)
    }

    /// The same for `Option<f64>`: `None` is `null`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                None => s.serialize_none(),
                Some(x) => super::serialize(x, s),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Repr::deserialize(d)? {
                Repr::Null => Ok(None),
                repr => parse(repr).map(Some),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn atomic_write_replaces_whole_file_readable_by_all() {
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644 & !umask(), "mode {mode:o}");
        }
    }

    #[cfg(unix)]
    fn umask() -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("probe");
        std::fs::write(&p, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        !std::fs::metadata(&p).unwrap().permissions().mode() & 0o666
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
        retain_lines(&p, |i, l| i == 0 || l != "1").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "h\n2\n");
        retain_lines(&dir.path().join("missing.csv"), |_, _| true).unwrap();
        assert!(!dir.path().join("missing.csv").exists());
    }

    #[test]
    fn line_log_appends_and_repairs_a_torn_tail_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        LineLog::append(&p).unwrap().line("a").unwrap();
        LineLog::append(&p).unwrap().line("b\nc").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\nc\n");
        // A crash mid-line (a full disk at the time) left half a row.
        std::fs::write(&p, "a\nb\n79,hidden.8,7,bias_grad_nonfinit").unwrap();
        LineLog::append(&p).unwrap().line("c").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\nc\n");
        // Nothing but a torn line.
        std::fs::write(&p, "torn").unwrap();
        LineLog::append(&p).unwrap().line("x").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x\n");
    }

    #[test]
    fn torn_tail_found_beyond_one_chunk() {
        let mut text = "x".repeat(100_000);
        text.push('\n');
        text.push_str(&"y".repeat(70_000));
        let file = FullDisk {
            data: Cursor::new(text.into_bytes()),
            room: 0,
        };
        let log = LineLog::over(Path::new("mem"), file).unwrap();
        assert_eq!(log.into_inner().data.into_inner().len(), 100_001);
    }

    /// A file that accepts `room` more bytes, then fails like a full disk.
    struct FullDisk {
        data: Cursor<Vec<u8>>,
        room: usize,
    }

    impl Read for FullDisk {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.data.read(buf)
        }
    }
    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.data.seek(pos)
        }
    }
    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.data.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl LogFile for FullDisk {
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.data.get_mut().truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn a_write_failing_mid_line_leaves_no_partial_line() {
        let disk = FullDisk {
            data: Cursor::new(b"step,value\n".to_vec()),
            room: 15,
        };
        let mut log = LineLog::over(Path::new("probe.csv"), disk).unwrap();
        log.line("1,0.5").unwrap(); // 6 bytes: fits
        let err = log.line("2,0.25\n2,0.75").unwrap_err(); // 14 bytes: 9 fit, then the disk is full
        assert!(err.to_string().starts_with("probe.csv: "), "{err}");
        assert_eq!(err.error.raw_os_error(), Some(28));
        // Room again (a file was deleted): the next line follows the last whole one.
        let mut disk = log.into_inner();
        assert_eq!(disk.data.get_ref().as_slice(), b"step,value\n1,0.5\n");
        disk.room = 100;
        let mut log = LineLog::over(Path::new("probe.csv"), disk).unwrap();
        log.line("2,0.25").unwrap();
        assert_eq!(log.into_inner().data.into_inner(), b"step,value\n1,0.5\n2,0.25\n");
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Floats {
        #[serde(with = "json_float")]
        x: f64,
        #[serde(with = "json_float::option")]
        y: Option<f64>,
    }

    #[test]
    fn non_finite_floats_round_trip_through_json() {
        for (x, y) in [
            (f64::INFINITY, Some(f64::NEG_INFINITY)),
            (1.5, None),
            (-0.25, Some(3.0)),
            (f64::NEG_INFINITY, Some(f64::INFINITY)),
        ] {
            let v = Floats { x, y };
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Floats>(&text).unwrap(), v, "{text}");
        }
        let nan = serde_json::to_string(&Floats {
            x: f64::NAN,
            y: Some(f64::NAN),
        })
        .unwrap();
        assert_eq!(nan, r#"{"x":"nan","y":"nan"}"#);
        let back: Floats = serde_json::from_str(&nan).unwrap();
        assert!(back.x.is_nan() && back.y.unwrap().is_nan());
        // Files written before: `null` where a value was infinite.
        let old: Floats = serde_json::from_str(r#"{"x":null,"y":null}"#).unwrap();
        assert!(old.x.is_nan() && old.y.is_none());
        let err = serde_json::from_str::<Floats>(r#"{"x":"lots","y":null}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("found \"lots\""), "{err}");
    }
}
