//! `gradscope`: make vanishing and exploding gradients visible, measurable and
//! comparable. A thin binary over the gradscope library crates: it parses
//! arguments, calls the libraries, and prints; errors print one line with
//! their cause chain and exit non-zero.

mod alloc;
mod bench_cmd;
mod compare_cmd;
mod data_cmd;
mod fix_cmd;
mod inspect_cmd;
mod isa;
mod lab_cmd;
mod models_cmd;
mod parity_cmd;
mod progress;
mod tensorboard_cmd;
mod threads;
mod train_cmd;
mod watch_cmd;

use clap::{Parser, Subcommand};

/// Make vanishing (and exploding) gradients visible, measurable and comparable.
#[derive(Parser, Debug)]
#[command(name = "gradscope", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the vanishing-gradient experiment suite and judge each claim.  Example: `gradscope lab --quick`
    Lab(lab_cmd::LabArgs),
    /// Datasets: list, describe, download.  Example: `gradscope data info mnist-sample`
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Model presets: list them, show a layer table.  Example: `gradscope models show resnet20-residual`
    #[command(subcommand)]
    Models(models_cmd::ModelsCommand),
    /// Train a model into a run directory.  Example: `gradscope train --preset mlp-sigmoid-10x128 --epochs 2`
    Train(Box<train_cmd::TrainArgs>),
    /// Per-layer gradient table and verdicts of a run.  Example: `gradscope inspect runs/mlp-sigmoid-10x128-20261127-101500`
    Inspect(inspect_cmd::InspectArgs),
    /// Try each remedy a run's verdict calls for and rank them by measurement.  Example: `gradscope fix runs/x`
    Fix(fix_cmd::FixArgs),
    /// Compare runs: convergence and gradient-flow charts, summary, report.html.  Example: `gradscope compare runs/a runs/b --out report`
    Compare(compare_cmd::CompareArgs),
    /// Run the same training on several backends and compare losses and gradients.  Example: `gradscope parity --backends flex,wgpu`
    Parity(parity_cmd::ParityArgs),
    /// Measure training throughput, probe overhead and IDX load time.  Example: `gradscope bench --presets mlp-sigmoid-8x256 --threads 1,2`
    Bench(bench_cmd::BenchArgs),
    /// Write TensorBoard event files for runs (training writes them too).  Example: `gradscope tensorboard lab && tensorboard --logdir lab`
    Tensorboard(tensorboard_cmd::TensorboardArgs),
    /// Follow a run another process is writing: latest metrics, per-layer table, verdict so far.  Example: `gradscope watch runs/x`
    Watch(watch_cmd::WatchArgs),
}

fn main() {
    alloc::keep_freed_memory();
    // Past a file-size limit (`ulimit -f`) a write then fails with EFBIG and is
    // reported like a full disk, instead of the signal killing the process mid-write.
    // SAFETY: called before any other thread exists; SIG_IGN is a valid disposition.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // `gradscope ... | head` ends quietly when the reader goes, as Unix tools do.
    // SAFETY: as above; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = isa::apply_env().and_then(|()| {
        threads::in_pool(move || match cli.command {
            Command::Lab(args) => lab_cmd::run(args),
            Command::Data(cmd) => data_cmd::run(cmd),
            Command::Models(cmd) => models_cmd::run(cmd),
            Command::Train(args) => train_cmd::run(*args),
            Command::Inspect(args) => inspect_cmd::run(args),
            Command::Compare(args) => compare_cmd::run(args),
            Command::Fix(args) => fix_cmd::run(args),
            Command::Parity(args) => parity_cmd::run(args),
            Command::Bench(args) => bench_cmd::run(args),
            Command::Tensorboard(args) => tensorboard_cmd::run(args),
            Command::Watch(args) => watch_cmd::run(args),
        })
    });
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
