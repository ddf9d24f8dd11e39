//! A run directory: one per training run, its layout (the file names every
//! crate uses), and its lifecycle. A process that trains into a directory holds
//! an exclusive lock on it for the life of the run, so a second writer is
//! refused with the holder's PID; the lock is the kernel's (`flock`), so it
//! goes with the process, also after `kill -9`. On resume every append-only
//! log is cut back to the checkpoint the run continues from.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::TrainError;
use crate::config::TrainConfig;
use crate::files::{at, retain_lines, truncate_lines, write_atomic};
use crate::metrics::Summary;

/// The resolved configuration (rerun it with `--config`).
pub const CONFIG_FILE: &str = "config.toml";
/// One row per logged step ([`crate::MetricsRow`]).
pub const METRICS_FILE: &str = "metrics.csv";
/// One JSON object per line: start, evaluation, checkpoint, resume, end.
pub const EVENTS_FILE: &str = "events.jsonl";
/// How the run ended, with its final and best numbers ([`Summary`]).
pub const SUMMARY_FILE: &str = "summary.json";
/// The gradient probe's records, `step,layer,depth,metric,value`.
pub const PROBE_FILE: &str = "probe.csv";
/// The probe's |g| histograms, `step,layer,depth,bin_lo_log10,count`.
pub const PROBE_HIST_FILE: &str = "probe_hist.csv";
/// The network's probe points.
pub const POINTS_FILE: &str = "points.json";
/// The probe's verdicts with evidence and remedies.
pub const VERDICTS_FILE: &str = "verdicts.json";
/// The probe records around the first non-finite value of a diverged run.
pub const FORENSICS_FILE: &str = "forensics.json";
/// Checkpoints ([`crate::checkpoint`]).
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The per-run report (`report.html` and its charts).
pub const REPORT_DIR: &str = "report";
/// Name prefix of the run's TensorBoard event file, kept in the run directory
/// itself so that TensorBoard names the run after it.
pub const TENSORBOARD_PREFIX: &str = "events.out.tfevents.";
/// Locked by the process writing the run; holds its PID.
pub const LOCK_FILE: &str = ".lock";

/// Logs whose rows start with the optimiser step they measured (0-based, the
/// step being taken): on resume from a checkpoint after `n` steps, rows of
/// steps `>= n` were written by the run that died and are dropped.
const STEP_LOGS: [&str; 2] = [PROBE_FILE, PROBE_HIST_FILE];

/// A run directory that this process owns: the lock is held while any clone lives.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    _lock: Arc<File>,
}

impl RunDir {
    /// Creates `dir` for a new run and saves `config` in it. An existing,
    /// non-empty directory is refused (it may hold someone's results) before
    /// anything is written into it.
    pub fn create(dir: &Path, config: &TrainConfig) -> Result<Self, TrainError> {
        let run = Self::claim(dir)?;
        run.save_config(config)?;
        Ok(run)
    }

    /// Creates and locks `dir` for a new run without writing anything into
    /// it: for a training loop gradscope does not drive (there is no
    /// `config.toml` to save). Refuses an existing, non-empty directory.
    pub fn claim(dir: &Path) -> Result<Self, TrainError> {
        refuse_non_empty(dir)?;
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let lock = lock(dir)?;
        // Another process may have started a run here between the check and the lock.
        refuse_non_empty(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: Arc::new(lock),
        })
    }

    /// Opens an existing run directory to resume it, returning its saved config.
    pub fn open(dir: &Path) -> Result<(Self, TrainConfig), TrainError> {
        let config = read_config(dir)?;
        let lock = lock(dir)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                _lock: Arc::new(lock),
            },
            config,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file inside the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Saves a changed configuration (a resumed run extended to more steps).
    pub fn save_config(&self, config: &TrainConfig) -> Result<(), TrainError> {
        let text = toml::to_string_pretty(config).expect("config serialises to TOML");
        Ok(write_atomic(&self.path(CONFIG_FILE), text.as_bytes())?)
    }

    /// Cuts every append-only log back to a checkpoint taken after `step`
    /// steps, when `metrics.csv` had `metrics_lines` lines: what the run wrote
    /// after it would otherwise be duplicated by the resumed run.
    pub fn rewind(&self, step: u64, metrics_lines: usize) -> Result<(), TrainError> {
        truncate_lines(&self.path(METRICS_FILE), metrics_lines)?;
        for name in STEP_LOGS {
            retain_lines(&self.path(name), |i, line| {
                i == 0
                    || line
                        .split(',')
                        .next()
                        .and_then(|s| s.parse::<u64>().ok())
                        .is_some_and(|s| s < step)
            })?;
        }
        Ok(())
    }
}

/// Whether `dir` holds a run: a `metrics.csv` with a `config.toml` (a run of
/// `gradscope train`) or the probe's `points.json` (a `ModelProbe` in a loop
/// of the user's own).
pub fn is_run(dir: &Path) -> bool {
    dir.join(METRICS_FILE).is_file() && (dir.join(CONFIG_FILE).is_file() || dir.join(POINTS_FILE).is_file())
}

/// The configuration saved in a run directory.
pub fn read_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TrainError::NotARun { dir: dir.to_owned() },
        _ => TrainError::File(at(&path)(e)),
    })?;
    TrainConfig::from_toml(&text).map_err(|e| TrainError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// The summary of a run that has ended (or stopped), if it has one.
pub fn read_summary(dir: &Path) -> Result<Option<Summary>, TrainError> {
    let path = dir.join(SUMMARY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| TrainError::Config {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::File(at(&path)(e))),
    }
}

fn refuse_non_empty(dir: &Path) -> Result<(), TrainError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(at(dir))?;
    // A lock file alone is what a run that failed before writing anything leaves.
    if entries.any(|e| e.map_or(true, |e| e.file_name() != LOCK_FILE)) {
        return Err(TrainError::RunDirNotEmpty { dir: dir.to_owned() });
    }
    Ok(())
}

