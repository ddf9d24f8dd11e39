//! `gradscope data`: list, describe and download datasets.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gradscope_data::catalog::{self, default_cache_root};
use gradscope_data::fetch::{FetchEvent, fetch};
use gradscope_data::{BUNDLED_NAME, CATALOG, MnistLike};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// List the datasets gradscope knows and whether each is available offline.
    List {
        /// Download cache root (default: $GRADSCOPE_DATA, else the platform cache dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Counts per class, image shape, pixel mean/std and file checksums.
    Info {
        /// Dataset name (default: the bundled sample).
        #[arg(default_value = BUNDLED_NAME)]
        name: String,
        /// A directory holding the four IDX files (plain or .gz), or the cache root.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Download a dataset, verify its checksums, and store it in the cache.
    Fetch {
        /// mnist, fashion-mnist or kmnist.
        name: String,
        /// Cache root (default: $GRADSCOPE_DATA, else the platform cache dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Download from this base URL instead of the catalogue's mirrors (repeatable).
        #[arg(long)]
        mirror: Vec<String>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::List { data_dir } => list(data_dir),
        DataCommand::Info { name, data_dir, json } => info(&name, data_dir, json),
        DataCommand::Fetch {
            name,
            data_dir,
            mirror,
            quiet,
        } => fetch_cmd(&name, data_dir, mirror, quiet),
    }
}

fn list(data_dir: Option<PathBuf>) -> Result<()> {
    let root = data_dir.unwrap_or_else(default_cache_root);
    println!("{:<15} {:<12} description", "name", "available");
    println!(
        "{:<15} {:<12} 10,000 real MNIST digits (8,000 train + 2,000 test), bundled",
        BUNDLED_NAME, "bundled"
    );
    for e in CATALOG {
        let here = catalog::locate_files(&root.join(e.name)).is_ok();
        println!(
            "{:<15} {:<12} {}",
            e.name,
            if here { "downloaded" } else { "fetch first" },
            e.description
        );
    }
    println!("\ncache: {}", root.display());
    Ok(())
}

fn info(name: &str, data_dir: Option<PathBuf>, json: bool) -> Result<()> {
    let d = MnistLike::load(name, data_dir.as_deref())?;
    let (rows, cols) = d.image_shape();
    let split_json = |s: &gradscope_data::Split| {
        let (mean, std) = s.pixel_mean_std();
        serde_json::json!({ "count": s.len(), "class_counts": s.class_counts(), "pixel_mean": mean, "pixel_std": std })
    };
    if json {
        let v = serde_json::json!({
            "name": d.name, "image_shape": [rows, cols],
            "train": split_json(&d.train), "test": split_json(&d.test), "files": d.files,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("dataset: {}", d.name);
    println!("images:  {rows} x {cols}, 1 channel, 10 classes");
    for (label, s) in [("train", &d.train), ("test", &d.test)] {
        let (mean, std) = s.pixel_mean_std();
        println!(
            "{label:<6} {:>6} images, pixel mean {:.2} std {:.2} (0..255; {:.4} / {:.4} on [0, 1])",
            s.len(),
            mean,
            std,
            mean / 255.0,
            std / 255.0
        );
        let counts = s.class_counts();
        println!(
            "       per class: {}",
            counts
                .iter()
                .enumerate()
                .map(|(c, n)| format!("{c}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("files (SHA-256):");
    for f in &d.files {
        println!("  {}  {} ({} bytes)", f.sha256, f.path, f.bytes);
    }
    Ok(())
}

fn fetch_cmd(name: &str, data_dir: Option<PathBuf>, mirrors: Vec<String>, quiet: bool) -> Result<()> {
    if name == BUNDLED_NAME {
        bail!("`{BUNDLED_NAME}` is bundled with gradscope; nothing to fetch");
    }
    let entry = catalog::find(name).with_context(|| {
        format!(
            "unknown dataset `{name}`; expected one of: {}",
            CATALOG.map(|e| e.name).join(", ")
        )
    })?;
    let dest = data_dir.unwrap_or_else(default_cache_root).join(entry.name);
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mirrors = (!mirrors.is_empty()).then_some(mirrors);
    fetch(entry, &dest, mirrors.as_deref(), &mut |e| match e {
        FetchEvent::AlreadyVerified { file } => bar.println(format!("{file}: already downloaded and verified")),
        FetchEvent::Started { file, total, .. } => {
            bar.reset();
            bar.set_length(total.unwrap_or(0));
            bar.set_message(file.to_string());
        }
        FetchEvent::Progress { bytes, .. } => bar.set_position(bytes),
        FetchEvent::Verified { file, bytes } => bar.println(format!("{file}: {bytes} bytes, MD5 verified")),
        FetchEvent::MirrorFailed { url, error, .. } => {
            bar.println(format!("{url}: failed ({error}); trying the next mirror"))
        }
    })
    .with_context(|| format!("fetching {name} into {}", dest.display()))?;
    bar.finish_and_clear();
    let d = MnistLike::from_dir(name, &dest)?;
    println!(
        "{name}: {} train + {} test images in {}",
        d.train.len(),
        d.test.len(),
        dest.display()
    );
    Ok(())
}
