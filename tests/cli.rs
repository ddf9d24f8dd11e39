//! End-to-end tests: they run the built `gradscope` binary as a user would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn help_lists_subcommands_with_examples() {
    let help = run_ok(&["--help"]);
    for sub in ["data", "models", "train"] {
        assert!(help.contains(sub), "{help}");
    }
    assert!(help.contains("Example: `gradscope"), "{help}");
}

#[test]
fn data_info_on_bundled_sample() {
    let out = run_ok(&["data", "info"]);
    assert!(out.contains("dataset: mnist-sample"), "{out}");
    assert!(out.contains("train    8000 images"), "{out}");
    assert!(out.contains("test     2000 images"), "{out}");
    assert!(
        out.contains("73795c1c6c2d3483979a923bb8199b62fbd14e139a126f98964d7e6d41b79581"),
        "{out}"
    );
}

#[test]
fn data_info_on_any_idx_folder_and_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(sample_dir()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    let dir = tmp.path().to_str().unwrap();
    let out = run_ok(&["data", "info", "my-digits", "--data-dir", dir, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["train"]["count"], 8000);
    assert_eq!(v["image_shape"], serde_json::json!([28, 28]));

    // A truncated gzip file is named, with what went wrong.
    let labels = tmp.path().join("t10k-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &bytes[..bytes.len() / 2]).unwrap();
    let (_, err) = run_err(&["data", "info", "x", "--data-dir", dir]);
    assert!(
        err.contains("t10k-labels-idx1-ubyte.gz") && err.contains("gzip stream is corrupt or truncated"),
        "{err}"
    );

    // A label file where images belong: the magic number names both.
    std::fs::write(&labels, &bytes).unwrap();
    std::fs::copy(
        tmp.path().join("train-labels-idx1-ubyte.gz"),
        tmp.path().join("train-images-idx3-ubyte.gz"),
    )
    .unwrap();
    let (_, err) = run_err(&["data", "info", "x", "--data-dir", dir]);
    assert!(
        err.contains("train-images-idx3-ubyte.gz: bad magic number 0x00000801; expected 0x00000803"),
        "{err}"
    );
}

#[test]
fn data_fetch_from_a_local_mirror() {
    use gradscope_data::fetch::test_server::{Reply, serve};
    // Serve the real MNIST file names with the bundled bytes: checksums will not
    // match the publisher's, which is exactly what must be refused.
    let mut routes = std::collections::HashMap::new();
    for f in std::fs::read_dir(sample_dir()).unwrap() {
        let f = f.unwrap();
        routes.insert(
            format!("/{}", f.file_name().to_string_lossy()),
            Reply::Full(std::fs::read(f.path()).unwrap()),
        );
    }
    let url = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    let (_, err) = run_err(&[
        "data",
        "fetch",
        "mnist",
        "--quiet",
        "--mirror",
        &url,
        "--data-dir",
        cache.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains("MD5 is") && err.contains("f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(cache.path().join("mnist")).unwrap().collect();
    assert!(left.is_empty(), "no file may be left that a later run would trust");
}

#[test]
fn models_list_and_show() {
    let out = run_ok(&["models", "list"]);
    // 784*128+128 + 9*(128*128+128) + 128*10+10
    assert!(
        out.lines()
            .any(|l| l.starts_with("mlp-sigmoid-10x128") && l.contains(" 250378 ")),
        "{out}"
    );
    let show = run_ok(&["models", "show", "resnet8-residual"]);
    assert!(show.contains("stage2.block1.conv2") && show.contains("head"), "{show}");
    let (_, err) = run_err(&["models", "show", "mlp-nope"]);
    assert!(err.contains("unknown preset `mlp-nope`"), "{err}");
    // The layout another framework rebuilds the network from (bench/pytorch/bench.py).
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["models", "show", "mlp-tanh-residual-6x32", "--json"])).unwrap();
    assert_eq!(json["arch"], "mlp");
    assert_eq!(json["widths"], serde_json::json!([32, 32, 32, 32, 32, 32]));
    assert_eq!(json["residual_blocks"], serde_json::json!([[1, 2], [3, 4], [5, 5]]));
    // 784*32+32 + 5*(32*32+32) + 32*10+10
    assert_eq!(json["trainable_params"], 30730);
}

#[test]
fn train_writes_a_complete_run_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let out = run_ok(&[
        "train",
        "--preset",
        "mlp-relu-2x32",
        "--max-steps",
        "20",
        "--log-every",
        "5",
        "--out",
        r,
        "--quiet",
    ]);
    assert!(out.contains("test accuracy") && out.contains(r), "{out}");
    for f in [
        "config.toml",
        "metrics.csv",
        "events.jsonl",
        "summary.json",
        "checkpoints/latest",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(
        lines[0],
        "step,epoch,wall_s,lr,train_loss,train_acc,test_loss,test_acc,samples_per_s"
    );
    assert_eq!(lines.len(), 1 + 5, "step 0 plus steps 5, 10, 15, 20");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["steps"], 20);
    assert!(summary["final_test_acc"].as_f64().unwrap() > 0.5, "{summary}");
    // The untrained net is evaluated at step 0: its loss is that of a near-random guess.
    let initial = summary["initial_test_loss"].as_f64().unwrap();
    assert!(
        (1.5..6.0).contains(&initial),
        "initial loss {initial} should be of the order of ln 10"
    );

    let before = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let (_, err) = run_err(&[
        "train",
        "--preset",
        "mlp-relu-2x32",
        "--max-steps",
        "5",
        "--out",
        r,
        "--quiet",
    ]);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv")).unwrap(),
        before,
        "existing run untouched"
    );
}

#[test]
fn same_seed_gives_identical_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("r{i}"))).collect();
    for r in &runs {
        run_ok(&[
            "train",
            "--preset",
            "mlp-sigmoid-3x64",
            "--max-steps",
            "30",
            "--log-every",
            "3",
            "--seed",
            "7",
            "--out",
            r.to_str().unwrap(),
            "--quiet",
        ]);
    }
    assert_eq!(
        metrics_without_wall_clock(&runs[0]),
        metrics_without_wall_clock(&runs[1])
    );
}

