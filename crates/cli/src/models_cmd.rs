//! `gradscope models`: the preset catalogue and layer tables.

use anyhow::Result;
use burn::tensor::Device;
use clap::Subcommand;
use gradscope_models::{Network, PRESETS, named_params, preset};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the named presets with their parameter counts.
    List,
    /// Print a preset's layer table: probe points, shapes, activations, parameters.
    Show {
        /// Preset name, e.g. `mlp-sigmoid-10x128` or `resnet20-residual`.
        name: String,
        /// Print the resolved model config and its layout as JSON instead (what
        /// `bench/pytorch/bench.py --model` reads), with `trainable_params`.
        #[arg(long)]
        json: bool,
    },
    /// Export a run's latest checkpoint as safetensors in PyTorch's layout
    /// (Linear `[out, in]`, conv `[out, in, kh, kw]`, BatchNorm `weight`/`bias`).
    Export {
        /// A run directory written by `gradscope train`.
        run: std::path::PathBuf,
        /// Output file; an existing file is refused.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    let device = Device::flex();
    match cmd {
        ModelsCommand::Export { run, out } => {
            if out.exists() {
                anyhow::bail!("{} already exists; choose another --out", out.display());
            }
            // Reads only (no lock): a run still training can be exported.
            let config = gradscope_train::run_dir::read_config(&run)?;
            let data = gradscope_train::prepare_data(&config)?;
            let model = gradscope_train::model_for_data(&config, &data)?.init(&device)?;
            let found = gradscope_train::checkpoint::latest(&run)?;
            let (dir, state) = (found.dir, found.state);
            let model =
                gradscope_train::trainer::load_model(model, &dir.join(gradscope_train::checkpoint::MODEL_FILE))?;
            gradscope_models::export_safetensors(&model, &out)?;
            println!("{} (step {}) -> {}", run.display(), state.step, out.display());
        }
        ModelsCommand::List => {
            println!("{:<24} {:>10}  description", "preset", "params");
            for (name, description) in PRESETS {
                let model = preset(name)?.init(&device)?;
                println!(
                    "{name:<24} {:>10}  {description}",
                    gradscope_models::trainable_params(&model)
                );
            }
            println!(
                "\nAlso accepted: mlp-ACT[-bn][-residual]-DEPTHxWIDTH[-INIT] and resnetN-plain|residual (N = 6n+2)."
            );
        }
        ModelsCommand::Show { name, json: true } => println!("{}", preset(&name)?.to_layout_json()?),
        ModelsCommand::Show { name, json: false } => {
            let model = preset(&name)?.init(&device)?;
            let params = named_params(&model);
            let size_of = |path: &String| params.iter().find(|p| &p.path == path).map_or(0, |p| p.numel());
            println!("{name}: {} parameters\n", gradscope_models::trainable_params(&model));
            println!(
                "{:>5}  {:<26} {:<7} {:<14} {:<11} {:>9}  weight",
                "depth", "probe point", "kind", "output", "activation", "params"
            );
            for p in model.probe_points() {
                let shape = p.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
                let kind = serde_json::to_value(p.kind)?.as_str().unwrap_or_default().to_owned();
                let act = p.activation.map_or("-".to_owned(), |a| a.to_string());
                let n: usize = p.params.iter().map(size_of).sum();
                let norm = if p.has_norm { " +BN" } else { "" };
                println!(
                    "{:>5}  {:<26} {:<7} {:<14} {:<11} {:>9}  {}{norm}",
                    p.depth,
                    p.name,
                    kind,
                    shape,
                    act,
                    n,
                    p.weight.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}
