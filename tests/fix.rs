//! `gradscope fix`: each flagged run gets its remedies tried from the same seed
//! and data, and the ranking names a cure only where the rules confirm it.

mod common;

use std::path::Path;

use common::{json, run_ok};

fn train(dir: &Path, args: &[&str]) {
    let out = common::gradscope()
        .arg("train")
        .args(args)
        .args(["--epochs", "1", "--quiet", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    // A diverged run exits with 2 and is still a run to fix.
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The remedies `fix` found to cure the run, best first.
fn cures(run: &Path) -> Vec<String> {
    let out = run_ok(&["fix", run.to_str().unwrap()]);
    let fix = json(
        &run.with_file_name(format!("{}-fix", run.file_name().unwrap().to_str().unwrap()))
            .join("fix.json"),
    );
    let ranking = fix["ranking"].as_array().unwrap();
    let cured: Vec<String> = ranking
        .iter()
        .filter(|j| j["cured"] == true)
        .map(|j| j["remedy"].as_str().unwrap().to_owned())
        .collect();
    // Cures come first, and the control never cures.
    assert!(ranking[..cured.len()].iter().all(|j| j["cured"] == true), "{out}");
    assert!(
        ranking.iter().any(|j| j["remedy"].is_null() && j["cured"] == false),
        "{out}"
    );
    if let Some(best) = cured.first() {
        assert!(out.contains("cures it"), "{out}");
        assert!(!best.is_empty());
    } else {
        assert!(out.contains("no candidate cured it"), "{out}");
    }
    cured
}

#[test]
fn a_deep_sigmoid_net_is_cured_by_relu_he_or_batchnorm() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("sigmoid");
    train(&run, &["--preset", "mlp-sigmoid-10x128", "--lr", "0.1"]);
    let cured = cures(&run);
    assert!(["relu_he", "batch_norm"].contains(&cured[0].as_str()), "{cured:?}");
    // The candidates are ordinary run directories: a second fix reuses them.
    let out = common::gradscope()
        .args(["fix", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused"));
    let (_, err) = common::run_err(&["fix", run.to_str().unwrap(), "--budget", "0"]);
    assert!(err.contains("--budget: found 0"), "{err}");
    let report = tmp.path().join("sigmoid-fix/report/report.html");
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("<svg") && html.contains("Remedies, ranked"));
}

#[test]
fn dead_relus_from_a_bad_bias_are_cured_and_leaky_relu_is_tried() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("dead.toml");
    std::fs::write(
        &config,
        "lr = 0.1\nbatch_size = 64\nmodel = { arch = \"mlp\", depth = 6, width = 128, activation = { kind = \"relu\" }, init = { kind = \"he_normal\" }, bias = -0.75 }\n",
    )
    .unwrap();
    let run = tmp.path().join("dead");
    train(&run, &["--config", config.to_str().unwrap()]);
    assert!(
        json(&run.join("verdicts.json"))["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "dead_relu")
    );
    let cured = cures(&run);
    assert!(
        cured
            .iter()
            .any(|r| ["leaky_relu", "zero_bias", "lower_lr"].contains(&r.as_str())),
        "{cured:?}"
    );
    let tried = json(&tmp.path().join("dead-fix/fix.json"));
    assert!(
        tried["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["remedy"] == "leaky_relu")
    );
}

#[test]
fn a_diverged_run_is_cured_by_a_lower_rate_or_clipping() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("diverged");
    train(&run, &["--preset", "mlp-relu-10x128-he", "--lr", "1"]);
    assert_eq!(json(&run.join("summary.json"))["status"], "diverged");
    let cured = cures(&run);
    assert!(["lower_lr", "clip_grad"].contains(&cured[0].as_str()), "{cured:?}");
}

#[test]
fn a_healthy_run_has_nothing_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("healthy");
    train(&run, &["--preset", "mlp-relu-4x64-he", "--lr", "0.1"]);
    let out = run_ok(&["fix", run.to_str().unwrap()]);
    assert!(out.contains("nothing to fix"), "{out}");
    assert!(!tmp.path().join("healthy-fix").exists(), "nothing trained");
}

#[test]
fn a_run_without_the_probe_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("unprobed");
    train(
        &run,
        &["--preset", "mlp-sigmoid-4x32", "--max-steps", "5", "--probe", "off"],
    );
    let (_, err) = common::run_err(&["fix", run.to_str().unwrap()]);
    assert!(err.contains("verdicts.json") && err.contains("probe"), "{err}");
}