/// Takes the run directory's lock and writes this process's PID into it.
fn lock(dir: &Path) -> Result<File, TrainError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(at(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // The holder writes its PID right after taking the lock: give it a moment.
            let mut holder = String::new();
            for _ in 0..10 {
                holder.clear();
                let _ = file.seek(std::io::SeekFrom::Start(0));
                let _ = file.read_to_string(&mut holder);
                if !holder.trim().is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let holder = holder.trim();
            return Err(TrainError::Locked {
                dir: dir.to_owned(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    format!("process {holder}")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::File(at(&path)(e))),
    }
    file.set_len(0).map_err(at(&path))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(at(&path))?;
    Ok(file)
}

/// One line of `events.jsonl`: `{"time": RFC 3339, "event": name, ...fields}`.
pub fn event(name: &str, fields: serde_json::Value) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into(),
    );
    obj.insert("event".into(), name.into());
    if let serde_json::Value::Object(extra) = fields {
        obj.extend(extra);
    }
    serde_json::Value::Object(obj).to_string()
}

/// When a run started and the steps it planned: its `start` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// Unix time, in seconds.
    pub unix_s: f64,
    pub total_steps: u64,
}

/// Reads the run's `start` event back from `events.jsonl`, if it has one.
pub fn read_start(dir: &Path) -> Option<Started> {
    let text = std::fs::read_to_string(dir.join(EVENTS_FILE)).ok()?;
    text.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["event"] == "start").then_some(())?;
        let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str()?).ok()?;
        Some(Started {
            unix_s: time.timestamp_millis() as f64 / 1000.0,
            total_steps: v["total_steps"].as_u64()?,
        })
    })
}

/// How a run ended, from its `end` event (the status it names), if the last
/// event in `events.jsonl` is one; `None` while it trains (or if it was killed).
pub fn read_end(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(EVENTS_FILE)).ok()?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    (last["event"] == "end").then(|| last["status"].as_str().unwrap_or("ended").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_directory_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
        let err = RunDir::create(tmp.path(), &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("precious.txt")).unwrap(),
            "keep me"
        );
        assert!(
            !tmp.path().join(LOCK_FILE).exists(),
            "nothing added to the user's directory"
        );
    }

    #[test]
    fn create_then_open_round_trips_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let cfg = TrainConfig {
            lr: 0.25,
            ..Default::default()
        };
        drop(RunDir::create(&dir, &cfg).unwrap());
        let (_, back) = RunDir::open(&dir).unwrap();
        assert_eq!(back, cfg);
        let err = RunDir::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not a gradscope run"), "{err}");
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = RunDir::create(&dir, &TrainConfig::default()).unwrap();
        let err = RunDir::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("in use") && err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        // A clone keeps the lock; dropping every handle releases it.
        let clone = run.clone();
        drop(run);
        assert!(RunDir::open(&dir).is_err());
        drop(clone);
        RunDir::open(&dir).unwrap();
    }

    #[test]
    fn rewind_cuts_every_log_to_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = RunDir::create(&dir, &TrainConfig::default()).unwrap();
        std::fs::write(run.path(METRICS_FILE), "h\n0,a\n10,b\n20,c\n30,d\n").unwrap();
        std::fs::write(
            run.path(PROBE_FILE),
            "step,layer\n8,x\n9,x\n19,x\n20,x\n25,x\n21,x\n19,y\n30,torn",
        )
        .unwrap();
        run.rewind(20, 3).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.path(METRICS_FILE)).unwrap(),
            "h\n0,a\n10,b\n"
        );
        assert_eq!(
            std::fs::read_to_string(run.path(PROBE_FILE)).unwrap(),
            "step,layer\n8,x\n9,x\n19,x\n19,y\n"
        );
        assert!(!run.path(PROBE_HIST_FILE).exists());
    }

    #[test]
    fn the_start_event_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_start(dir.path()), None);
        let lines = [
            event("evaluation", serde_json::json!({ "step": 0 })),
            event("start", serde_json::json!({ "total_steps": 40 })),
        ];
        std::fs::write(dir.path().join(EVENTS_FILE), lines.join("\n")).unwrap();
        let started = read_start(dir.path()).unwrap();
        assert_eq!(started.total_steps, 40);
        assert!((started.unix_s - chrono::Utc::now().timestamp() as f64).abs() < 60.0);
    }

    /// Ended only while the last event is `end`: a resumed run is running again.
    #[test]
    fn the_end_event_reads_back_only_as_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_end(dir.path()), None);
        let mut lines = vec![
            event("start", serde_json::json!({ "total_steps": 40 })),
            event("end", serde_json::json!({ "status": "interrupted", "step": 12 })),
        ];
        std::fs::write(dir.path().join(EVENTS_FILE), lines.join("\n")).unwrap();
        assert_eq!(read_end(dir.path()).as_deref(), Some("interrupted"));
        lines.push(event("resume", serde_json::json!({ "step": 12 })));
        std::fs::write(dir.path().join(EVENTS_FILE), lines.join("\n")).unwrap();
        assert_eq!(read_end(dir.path()), None);
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        let line = event("checkpoint", serde_json::json!({ "step": 3 }));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "checkpoint");
        assert_eq!(v["step"], 3);
        assert!(!line.contains('\n'));
    }
}
