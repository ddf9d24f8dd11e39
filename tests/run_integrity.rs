//! End-to-end tests of run directories under hostile and clumsy use: resume
//! after kill -9, a full disk, two writers at once, finished and diverged
//! runs, damaged checkpoints, bad values. Each ends with a clear error or a
//! correct result, and nothing a user wrote is lost or silently changed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// A small, fast run: 63 steps an epoch on the bundled sample.
const SMALL: &[&str] = &["train", "--preset", "mlp-relu-2x16", "--quiet"];

/// A run of a few seconds (3 epochs of `mlp-relu-4x512`) into `out`, to stop midway.
fn long_run(out: &Path) -> Command {
    let mut cmd = gradscope();
    cmd.args(args_with(
        &[
            "train",
            "--preset",
            "mlp-relu-4x512",
            "--epochs",
            "3",
            "--quiet",
            "--out",
        ],
        out,
    ));
    cmd
}

/// `SMALL` plus `extra`, into `out`; must succeed.
fn train_ok(extra: &[&str], out: &Path) {
    let mut args: Vec<&str> = SMALL.to_vec();
    args.extend_from_slice(extra);
    args.push("--out");
    let out = gradscope().args(args_with(&args, out)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every line-oriented file of a run ends with a whole line.
fn assert_whole_lines(run: &Path) {
    for name in ["metrics.csv", "events.jsonl", "probe.csv", "probe_hist.csv"] {
        let Ok(bytes) = std::fs::read(run.join(name)) else {
            continue;
        };
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "{name} ends mid-line: ...{}",
            String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(60)..])
        );
    }
}

#[test]
fn a_full_disk_leaves_whole_lines_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--epochs", "2", "--probe", "1", "--probe-update-every", "1"];
    // How large probe.csv grows in the whole run, to size the limit.
    let whole = tmp.path().join("whole");
    train_ok(&args, &whole);
    let full = std::fs::metadata(whole.join("probe.csv")).unwrap().len();
    let model = std::fs::metadata(whole.join("checkpoints/step-00000126/model.bpk"))
        .unwrap()
        .len();
    // A file-size limit (`ulimit -f`, in KiB) that probe.csv reaches in epoch 2,
    // after the checkpoint at step 63: a write fails part-way through a record.
    let limit_kib = (full * 3 / 4) / 1024;
    assert!(
        limit_kib * 1024 > model + 4096,
        "limit {limit_kib} KiB below a checkpoint file"
    );
    let run = tmp.path().join("run");
    let mut cmd_args: Vec<&str> = SMALL.to_vec();
    cmd_args.extend_from_slice(&args);
    cmd_args.push("--out");
    let cmd = format!(
        "ulimit -f {limit_kib}; exec \"$0\" {}",
        args_with(&cmd_args, &run).join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &cmd, env!("CARGO_BIN_EXE_gradscope")])
        .env_remove("GRADSCOPE_DATA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the limit was not reached");
    assert!(err.contains("probe.csv") && err.contains("File too large"), "{err}");
    assert_whole_lines(&run);
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["status"], "interrupted", "{summary}");
    assert!(summary["error"].as_str().unwrap().contains("probe.csv"), "{summary}");
    // The run is not called diverged for a write error.
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(!events.contains("\"diverged\""), "{events}");

    // With room again it resumes from the checkpoint and ends as the whole run did.
    run_ok(&["train", "--resume", run.to_str().unwrap(), "--quiet"]);
    assert_whole_lines(&run);
    assert_eq!(metrics_without_wall_clock(&whole), metrics_without_wall_clock(&run));
    let (steps, dup) = step_log(&run.join("probe.csv"));
    assert_eq!(dup, None);
    assert_eq!(steps, step_log(&whole.join("probe.csv")).0);
    run_ok(&["inspect", run.to_str().unwrap()]);
}

#[test]
fn a_run_that_fails_before_any_checkpoint_says_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cmd_args: Vec<&str> = SMALL.to_vec();
    cmd_args.extend_from_slice(&["--max-steps", "30", "--probe", "1", "--out"]);
    let cmd = format!("ulimit -f 8; exec \"$0\" {}", args_with(&cmd_args, &run).join(" "));
    let out = Command::new("bash")
        .args(["-c", &cmd, env!("CARGO_BIN_EXE_gradscope")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_whole_lines(&run);
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["status"], "failed", "{summary}");
    let (_, err) = run_err(&["train", "--resume", run.to_str().unwrap()]);
    assert!(err.contains("no complete checkpoint"), "{err}");
}