#[test]
fn killed_run_resumes_to_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--preset",
            "mlp-relu-4x512",
            "--epochs",
            "3",
            "--momentum",
            "0.9",
            "--lr",
            "0.05",
            "--log-every",
            "7",
            "--quiet",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_owned()])
        .collect()
    };
    let whole = tmp.path().join("whole");
    let out = gradscope().args(args(&whole)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let killed = tmp.path().join("killed");
    let mut child = gradscope().args(args(&killed)).spawn().unwrap();
    let latest = killed.join("checkpoints/latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !latest.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(150)); // into epoch 2
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let summary_after_kill = killed.join("summary.json").exists();
    assert!(!summary_after_kill, "a killed run writes no summary");

    let out = gradscope()
        .args(["train", "--resume", killed.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(metrics_without_wall_clock(&whole), metrics_without_wall_clock(&killed));
    // The probe's logs were cut back to the checkpoint too: each record once,
    // in step order, the same steps as the run that was not killed.
    for log in ["probe.csv", "probe_hist.csv"] {
        let (steps, dup) = step_log(&killed.join(log));
        assert_eq!(dup, None, "{log}");
        assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{log} goes back in steps");
        let mut expected = step_log(&whole.join(log)).0;
        let mut got = steps;
        expected.dedup();
        got.dedup();
        assert_eq!(got, expected, "{log}");
    }
    // The verdicts judge the whole run, from its first step.
    assert_eq!(
        json(&killed.join("verdicts.json"))["initial_loss"],
        json(&whole.join("verdicts.json"))["initial_loss"]
    );
}

#[test]
fn bad_flags_are_named() {
    let (_, err) = run_err(&["train", "--backend", "tpu"]);
    assert!(
        err.contains("unknown backend `tpu`; expected flex, ndarray, wgpu or cuda"),
        "{err}"
    );
    let (_, err) = run_err(&["train", "--lr=-1", "--out", "/nonexistent/never"]);
    assert!(
        err.contains("--lr: found -1; expected a positive finite number"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "learning_rate = 3\n").unwrap();
    let (_, err) = run_err(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains("run.toml") && err.contains("unknown key `learning_rate`"),
        "{err}"
    );
}

#[test]
fn backends_agree_on_the_first_20_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("parity");
    let stdout = run_ok(&[
        "parity",
        "--backends",
        "flex,ndarray,wgpu",
        "--preset",
        "mlp-sigmoid-3x64",
        "--steps",
        "20",
        "--tol",
        "1e-4",
        "--strict",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("wgpu") && stdout.contains("ndarray"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("parity.json")).unwrap()).unwrap();
    for row in v["rows"].as_array().unwrap() {
        assert!(row["max_loss_rel_diff"].as_f64().unwrap() < 1e-4, "{row}");
    }
    // The back-propagated signal (read through the gradient captures) is
    // measured on every backend, and agrees at step 0.
    let signal = |backend: &str| -> Vec<(String, f64)> {
        std::fs::read_to_string(out.join(backend).join("probe.csv"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0] == "0" && f[3] == "signal_l2").then(|| (f[1].to_owned(), f[4].parse().unwrap()))
            })
            .collect()
    };
    let flex = signal("flex");
    assert_eq!(flex.len(), 4, "3 hidden layers and the head: {flex:?}");
    for backend in ["ndarray", "wgpu"] {
        let other = signal(backend);
        assert_eq!(other.len(), flex.len(), "{backend}: {other:?}");
        for ((la, a), (lb, b)) in flex.iter().zip(&other) {
            assert_eq!(la, lb);
            assert!((a - b).abs() <= 1e-4 * a.abs(), "{backend} {la}: {a} vs {b}");
        }
    }
}

#[test]
fn train_prints_the_probe_table_and_inspect_repeats_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let out = run_ok(&[
        "train",
        "--preset",
        "mlp-sigmoid-6x32",
        "--max-steps",
        "30",
        "--probe",
        "1",
        "--out",
        r,
        "--quiet",
    ]);
    assert!(out.contains("hidden.1") && out.contains("verdict:"), "{out}");
    let inspected = run_ok(&["inspect", r]);
    assert!(
        inspected.contains("hidden.6") && inspected.contains("verdict:"),
        "{inspected}"
    );
    let probe = std::fs::read_to_string(run.join("probe.csv")).unwrap();
    assert!(probe.starts_with("step,layer,depth,metric,value\n"));
    assert!(probe.contains(",hidden.1,0,signal_rms,"));
    let hist = std::fs::read_to_string(run.join("probe_hist.csv")).unwrap();
    assert!(hist.lines().count() > 1, "{hist}");
}

#[test]
fn a_diverging_run_stops_cleanly_with_its_diagnosis() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = gradscope()
        .args([
            "train",
            "--preset",
            "mlp-relu-4x64",
            "--lr",
            "1e6",
            "--max-steps",
            "40",
            "--probe",
            "1",
            "--quiet",
            "--out",
            run.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    assert!(summary["diverged"]["step"].as_u64().unwrap() < 40);
    let forensics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("forensics.json")).unwrap()).unwrap();
    assert!(
        forensics["first_layer"].is_string() && forensics["records"].as_array().is_some_and(|r| !r.is_empty()),
        "{forensics}"
    );
}

