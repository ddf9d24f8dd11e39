//! Helpers shared by the end-to-end tests: they run the built `gradscope`
//! binary as a user would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn gradscope() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    cmd.env_remove("GRADSCOPE_DATA");
    cmd
}

pub fn run_ok(args: &[&str]) -> String {
    let out = gradscope().args(args).output().expect("spawn gradscope");
    assert!(
        out.status.success(),
        "gradscope {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn run_err(args: &[&str]) -> (Output, String) {
    let out = gradscope().args(args).output().expect("spawn gradscope");
    assert!(!out.status.success(), "gradscope {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist-sample")
}

/// metrics.csv without the wall-clock columns (wall_s, samples_per_s).
pub fn metrics_without_wall_clock(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            [&cols[..2], &cols[3..8]].concat().join(",")
        })
        .collect()
}

/// A JSON file of a run.
pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Args as owned strings, with a path appended.
pub fn args_with(args: &[&str], path: &Path) -> Vec<String> {
    args.iter()
        .map(|s| s.to_string())
        .chain([path.to_str().unwrap().to_owned()])
        .collect()
}

/// Waits (at most two minutes) until `ready` holds.
pub fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The steps of a step-keyed CSV log, in file order, and the first key
/// (all columns but the value) that occurs twice, if any.
pub fn step_log(path: &Path) -> (Vec<u64>, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut steps = Vec::new();
    let mut dup = None;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        steps.push(
            cols[0]
                .parse()
                .unwrap_or_else(|_| panic!("{}: bad row `{line}`", path.display())),
        );
        let key = cols[..cols.len() - 1].join(",");
        if !seen.insert(key.clone()) && dup.is_none() {
            dup = Some(key);
        }
    }
    (steps, dup)
}