#[test]
fn a_completed_run_is_only_extended_never_redone() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    train_ok(&["--max-steps", "10", "--log-every", "5"], &run);
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let verdicts = std::fs::read_to_string(run.join("verdicts.json")).unwrap();

    let (_, err) = run_err(&["train", "--resume", r, "--quiet"]);
    assert!(
        err.contains("already completed its 10 steps") && err.contains("--max-steps"),
        "{err}"
    );
    // Flags the saved configuration decides are refused, by name.
    let (_, err) = run_err(&["train", "--resume", r, "--lr", "5", "--backend", "ndarray"]);
    assert!(
        err.contains("--lr") && err.contains("--backend") && err.contains("cannot change it"),
        "{err}"
    );
    let (_, err) = run_err(&["train", "--resume", r, "--max-steps", "5"]);
    assert!(err.contains("already completed"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("summary.json")).unwrap(), summary);
    assert_eq!(std::fs::read_to_string(run.join("verdicts.json")).unwrap(), verdicts);

    // Extended to 20 steps, it ends as a 20-step run would have.
    run_ok(&["train", "--resume", r, "--max-steps", "20", "--quiet"]);
    let straight = tmp.path().join("straight");
    train_ok(&["--max-steps", "20", "--log-every", "5"], &straight);
    // Training rows match; the extended run also has the evaluation it made at
    // step 10, when that was its end.
    let train_cols = |r: &Path| -> Vec<String> {
        metrics_without_wall_clock(r)
            .iter()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(train_cols(&straight), train_cols(&run));
    assert_eq!(
        metrics_without_wall_clock(&straight).last(),
        metrics_without_wall_clock(&run).last()
    );
    assert_eq!(json(&run.join("summary.json"))["steps"], 20);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("max_steps = 20"), "{config}");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(events.contains("\"event\":\"extend\""), "{events}");
    let (steps, dup) = step_log(&run.join("probe.csv"));
    assert_eq!(dup, None);
    assert_eq!(steps, step_log(&straight.join("probe.csv")).0);
    // The verdict judges the whole run: its initial loss is the first step's.
    assert_eq!(
        json(&run.join("verdicts.json"))["initial_loss"],
        json(&straight.join("verdicts.json"))["initial_loss"]
    );
}