#[test]
fn compare_builds_a_self_contained_report_from_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("sigmoid");
    let b = tmp.path().join("relu");
    run_ok(&[
        "train",
        "--preset",
        "mlp-sigmoid-6x32",
        "--max-steps",
        "30",
        "--log-every",
        "5",
        "--probe",
        "2",
        "--quiet",
        "--out",
        a.to_str().unwrap(),
    ]);
    run_ok(&[
        "train",
        "--preset",
        "mlp-relu-6x32",
        "--max-steps",
        "30",
        "--log-every",
        "5",
        "--probe",
        "2",
        "--quiet",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(
        a.join("report/report.html").exists(),
        "train writes a single-run report"
    );

    // A broken run directory is skipped with a warning, not a panic.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let out_dir = tmp.path().join("cmp");
    let out = gradscope()
        .args([
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            broken.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped") && stderr.contains("broken"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sigmoid") && stdout.contains("relu") && stdout.contains("training loss"),
        "{stdout}"
    );

    for svg in std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
    {
        let text = std::fs::read_to_string(&svg).unwrap();
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not XML: {e}", svg.display()));
        assert!(svg.with_extension("csv").exists(), "data beside {}", svg.display());
    }
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(
        html.contains("sigmoid") && html.contains("relu"),
        "the report names each run"
    );
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );
    assert!(html.matches("<svg").count() >= 6);

    let (_, err) = run_err(&["compare", broken.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    assert!(err.contains("no usable run"), "{err}");
}

#[test]
fn quick_lab_states_a_verdict_for_each_claim_and_reuses_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lab");
    let o = out.to_str().unwrap();
    let stdout = run_ok(&["lab", "--quick", "--quiet", "--out", o]);
    let claims: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("claims.json")).unwrap()).unwrap();
    let claims = claims["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 6);
    for c in claims {
        let outcome = c["outcome"].as_str().unwrap();
        assert!(outcome == "confirmed" || outcome == "not_confirmed", "{c}");
        assert!(!c["evidence"].as_array().unwrap().is_empty(), "{c}");
    }
    // Every claim holds on real data, by its written rule.
    for c in claims {
        assert_eq!(c["outcome"], "confirmed", "{c}");
    }
    // The central number: the signal shrinks per sigmoid layer, within sigmoid' <= 0.25.
    let evidence = claims[0]["evidence"].to_string();
    assert!(
        evidence.contains("through the activation alone x0.2") && evidence.contains("f' <= 0.250"),
        "{evidence}"
    );
    assert!(stdout.contains("CONFIRMED"), "{stdout}");
    // One section per claim, each with its verdict and only its own runs in its charts.
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert_eq!(html.matches("<section id=").count(), 6, "one section per claim");
    for c in claims {
        let id = c["id"].as_str().unwrap();
        let start = html.find(&format!("<section id=\"{id}\">")).unwrap();
        let section = &html[start..start + html[start..].find("</section>").unwrap()];
        assert!(
            section.contains("CONFIRMED") && section.contains("What to look at"),
            "{id}"
        );
        let runs = c["runs"].as_array().unwrap().len();
        for chart in ["loss_train_step", "acc_test_step", "start_signal_rms"] {
            let csv = std::fs::read_to_string(out.join(format!("report/{id}-{chart}.csv"))).unwrap();
            let lines: std::collections::BTreeSet<&str> =
                csv.lines().skip(1).map(|l| l.split("\",").next().unwrap()).collect();
            assert!(
                !lines.is_empty() && lines.len() <= runs,
                "{id}-{chart}: {} lines for {runs} runs",
                lines.len()
            );
            assert!(
                section.contains(&format!("{id}-{chart}.csv")),
                "{id}: {chart} drawn in its section"
            );
        }
    }

    // A second run reuses every completed run.
    let again = gradscope()
        .args(["lab", "--quick", "--quiet", "--out", o])
        .output()
        .unwrap();
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    // A run of another configuration where a job's run belongs is never reused nor overwritten.
    let foreign = out.join("initialisation/small-s0");
    let config = foreign.join("config.toml");
    let mine = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, mine.replace("lr = 0.1", "lr = 0.2")).unwrap();
    let (_, err) = run_err(&["lab", "--quick", "--quiet", "--out", o]);
    assert!(err.contains("small-s0 holds a run of another configuration"), "{err}");
    std::fs::write(&config, &mine).unwrap();

    // A run another process is writing (its lock held) is neither moved aside nor retrained.
    let busy = out.join("initialisation/xavier-s0");
    std::fs::remove_file(busy.join("summary.json")).unwrap();
    let checkpoints = busy.join("checkpoints");
    std::fs::rename(&checkpoints, out.join("kept-checkpoints")).unwrap();
    let lock = std::fs::File::open(busy.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let (_, err) = run_err(&["lab", "--quick", "--quiet", "--out", o]);
    assert!(err.contains("xavier-s0 is in use by"), "{err}");
    assert!(busy.join("config.toml").exists(), "left where it was");
    drop(lock);
    std::fs::rename(out.join("kept-checkpoints"), &checkpoints).unwrap();
    run_ok(&["lab", "--quick", "--quiet", "--out", o]);

    // 17 jobs of 6 claims, 3 of them shared between claims: 14 runs, each reused once.
    assert_eq!(log.matches("reused").count(), 14, "{log}");

    // Two runs at a time, one thread each: every run trained once, the same verdicts.
    let o2 = tmp.path().join("lab-jobs2");
    let out2 = gradscope()
        .args([
            "lab",
            "--quick",
            "--quiet",
            "--jobs",
            "2",
            "--out",
            o2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out2.status.success(), "{}", String::from_utf8_lossy(&out2.stderr));
    let log2 = String::from_utf8_lossy(&out2.stderr);
    assert_eq!(log2.matches("trained").count(), 14, "{log2}");
    let outcomes = |dir: &std::path::Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("claims.json")).unwrap()).unwrap();
        v["claims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].to_string(), c["outcome"].to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(outcomes(&o2), outcomes(&out));

    let jobs = run_ok(&["lab", "--quick", "--list-jobs", "--out", o]);
    assert_eq!(
        jobs.lines().filter(|l| l.starts_with("gradscope train ")).count(),
        14,
        "{jobs}"
    );

    // Other seeds and other MNIST-like data, for every run of the suite.
    let sample = sample_dir();
    let jobs = run_ok(&[
        "lab",
        "--quick",
        "--list-jobs",
        "--seeds",
        "4,9",
        "--dataset",
        "mine",
        "--data-dir",
        sample.to_str().unwrap(),
        "--out",
        o,
    ]);
    let commands: Vec<&str> = jobs.lines().filter(|l| l.starts_with("gradscope train ")).collect();
    assert_eq!(commands.len(), 28, "{jobs}");
    let data = format!("--data-dir {}", sample.display());
    for c in &commands {
        match c.strip_prefix("gradscope train --config ") {
            // Runs given as a full model table: their config file says it.
            Some(rest) => {
                let file = rest.split(' ').next().unwrap();
                let text = std::fs::read_to_string(file).unwrap();
                assert!(
                    text.contains("dataset = \"mine\"") && text.contains("data_dir = "),
                    "{text}"
                );
                assert!(text.contains("seed = 4") || text.contains("seed = 9"), "{text}");
            }
            None => assert!(
                c.contains(&data) && c.contains("--dataset mine") && (c.contains("--seed 4") || c.contains("--seed 9")),
                "{c}"
            ),
        }
    }
}

