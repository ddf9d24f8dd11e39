//! The PyTorch reference: `bench/pytorch/bench.py` (bundled) trains the same
//! networks (rebuilt from [`gradscope_models::ModelConfig::to_layout_json`]) in
//! the same loop on the same data, and measures `torch.mm`'s rate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::child::Peak;
use crate::{BenchError, Settings};

/// The PyTorch reference script, shipped inside the binary.
const PYTORCH_SCRIPT: &str = include_str!("../../../bench/pytorch/bench.py");

/// What the PyTorch reference script prints.
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    /// Samples per second, median over repetitions.
    pub median: f64,
    pub flops_per_sample: f64,
    pub peak_rss_mib: Option<f64>,
}

/// The PyTorch side: the script, the bundled training split as IDX files, and
/// the models' layouts, in a temporary directory.
pub struct PyTorch {
    pub version: String,
    python: PathBuf,
    dir: tempfile::TempDir,
    /// Results per (preset, threads, device), measured once each.
    pub references: HashMap<(String, usize, &'static str), Result<Reference, String>>,
}

impl PyTorch {
    /// Checks that `python` has torch and numpy, and lays out the script and data.
    pub fn new(python: &Path) -> Result<Self, BenchError> {
        let check = Command::new(python)
            .args(["-c", "import torch, numpy; print(torch.__version__)"])
            .output();
        let version = match check {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            Ok(out) => {
                return Err(BenchError::Failed(format!(
                    "--pytorch: `{}` cannot import torch and numpy ({}); install them with `pip install torch numpy`, \
                     or name another interpreter with --python",
                    python.display(),
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("no output")
                        .trim()
                )));
            }
            Err(e) => {
                return Err(BenchError::Failed(format!(
                    "--pytorch: cannot run --python `{}`: {e}",
                    python.display()
                )));
            }
        };
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("bench.py"), PYTORCH_SCRIPT)?;
        let train = gradscope_data::MnistLike::bundled()?.train;
        std::fs::write(
            dir.path().join("images.idx"),
            gradscope_data::idx::encode_images(&train.images),
        )?;
        std::fs::write(
            dir.path().join("labels.idx"),
            gradscope_data::idx::encode_labels(&train.labels),
        )?;
        Ok(Self {
            version,
            python: python.to_owned(),
            dir,
            references: HashMap::new(),
        })
    }

    /// The script with its thread count and device.
    pub fn script(&self, threads: usize, device: &str) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.dir.path().join("bench.py"))
            .args(["--threads", &threads.to_string(), "--device", device]);
        cmd
    }

    /// Runs a script command and reads the JSON line it prints.
    pub fn run_json<T: serde::de::DeserializeOwned>(mut cmd: Command) -> Result<T, String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
                .to_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output: {e}"))
    }

    /// GFLOP/s of `torch.mm` at `[m, k] @ [k, n]` on the CPU.
    pub fn matmul_gflops(&self, threads: usize, m: usize, k: usize, n: usize) -> Option<f64> {
        let mut cmd = self.script(threads, "cpu");
        cmd.args(["--matmul", &format!("{m}x{k}x{n}")]);
        Self::run_json::<Peak>(cmd).ok().map(|p| p.gflops)
    }

    /// `torch.mm`'s best square fp32 rate, GFLOP/s.
    pub fn peak_gflops(&self, threads: usize, device: &str) -> Result<f64, String> {
        let mut cmd = self.script(threads, device);
        cmd.arg("--peak");
        Self::run_json::<Peak>(cmd).map(|p| p.gflops)
    }

    /// PyTorch's throughput on `preset` (measured once per preset, threads and device).
    pub fn reference(
        &mut self,
        preset: &str,
        threads: usize,
        device: &'static str,
        settings: &Settings,
    ) -> &Result<Reference, String> {
        let key = (preset.to_owned(), threads, device);
        if !self.references.contains_key(&key) {
            let result = (|| {
                let model = self.dir.path().join(format!("{preset}.json"));
                let layout = gradscope_models::preset(preset)
                    .and_then(|c| c.to_layout_json())
                    .map_err(|e| e.to_string())?;
                std::fs::write(&model, layout.to_string()).map_err(|e| e.to_string())?;
                let mut cmd = self.script(threads, device);
                cmd.arg("--model")
                    .arg(&model)
                    .arg("--images")
                    .arg(self.dir.path().join("images.idx"))
                    .arg("--labels")
                    .arg(self.dir.path().join("labels.idx"))
                    .args([
                        "--steps",
                        &settings.steps.to_string(),
                        "--reps",
                        &settings.reps.to_string(),
                    ])
                    .args(["--batch-size", &settings.batch_size.to_string()]);
                Self::run_json::<Reference>(cmd)
            })();
            self.references.insert(key.clone(), result);
        }
        &self.references[&key]
    }
}