#[test]
fn two_writers_never_share_a_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // Two runs started at once into one empty directory: exactly one trains.
    for trial in 0..4 {
        let run = tmp.path().join(format!("race{trial}"));
        let spawn = |seed: &str| {
            let mut args: Vec<&str> = SMALL.to_vec();
            args.extend_from_slice(&["--max-steps", "3", "--seed", seed, "--out"]);
            gradscope()
                .args(args_with(&args, &run))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn("1"), spawn("2"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert_eq!(
            u8::from(a.status.success()) + u8::from(b.status.success()),
            1,
            "trial {trial}: {} / {}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
        let loser = if a.status.success() { &b } else { &a };
        let err = String::from_utf8_lossy(&loser.stderr);
        assert!(err.contains("is not empty") || err.contains("is in use by"), "{err}");
        let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        assert_eq!(metrics.lines().filter(|l| l.starts_with("0,")).count(), 1, "{metrics}");
    }

    // A resume while the run trains is refused with the trainer's PID.
    let run = tmp.path().join("long");
    let mut child = long_run(&run).stdout(Stdio::null()).spawn().unwrap();
    wait_for("a checkpoint", || run.join("checkpoints/latest").exists());
    let (_, err) = run_err(&["train", "--resume", run.to_str().unwrap()]);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(err.contains(&format!("is in use by process {}", child.id())), "{err}");
    // Once the writer is gone (even by kill -9) the run resumes.
    let out = gradscope()
        .args([
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--max-steps",
            "70",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn diverged_and_exploding_runs_are_named_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    // Residual blocks with He-initialised branches and no normalisation: the
    // residual stream grows with every block and the run goes to NaN.
    let run = tmp.path().join("residual");
    let out = gradscope()
        .args(args_with(
            &[
                "train",
                "--preset",
                "mlp-residual-20x128",
                "--max-steps",
                "20",
                "--lr",
                "0.1",
                "--optimizer",
                "sgd",
                "--momentum",
                "0",
                "--quiet",
                "--out",
            ],
            &run,
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let v = json(&run.join("verdicts.json"));
    assert_eq!(v["verdict"], "diverged", "{v}");
    let rules: Vec<&str> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules[0], "diverged", "{rules:?}");
    assert!(
        rules.contains(&"forward_explosion") || rules.contains(&"initial_loss"),
        "{rules:?}"
    );
    assert!(
        stdout.contains("verdict: diverged") && stdout.contains("zero-initialise"),
        "{stdout}"
    );
    let inspected = run_ok(&["inspect", run.to_str().unwrap()]);
    assert!(inspected.contains("verdict: diverged"), "{inspected}");

    // An exploding verdict with an infinite measurement reads back.
    let cfg = tmp.path().join("explode.toml");
    std::fs::write(
        &cfg,
        "lr = 0.1\nmax_steps = 100\n[model]\narch = \"mlp\"\ndepth = 10\nwidth = 128\nactivation = { kind = \"relu\" }\ninit = { kind = \"he_normal\", gain = 4.0 }\n",
    )
    .unwrap();
    let hot = tmp.path().join("hot");
    let out = gradscope()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--quiet",
            "--out",
            hot.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&hot.join("verdicts.json"));
    assert_ne!(v["verdict"], "healthy", "{v}");
    run_ok(&["inspect", hot.to_str().unwrap()]);
    let compared = run_ok(&[
        "compare",
        hot.to_str().unwrap(),
        run.to_str().unwrap(),
        "--out",
        tmp.path().join("cmp").to_str().unwrap(),
    ]);
    assert!(compared.contains("diverged"), "{compared}");
    assert!(compared.contains(v["verdict"].as_str().unwrap()), "{compared}");
}

#[test]
fn compare_never_writes_over_a_users_files() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_ok(&["--max-steps", "5"], &run);
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("report.html"), "<p>my own notes</p>").unwrap();
    let (_, err) = run_err(&["compare", run.to_str().unwrap(), "--out", mine.to_str().unwrap()]);
    assert!(
        err.contains("already holds files that gradscope did not write"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("report.html")).unwrap(),
        "<p>my own notes</p>"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    // A report gradscope wrote is brought up to date in place.
    let ours = tmp.path().join("ours");
    run_ok(&["compare", run.to_str().unwrap(), "--out", ours.to_str().unwrap()]);
    let seed2 = tmp.path().join("seed2");
    train_ok(&["--max-steps", "5", "--seed", "2"], &seed2);
    run_ok(&[
        "compare",
        run.to_str().unwrap(),
        seed2.to_str().unwrap(),
        "--out",
        ours.to_str().unwrap(),
    ]);
    // Two seeds share a label; every CSV row still names its run.
    let csv = std::fs::read_to_string(ours.join("spectrogram_grad_l2.csv")).unwrap();
    let mut keys = std::collections::HashSet::new();
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        assert!(keys.insert(cols[1..4].join(",")), "duplicate row for {line}");
    }
    assert!(csv.contains("seed2") && keys.len() > 2, "{csv}");
}

#[test]
fn invalid_values_are_refused_by_their_source() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = out.to_str().unwrap();
    for (flags, expected) in [
        (
            &["--clip-grad-norm=-1"][..],
            "--clip-grad-norm: found -1; expected a positive finite number",
        ),
        (&["--clip-grad-norm", "0"][..], "--clip-grad-norm: found 0"),
        (
            &["--momentum=-5"][..],
            "--momentum: found -5; expected a number in [0, 1)",
        ),
        (&["--momentum", "nan"][..], "--momentum: found NaN"),
        (&["--weight-decay", "nan"][..], "--weight-decay: found NaN"),
        (&["--lr=-1"][..], "--lr: found -1; expected a positive finite number"),
        (&["--nesterov"][..], "--nesterov: found true"),
        (&["--step-gamma", "0.5"][..], "need --schedule step or cosine"),
    ] {
        let mut args = vec!["train", "--out", o];
        args.extend_from_slice(flags);
        let (_, err) = run_err(&args);
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    for (text, expected) in [
        (
            "[optimizer]\nkind = \"sgd\"\nmomentum = -5.0\n",
            "optimizer.momentum = -5: expected a number in [0, 1)",
        ),
        (
            "[optimizer]\nkind = \"sgd\"\nmomentun = 0.9\n",
            "unknown key `optimizer.momentun`",
        ),
        (
            "[optimizer]\nkind = \"adam\"\nbeta_1 = 0.8\n",
            "unknown key `optimizer.beta_1`",
        ),
        (
            "[schedule]\nkind = \"step\"\nevery = 10\ngama = 0.5\n",
            "missing field `gamma`",
        ),
        ("[model]\narch = \"mlp\"\ndepht = 3\n", "depht"),
        (
            "clip_grad_norm = -1.0\n",
            "clip_grad_norm = -1: expected a positive finite number",
        ),
    ] {
        let cfg = tmp.path().join("run.toml");
        std::fs::write(&cfg, text).unwrap();
        let (_, err) = run_err(&["train", "--config", cfg.to_str().unwrap(), "--out", o]);
        assert!(
            err.contains("--config") && err.contains("run.toml") && err.contains(expected),
            "{text}: {err}"
        );
        assert!(!err.contains("untagged"), "{err}");
    }
    assert!(!out.exists(), "no run directory for a refused configuration");
}

/// Writes an IDX dataset of `n` random `side` x `side` images per split.
fn idx_dataset(dir: &Path, side: usize, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 12345u32;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    for prefix in ["train", "t10k"] {
        let mut images = vec![0, 0, 8, 3];
        for d in [n, side, side] {
            images.extend_from_slice(&(d as u32).to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&(n as u32).to_be_bytes());
        for i in 0..n {
            let label = (i % 10) as u8;
            labels.push(label);
            // Brighter images for higher labels, so there is something to learn.
            images.extend((0..side * side).map(|_| next() / 2 + label * 12));
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

#[test]
fn the_input_size_comes_from_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data32");
    idx_dataset(&data, 32, 200);
    let d = data.to_str().unwrap();
    let run = tmp.path().join("run");
    train_ok(&["--dataset", "mine", "--data-dir", d, "--max-steps", "4"], &run);
    let points = json(&run.join("points.json"));
    assert!(points.as_array().is_some_and(|p| !p.is_empty()), "{points}");
    assert_eq!(json(&run.join("summary.json"))["status"], "completed");
    // A size the configuration sets itself must match, and is checked before
    // anything is written.
    let cfg = tmp.path().join("m.toml");
    std::fs::write(&cfg, "[model]\narch = \"mlp\"\ninput_size = 900\ndepth = 2\n").unwrap();
    let bad = tmp.path().join("bad");
    let (_, err) = run_err(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--dataset",
        "mine",
        "--data-dir",
        d,
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("model.input_size = 900") && err.contains("32x32"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn a_damaged_checkpoint_is_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    train_ok(&["--epochs", "2", "--max-steps", "100", "--log-every", "10"], &run);
    // The newest checkpoint and the one before it are kept.
    let newest = run.join("checkpoints/step-00000100");
    assert!(newest.is_dir() && run.join("checkpoints/step-00000063").is_dir());
    let model = newest.join("model.bpk");
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    // Extending the run resumes from the intact checkpoint before it, says so,
    // and ends as a straight run would.
    let out = gradscope()
        .args(["train", "--resume", r, "--max-steps", "110", "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("step-00000100/model.bpk") && err.contains("SHA-256"),
        "{err}"
    );
    let straight = tmp.path().join("straight");
    train_ok(&["--epochs", "2", "--max-steps", "110", "--log-every", "10"], &straight);
    assert_eq!(metrics_without_wall_clock(&straight), metrics_without_wall_clock(&run));

    // `latest` may only name a checkpoint of this run.
    std::fs::write(run.join("checkpoints/latest"), "../../x\n").unwrap();
    let (_, err) = run_err(&["train", "--resume", r, "--max-steps", "120"]);
    assert!(
        err.contains("checkpoints/latest") && err.contains("found `../../x`"),
        "{err}"
    );
}

#[test]
fn smaller_promises_hold() {
    let tmp = tempfile::tempdir().unwrap();
    // The README's `data info NAME --data-dir DIR` with a missing folder names the folder.
    let missing = tmp.path().join("nowhere");
    let (_, err) = run_err(&["data", "info", "mine", "--data-dir", missing.to_str().unwrap()]);
    assert!(err.contains("nowhere") && !err.contains("unknown dataset"), "{err}");
    // `inspect` on something that is not a run says so.
    let (_, err) = run_err(&["inspect", tmp.path().to_str().unwrap()]);
    assert!(err.contains("is not a gradscope run"), "{err}");
    assert_eq!(err.matches("is not a gradscope run").count(), 1, "said once: {err}");

    // Step-0 weights: `--max-steps 0` writes a checkpoint that exports.
    let run = tmp.path().join("zero");
    train_ok(&["--max-steps", "0"], &run);
    assert!(run.join("checkpoints/step-00000000/model.bpk").exists());
    let w = tmp.path().join("w.safetensors");
    run_ok(&["models", "export", run.to_str().unwrap(), "--out", w.to_str().unwrap()]);
    assert!(w.exists());
    // JSON files are as readable as the CSVs beside them.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(run.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("summary.json"), mode("metrics.csv"));
        assert_eq!(mode("verdicts.json"), mode("metrics.csv"));
    }

    // SIGTERM (a scheduler's stop) ends a run as Ctrl-C does: checkpoint, summary.
    let run = tmp.path().join("term");
    let child = long_run(&run).stdout(Stdio::piped()).spawn().unwrap();
    wait_for("three metrics rows", || {
        std::fs::read_to_string(run.join("metrics.csv")).is_ok_and(|m| m.lines().count() >= 3)
    });
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(json(&run.join("summary.json"))["status"], "interrupted");
    let (steps, _) = step_log(&run.join("metrics.csv"));
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "one row per step: {steps:?}");
}