#[test]
fn models_export_writes_pytorch_layout_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(&[
        "train",
        "--preset",
        "mlp-relu-2x32",
        "--max-steps",
        "5",
        "--probe",
        "off",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    let file = tmp.path().join("w.safetensors");
    let out = run_ok(&[
        "models",
        "export",
        run.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("(step 5)"), "{out}");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["hidden.0.linear.weight"]["shape"], serde_json::json!([32, 784]));
    let (_, err) = run_err(&[
        "models",
        "export",
        run.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let child = gradscope()
        .args([
            "train",
            "--preset",
            "mlp-relu-4x512",
            "--epochs",
            "3",
            "--quiet",
            "--out",
            run.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("metrics.csv").exists()
        || std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .count()
            < 3
    {
        assert!(std::time::Instant::now() < deadline, "no progress within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGINT, as Ctrl-C in a terminal sends.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("interrupted at step") && stdout.contains("--resume"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "interrupted");
    let (steps, _) = step_log(&run.join("metrics.csv"));
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "one metrics row per step: {steps:?}"
    );
    let stopped_at = summary["steps"].as_u64().unwrap();
    assert!(stopped_at < 189, "stopped early, at {stopped_at}");

    run_ok(&["train", "--resume", run.to_str().unwrap(), "--quiet"]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["steps"], 189);
}

#[test]
fn bench_writes_a_table_with_probe_overhead_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("bench.md");
    let t = table.to_str().unwrap();
    let args = [
        "bench",
        "--presets",
        "mlp-relu-2x16",
        "--backends",
        "flex",
        "--threads",
        "1",
        "--steps",
        "3",
        "--reps",
        "2",
        "--probe",
        "--skip-idx",
        "--out",
        t,
    ];
    let out = run_ok(&args);
    let written = std::fs::read_to_string(&table).unwrap();
    assert_eq!(out, written);
    let rows: Vec<Vec<&str>> = written
        .lines()
        .filter(|l| l.starts_with("| mlp-relu-2x16 | flex | 1 |"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "a throughput row and a probe-overhead row in\n{written}");
    // Throughput: samples/s, min, max, peak RSS.
    let number = |row: &[&str], col: usize| -> f64 {
        row[col]
            .trim_end_matches('%')
            .parse()
            .unwrap_or_else(|_| panic!("column {col} of {row:?}"))
    };
    assert!(number(&rows[0], 4) > 0.0 && number(&rows[0], 7) > 1.0, "{:?}", rows[0]);
    // Probe overhead: step ms without and with the probe, and the two overheads (every 10 = a tenth).
    assert!(written.contains("overhead, probe every step"), "{written}");
    let (plain, probed) = (number(&rows[1], 4), number(&rows[1], 5));
    assert!(plain > 0.0 && probed > 0.0, "{:?}", rows[1]);
    // The overhead compares each probed block with its unprobed neighbours
    // (the estimator's arithmetic is unit-tested in `bench_cmd`), so it is not
    // the ratio of the two printed medians; it is a finite step-time ratio.
    assert!(written.contains("two unprobed neighbours"), "{written}");
    let every = number(&rows[1], 6);
    assert!(every.is_finite() && every > -100.0, "{:?}", rows[1]);
    assert!((number(&rows[1], 7) - every / 10.0).abs() < 0.1, "{:?}", rows[1]);
    // The table a user kept is not overwritten.
    let (_, err) = run_err(&args);
    assert!(err.contains("already exists") && err.contains("bench.md"), "{err}");
    assert_eq!(std::fs::read_to_string(&table).unwrap(), written);
}

/// `GRADSCOPE_MAX_ISA` caps the convolution kernels (the bench table says
/// what ran); a value it does not know is refused by name.
#[test]
fn the_kernels_cap_is_checked_and_reported() {
    let out = gradscope()
        .env("GRADSCOPE_MAX_ISA", "sse9")
        .args(["models", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(r#"GRADSCOPE_MAX_ISA="sse9": expected avx512, avx2 or none"#),
        "{err}"
    );
    let bench = [
        "bench",
        "--presets",
        "mlp-relu-2x16",
        "--backends",
        "flex",
        "--threads",
        "1",
    ];
    let out = gradscope()
        .env("GRADSCOPE_MAX_ISA", "none")
        .env_remove("ATEN_CPU_CAPABILITY")
        .env_remove("ONEDNN_MAX_CPU_ISA")
        .args(bench)
        .args(["--steps", "2", "--reps", "1", "--skip-idx"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.starts_with("Convolutions on flex: im2col + gemm only; set: GRADSCOPE_MAX_ISA=none."),
        "{table}"
    );
}

#[test]
fn bench_pytorch_names_the_missing_interpreter() {
    let (_, err) = run_err(&["bench", "--pytorch", "--python", "/nonexistent/python3", "--skip-idx"]);
    assert!(
        err.contains("--pytorch: cannot run --python `/nonexistent/python3`"),
        "{err}"
    );
    // An interpreter that runs but has no torch.
    let (_, err) = run_err(&["bench", "--pytorch", "--python", "false", "--skip-idx"]);
    assert!(
        err.contains("cannot import torch and numpy") && err.contains("pip install torch numpy"),
        "{err}"
    );
}

/// `watch` follows a run another process writes: it waits for the directory
/// to appear, redraws as records come, and exits by itself when the run
/// ends, its last frame the finished run's table and verdict.
#[test]
fn watch_follows_a_run_from_before_it_starts_to_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let log = tmp.path().join("watch.txt");
    let watch = gradscope()
        .args(["watch", run.to_str().unwrap(), "--interval", "0.05"])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("watch waiting for the run", || text().contains("waiting for"));
    run_ok(&[
        "train",
        "--preset",
        "mlp-sigmoid-10x128",
        "--max-steps",
        "30",
        "--out",
        run.to_str().unwrap(),
        "-q",
    ]);
    let watch = std::cell::RefCell::new(watch);
    wait_for("watch to exit after the run ended", || {
        watch.borrow_mut().try_wait().unwrap().is_some()
    });
    assert!(watch.into_inner().wait().unwrap().success());
    let out = text();
    let last = out.rsplit("gradscope watch ").next().unwrap();
    assert!(last.contains("(completed)"), "{out}");
    assert!(last.contains("step 30,"), "{last}");
    assert!(
        last.contains("hidden.1") && last.contains("verdict: vanishing"),
        "{last}"
    );
}

#[test]
fn watch_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (_, err) = run_err(&["watch", missing.to_str().unwrap(), "--once"]);
    assert!(err.contains("no such run directory"), "{err}");
    let (_, err) = run_err(&["watch", tmp.path().to_str().unwrap(), "--interval", "0"]);
    assert!(err.contains("--interval: found 0"), "{err}");
}
