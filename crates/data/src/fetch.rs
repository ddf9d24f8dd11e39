//! Verified, atomic downloads of catalogue datasets.
//!
//! Each file is streamed into a temporary file beside its destination while its
//! MD5 is computed; only a complete file whose checksum matches the publisher's is
//! renamed into place. A cut connection, a wrong checksum or a crash leaves no file
//! under the final name, so a later run never trusts a partial download.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::catalog::{CatalogEntry, RemoteFile};

/// What the downloader reports while it works (for a progress bar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// A file is already present with the right checksum; nothing to download.
    AlreadyVerified { file: &'static str },
    /// A download starts; `total` is the announced size when the server gives one.
    Started {
        file: &'static str,
        url: String,
        total: Option<u64>,
    },
    /// `bytes` of the current file have arrived so far.
    Progress { file: &'static str, bytes: u64 },
    /// The file arrived and its checksum matched.
    Verified { file: &'static str, bytes: u64 },
    /// A mirror failed; the next one will be tried.
    MirrorFailed {
        file: &'static str,
        url: String,
        error: String,
    },
}

/// Why a download failed. Each names the file and, where it applies, the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: cannot write: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: request failed: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: connection ended after {received} of {expected} bytes")]
    Truncated { url: String, received: u64, expected: u64 },
    #[error("{url}: MD5 is {found}; the publisher's checksum is {expected}")]
    Checksum {
        url: String,
        found: String,
        expected: String,
    },
    #[error("{file}: every mirror failed:\n  {}", .errors.join("\n  "))]
    AllMirrorsFailed { file: String, errors: Vec<String> },
}

/// Downloads `entry`'s four files into `dest` (created if needed), skipping files
/// already present with the right checksum. `mirrors` overrides the catalogue's
/// base URLs (e.g. a local mirror); `None` uses the catalogue's.
pub fn fetch(
    entry: &CatalogEntry,
    dest: &Path,
    mirrors: Option<&[String]>,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let bases: Vec<String> = match mirrors {
        Some(m) => m.to_vec(),
        None => entry.mirrors.iter().map(|s| s.to_string()).collect(),
    };
    std::fs::create_dir_all(dest).map_err(|source| FetchError::Io {
        path: dest.to_owned(),
        source,
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    for file in &entry.files {
        let target = dest.join(file.name);
        if md5_of_file(&target).is_some_and(|m| m == file.md5) {
            on_event(FetchEvent::AlreadyVerified { file: file.name });
            continue;
        }
        let mut errors = Vec::new();
        let mut done = false;
        for base in &bases {
            let url = format!("{}/{}", base.trim_end_matches('/'), file.name);
            match download_one(&agent, &url, file, &target, on_event) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e @ FetchError::Io { .. }) => return Err(e),
                Err(e) => {
                    on_event(FetchEvent::MirrorFailed {
                        file: file.name,
                        url,
                        error: e.to_string(),
                    });
                    errors.push(e.to_string());
                }
            }
        }
        if !done {
            return Err(FetchError::AllMirrorsFailed {
                file: file.name.to_owned(),
                errors,
            });
        }
    }
    Ok(())
}

/// MD5 of a file as lowercase hex, or `None` if it cannot be read.
pub fn md5_of_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut hasher = Md5::new();
    std::io::copy(&mut f, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

fn download_one(
    agent: &ureq::Agent,
    url: &str,
    file: &RemoteFile,
    target: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let http = |source| FetchError::Http {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let mut response = agent.get(url).call().map_err(http)?;
    let total = response.body().content_length();
    on_event(FetchEvent::Started {
        file: file.name,
        url: url.to_owned(),
        total,
    });

    let dir = target.parent().expect("target has a parent");
    let io = |source| FetchError::Io {
        path: dir.to_owned(),
        source,
    };
    // Dropping the temporary file deletes it, so every early return cleans up.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file.name))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(io)?;
    let mut reader = response.body_mut().as_reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if total.is_some() => {
                return Err(FetchError::Truncated {
                    url: url.to_owned(),
                    received,
                    expected: total.unwrap_or_default(),
                });
            }
            Err(e) => return Err(http(ureq::Error::Io(e))),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io)?;
        received += n as u64;
        on_event(FetchEvent::Progress {
            file: file.name,
            bytes: received,
        });
    }
    if let Some(expected) = total.filter(|&t| t != received) {
        return Err(FetchError::Truncated {
            url: url.to_owned(),
            received,
            expected,
        });
    }
    let found = hex::encode(hasher.finalize());
    if found != file.md5 {
        return Err(FetchError::Checksum {
            url: url.to_owned(),
            found,
            expected: file.md5.to_owned(),
        });
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(target).map_err(|e| FetchError::Io {
        path: target.to_owned(),
        source: e.error,
    })?;
    on_event(FetchEvent::Verified {
        file: file.name,
        bytes: received,
    });
    Ok(())
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for tests: serves fixed bodies, and can
/// announce a length and then hang up half-way to simulate a cut connection.
#[doc(hidden)]
pub mod test_server {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// How to answer requests for one path.
    #[derive(Clone)]
    pub enum Reply {
        Full(Vec<u8>),
        /// Announce the full length, send half, close the connection.
        CutHalfway(Vec<u8>),
    }

    /// Starts serving `routes` (path -> reply) on a free loopback port in a
    /// background thread; returns the base URL. Unknown paths get 404.
    pub fn serve(routes: HashMap<String, Reply>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let routes = Arc::clone(&routes);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let _ = match routes.get(&path) {
                        None => stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                        Some(Reply::Full(body)) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body))
                        }
                        Some(Reply::CutHalfway(body)) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            stream
                                .write_all(head.as_bytes())
                                .and_then(|_| stream.write_all(&body[..body.len() / 2]))
                        }
                    };
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{Reply, serve};
    use super::*;
    use std::collections::HashMap;

    /// A catalogue entry whose files are the bundled sample, with their real MD5s.
    fn sample_entry() -> (CatalogEntry, HashMap<String, Reply>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-sample");
        let mut routes = HashMap::new();
        let names = [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ];
        let md5s: Vec<&'static str> = names
            .iter()
            .map(|n| {
                let bytes = std::fs::read(dir.join(n)).unwrap();
                routes.insert(format!("/{n}"), Reply::Full(bytes.clone()));
                &*Box::leak(hex::encode(Md5::digest(&bytes)).into_boxed_str())
            })
            .collect();
        let files = std::array::from_fn(|i| RemoteFile {
            name: names[i],
            md5: md5s[i],
        });
        let entry = CatalogEntry {
            name: "sample",
            description: "",
            homepage: "",
            licence: "",
            mirrors: &[],
            files,
        };
        (entry, routes)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn downloads_verifies_and_loads() {
        let (entry, routes) = sample_entry();
        let url = serve(routes);
        let tmp = tempfile::tempdir().unwrap();
        let mut events = Vec::new();
        fetch(&entry, tmp.path(), Some(std::slice::from_ref(&url)), &mut |e| {
            events.push(e)
        })
        .unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, FetchEvent::Verified { .. }))
                .count(),
            4
        );
        let d = crate::MnistLike::from_dir("sample", tmp.path()).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (8000, 2000));
        // A second fetch finds everything verified and downloads nothing.
        let mut again = Vec::new();
        fetch(&entry, tmp.path(), Some(&[url]), &mut |e| again.push(e)).unwrap();
        assert!(
            again.iter().all(|e| matches!(e, FetchEvent::AlreadyVerified { .. })),
            "{again:?}"
        );
    }

    #[test]
    fn wrong_checksum_leaves_no_file() {
        let (mut entry, routes) = sample_entry();
        entry.files[1].md5 = "00000000000000000000000000000000";
        let url = serve(routes);
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch(&entry, tmp.path(), Some(&[url]), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("train-labels-idx1-ubyte.gz: MD5 is "), "{err}");
        assert!(
            err.contains("the publisher's checksum is 00000000000000000000000000000000"),
            "{err}"
        );
        assert_eq!(leftovers(tmp.path()), vec!["train-images-idx3-ubyte.gz".to_string()]);
    }

    #[test]
    fn cut_connection_leaves_no_file_and_falls_back_to_next_mirror() {
        let (entry, routes) = sample_entry();
        let cut: HashMap<String, Reply> = routes
            .iter()
            .map(|(k, v)| match v {
                Reply::Full(b) => (k.clone(), Reply::CutHalfway(b.clone())),
                other => (k.clone(), other.clone()),
            })
            .collect();
        let bad = serve(cut);
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch(&entry, tmp.path(), Some(std::slice::from_ref(&bad)), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("every mirror failed") && err.contains("connection ended after"),
            "{err}"
        );
        assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));

        let good = serve(routes);
        let mut failed = 0;
        fetch(&entry, tmp.path(), Some(&[bad, good]), &mut |e| {
            failed += matches!(e, FetchEvent::MirrorFailed { .. }) as usize
        })
        .unwrap();
        assert_eq!(failed, 4);
        assert_eq!(leftovers(tmp.path()).len(), 4);
    }

    #[test]
    fn missing_file_is_an_http_error_naming_the_url() {
        let (entry, _) = sample_entry();
        let url = serve(HashMap::new());
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch(&entry, tmp.path(), Some(std::slice::from_ref(&url)), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{url}/train-images-idx3-ubyte.gz: request failed")),
            "{err}"
        );
    }
}
