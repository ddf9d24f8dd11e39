//! TensorBoard export, checked with TensorBoard's own reader: the `tensorboard`
//! Python package's `EventAccumulator` loads a run's event file and every
//! scalar and histogram must match what the run wrote to its CSV files.
//!
//! The reader is `$GRADSCOPE_PYTHON` (CI sets it to a venv with `tensorboard`
//! installed, and then a missing package fails the test) or else `python3`;
//! without Python or the package the test says so and is skipped.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::run_ok;

/// The reader's Python, or why there is none.
fn python() -> Result<String, String> {
    if let Ok(py) = std::env::var("GRADSCOPE_PYTHON") {
        return Ok(py);
    }
    let ok = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok("python3".into())
    } else {
        Err(
            "python3 with the `tensorboard` package not found (pip install tensorboard, or set GRADSCOPE_PYTHON)"
                .into(),
        )
    }
}

fn read_events(py: &str, dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tensorboard_read.py");
    let out = Command::new(py).arg(&script).arg(dir).output().expect("spawn python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from the reader")
}

/// `probe.csv` rows of one metric: layer -> [(step, value)].
fn probe_series(run: &Path, metric: &str) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    let text = std::fs::read_to_string(run.join("probe.csv")).unwrap();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if c[3] == metric && c[1] != "model" {
            out.entry(c[1].to_owned())
                .or_default()
                .push((c[0].parse().unwrap(), c[4].parse().unwrap()));
        }
    }
    out
}

fn series(events: &serde_json::Value, tag: &str) -> Vec<(u64, f64)> {
    events["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "no scalar tag {tag}; tags: {:?}",
                events["scalars"].as_object().map(|o| o.keys().collect::<Vec<_>>())
            )
        })
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn assert_same(tag: &str, got: &[(u64, f64)], want: &[(u64, f64)]) {
    assert_eq!(got.len(), want.len(), "{tag}: {got:?} vs {want:?}");
    for ((gs, gv), (ws, wv)) in got.iter().zip(want) {
        assert_eq!(gs, ws, "{tag}");
        // Stored as float32.
        assert!(
            (gv - wv).abs() <= 1e-6 * wv.abs().max(1e-30),
            "{tag} at step {gs}: {gv} vs {wv}"
        );
    }
}

#[test]
fn tensorboard_reads_what_the_run_measured() {
    let py = match python() {
        Ok(py) => py,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(&[
        "train",
        "--preset",
        "mlp-sigmoid-4x32",
        "--max-steps",
        "12",
        "--batch-size",
        "32",
        "--log-every",
        "2",
        "--eval-every",
        "6",
        "--probe",
        "2",
        "--probe-update-every",
        "1",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    let event_files = || {
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
            .count()
    };
    assert_eq!(event_files(), 1, "one event file, written by training");
    let events = read_events(&py, &run);

    // Every probed layer's weight-gradient norm and back-propagated signal.
    for (metric, group) in [
        ("grad_l2", "grad_norm"),
        ("signal_rms", "signal_rms"),
        ("saturated_frac", "saturated_fraction"),
    ] {
        let want = probe_series(&run, metric);
        assert!(!want.is_empty(), "{metric} in probe.csv");
        for (layer, want) in want {
            let tag = format!("{group}/{layer}");
            assert_same(&tag, &series(&events, &tag), &want);
        }
    }
    // Training curves from metrics.csv.
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let step: u64 = c[0].parse().unwrap();
        if let Ok(v) = c[4].parse::<f64>() {
            train.push((step, v));
        }
        if let Ok(v) = c[7].parse::<f64>() {
            test.push((step, v));
        }
    }
    assert_same("loss/train", &series(&events, "loss/train"), &train);
    assert_same("accuracy/test", &series(&events, "accuracy/test"), &test);
    assert_eq!(series(&events, "verdict/healthy").len(), 1);

    // |g| histograms: one per probed step and layer, as many entries as the weights.
    let hists = events["histograms"].as_object().unwrap();
    let grads = probe_series(&run, "grad_l2");
    let numel = probe_series(&run, "weight_numel");
    let zeros = probe_series(&run, "grad_zero_frac");
    assert_eq!(hists.len(), grads.len(), "{:?}", hists.keys().collect::<Vec<_>>());
    for (layer, steps) in &grads {
        let h = hists[&format!("grad_log10_abs/{layer}")].as_array().unwrap();
        let got: Vec<u64> = h.iter().map(|e| e[0].as_u64().unwrap()).collect();
        assert_eq!(got, steps.iter().map(|s| s.0).collect::<Vec<_>>(), "{layer}");
        for (k, e) in h.iter().enumerate() {
            let n = numel[layer][k].1 * (1.0 - zeros[layer][k].1);
            assert!(
                (e[1].as_f64().unwrap() - n).abs() < 0.5,
                "{layer}: {e} vs {n} non-zero entries"
            );
            assert!(e[2].as_f64().unwrap() < e[3].as_f64().unwrap());
        }
    }

    // Rewritten, not added to: exporting again leaves one file with the same events.
    let out = run_ok(&["tensorboard", run.to_str().unwrap()]);
    assert!(out.contains("tensorboard --logdir"), "{out}");
    assert_eq!(event_files(), 1);
    assert_eq!(read_events(&py, &run), events);
}

#[test]
fn tensorboard_command_names_a_folder_without_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, err) = common::run_err(&["tensorboard", tmp.path().to_str().unwrap()]);
    assert!(
        err.contains("no run directory") && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
}
