//! A run directory: one per training run, never overwritten by accident.

use std::path::{Path, PathBuf};

use crate::TrainError;
use crate::config::TrainConfig;
use crate::files::{at, write_atomic};

/// Name of the resolved configuration inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// A run directory that this process owns.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// Creates `dir` for a new run and saves `config` in it. An existing,
    /// non-empty directory is refused: it may hold someone's results.
    pub fn create(dir: &Path, config: &TrainConfig) -> Result<Self, TrainError> {
        if dir.exists() && std::fs::read_dir(dir).map_err(at(dir))?.next().is_some() {
            return Err(TrainError::RunDirNotEmpty { dir: dir.to_owned() });
        }
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let text = toml::to_string_pretty(config).expect("config serialises to TOML");
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// Opens an existing run directory to resume it, returning its saved config.
    pub fn open(dir: &Path) -> Result<(Self, TrainConfig), TrainError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TrainError::NotARun { dir: dir.to_owned() },
            _ => TrainError::File(at(&path)(e)),
        })?;
        let config = toml::from_str(&text).map_err(|e| TrainError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok((Self { dir: dir.to_owned() }, config))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file inside the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_directory_is_refused() {
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
    }

    #[test]
    fn create_then_open_round_trips_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let cfg = TrainConfig {
            lr: 0.25,
            ..Default::default()
        };
        RunDir::create(&dir, &cfg).unwrap();
        let (_, back) = RunDir::open(&dir).unwrap();
        assert_eq!(back, cfg);
        let err = RunDir::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not a gradscope run"), "{err}");
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
