//! gradscope-report owns how runs are compared by looking: convergence overlays
//! (seed groups as mean and band), per-layer gradient-flow profiles, layer x step
//! gradient "spectrograms" on a shared colour scale, activation regimes, the
//! summary table, a self-contained `report.html` with every chart inline, and the
//! CSV behind every chart, and the lab's page of judged claims. It reads run
//! directories written by the train and probe crates and never trains, probes,
//! judges claims or changes a run (the lab crate plans and judges).

pub mod charts;
pub mod html;
pub mod label;
pub mod load;
pub mod summary;

use std::path::{Path, PathBuf};

use gradscope_probe::Metric;

pub use charts::{Chart, Curve, LayerSeries, XAxis};
pub use load::{RunData, load_run};
pub use summary::{SummaryRow, render_text, summary_rows, text_plot};

/// Why no report could be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no usable run among the {given} given:\n  {}", .warnings.join("\n  "))]
    NothingUsable { given: usize, warnings: Vec<String> },
    #[error("{path} is a file, not a directory; choose another --out")]
    OutIsFile { path: PathBuf },
    #[error(
        "{path} already holds files that gradscope did not write; choose another --out (a report is never written over other files)"
    )]
    WouldOverwrite { path: PathBuf },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Draw(String),
}

/// How to build a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub x: XAxis,
    pub smooth: usize,
    pub target_acc: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            x: XAxis::Step,
            smooth: 1,
            target_acc: 0.9,
        }
    }
}

/// A built report: the runs, charts, summary, and what was skipped.
pub struct Report {
    pub runs: Vec<RunData>,
    pub charts: Vec<Chart>,
    pub summary: Vec<SummaryRow>,
    pub warnings: Vec<String>,
    pub options: ReportOptions,
    /// The lab's judged claims, each with the charts of its own runs: a lab
    /// report shows these instead of charts of every run together.
    pub sections: Vec<ClaimSection>,
    /// A table shown before the summary (e.g. `gradscope fix`'s ranking).
    pub lead: Option<LeadTable>,
}

/// A titled table with a sentence under the title, drawn at the top of a report.
#[derive(Debug, Clone, Default)]
pub struct LeadTable {
    pub title: String,
    pub text: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A judged claim as a lab report heads its section.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimHeading {
    pub id: String,
    pub title: String,
    pub confirmed: bool,
    /// The claim's one number a reader should remember.
    pub key: String,
    /// What a reader should look at in its charts.
    pub look_at: String,
    pub evidence: Vec<String>,
}

/// One claim of a lab report: its verdict and evidence, its runs (role and
/// seed), and charts drawn from those runs only, one colour per role.
pub struct ClaimSection {
    pub heading: ClaimHeading,
    pub runs: Vec<SectionRun>,
    pub charts: Vec<Chart>,
}

/// A run as a claim section lists it.
pub struct SectionRun {
    pub role: String,
    pub seed: Option<u64>,
    pub model: String,
    pub dir: PathBuf,
    pub final_test_acc: Option<f64>,
    pub verdict: String,
}

/// Draws a claim's section from its runs, given with their role names; with
/// `regimes`, also a chart of dead and saturated units per role.
pub fn claim_section(
    heading: ClaimHeading,
    regimes: bool,
    runs: &[(String, RunData)],
) -> Result<ClaimSection, ReportError> {
    let data: Vec<RunData> = runs
        .iter()
        .map(|(role, r)| {
            let mut r = r.clone();
            r.label = format!("{} ({})", role.replace('_', " "), r.model_label());
            r
        })
        .collect();
    let groups = label::groups(&data);
    let mut charts = Vec::new();
    for m in [Curve::TrainLoss, Curve::TestAcc] {
        charts.push(charts::convergence(&data, &groups, m, XAxis::Step, 1).map_err(ReportError::Draw)?);
    }
    if data.iter().any(|r| !r.probe.is_empty()) {
        charts.push(
            charts::start_profile(&data, &groups, Metric::SignalRms, "back-propagated signal RMS |dL/dh|")
                .map_err(ReportError::Draw)?,
        );
        if regimes {
            charts.push(charts::regimes_by_group(&data, &groups).map_err(ReportError::Draw)?);
        }
    }
    for c in &mut charts {
        c.name = format!("{}-{}", heading.id, c.name);
    }
    let runs = runs
        .iter()
        .map(|(role, r)| SectionRun {
            role: role.replace('_', " "),
            seed: r.seed(),
            model: r.model_label(),
            dir: r.dir.clone(),
            final_test_acc: r.metrics.iter().rev().find_map(|m| m.test_acc),
            verdict: r.verdicts.as_ref().map_or("-".into(), |v| v.verdict.to_string()),
        })
        .collect();
    Ok(ClaimSection { heading, runs, charts })
}

/// A lab report: a summary of every claim, then one section per claim.
pub fn lab_report(dirs: &[PathBuf], sections: Vec<ClaimSection>) -> Result<Report, ReportError> {
    let (mut runs, warnings) = load_runs(dirs)?;
    label::assign_labels(&mut runs);
    let options = ReportOptions::default();
    let summary = summary_rows(&runs, options.target_acc);
    Ok(Report {
        runs,
        charts: Vec::new(),
        summary,
        warnings,
        options,
        sections,
        lead: None,
    })
}

/// Loads the runs, skipping unusable ones with a warning.
fn load_runs(dirs: &[PathBuf]) -> Result<(Vec<RunData>, Vec<String>), ReportError> {
    let mut warnings = Vec::new();
    let mut runs = Vec::new();
    for d in dirs {
        match load_run(d, &mut warnings) {
            Ok(r) => runs.push(r),
            Err(e) => warnings.push(format!("skipped {}: {e}", d.display())),
        }
    }
    if runs.is_empty() {
        return Err(ReportError::NothingUsable {
            given: dirs.len(),
            warnings,
        });
    }
    Ok((runs, warnings))
}

/// Marks a directory as a gradscope report, which a later report may replace.
pub const REPORT_MARKER: &str = ".gradscope-report";

/// Whether a report may be written into `dir`: it does not exist, is empty, or
/// holds a report gradscope wrote (its marker, or a `report.html` of ours).
/// Anything else may be someone's work and is never written over.
fn may_write_into(dir: &Path) -> std::io::Result<bool> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if entries.next().is_none() || dir.join(REPORT_MARKER).is_file() {
        return Ok(true);
    }
    let ours =
        std::fs::read_to_string(dir.join("report.html")).is_ok_and(|t| t.contains("<title>gradscope report</title>"));
    Ok(ours)
}

/// Runs that get a chart of their own (per-layer gradient norms); the rest
/// are in the charts that overlay every run.
const MAX_LAYER_CHARTS: usize = 8;

/// Loads the runs (skipping unusable ones with a warning) and draws every chart.
pub fn build(dirs: &[PathBuf], options: ReportOptions) -> Result<Report, ReportError> {
    let (mut runs, warnings) = load_runs(dirs)?;
    label::assign_labels(&mut runs);
    draw(runs, warnings, options)
}

/// As [`build`], with each run's legend label given (each run its own line).
pub fn build_labelled(runs: &[(String, PathBuf)], options: ReportOptions) -> Result<Report, ReportError> {
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.1.clone()).collect();
    let (mut loaded, warnings) = load_runs(&dirs)?;
    for run in &mut loaded {
        if let Some((label, _)) = runs.iter().find(|r| r.1 == run.dir) {
            run.label = label.clone();
        }
    }
    draw(loaded, warnings, options)
}

fn draw(runs: Vec<RunData>, mut warnings: Vec<String>, options: ReportOptions) -> Result<Report, ReportError> {
    let groups = label::groups(&runs);
    let mut charts = Vec::new();
    for m in [Curve::TrainLoss, Curve::TestLoss, Curve::TestAcc] {
        if charts::logged(&runs, m) {
            charts.push(charts::convergence(&runs, &groups, m, options.x, options.smooth).map_err(ReportError::Draw)?);
        }
    }
    if runs.iter().any(|r| !r.probe.is_empty()) {
        charts.push(
            charts::flow_profile(&runs, Metric::SignalRms, "back-propagated signal RMS |dL/dh|")
                .map_err(ReportError::Draw)?,
        );
        charts.push(charts::flow_profile(&runs, Metric::GradL2, "weight-gradient L2 norm").map_err(ReportError::Draw)?);
        for (k, run) in runs
            .iter()
            .filter(|r| !r.probe.is_empty())
            .take(MAX_LAYER_CHARTS)
            .enumerate()
        {
            for series in [LayerSeries::GradL2, LayerSeries::SignalRms] {
                charts.extend(charts::layer_lines(run, series, k).map_err(ReportError::Draw)?);
            }
            // Histograms are read here, for the runs drawn, not with every run.
            let path = run.dir.join(gradscope_train::run_dir::PROBE_HIST_FILE);
            match gradscope_probe::read_hist_csv(&path) {
                Ok(hists) => charts.extend(charts::grad_histograms(run, &hists, k).map_err(ReportError::Draw)?),
                Err(e) if path.exists() => warnings.push(format!("{e}; no |g| histogram chart for this run")),
                Err(_) => {}
            }
        }
        charts.push(charts::spectrogram(&runs, Metric::GradL2, "weight-gradient norm").map_err(ReportError::Draw)?);
        charts.push(
            charts::spectrogram(&runs, Metric::UpdateWeightRatio, "update:weight ratio").map_err(ReportError::Draw)?,
        );
        charts.push(charts::regimes(&runs).map_err(ReportError::Draw)?);
    }
    let summary = summary_rows(&runs, options.target_acc);
    Ok(Report {
        runs,
        charts,
        summary,
        warnings,
        options,
        sections: Vec::new(),
        lead: None,
    })
}

impl Report {
    /// Writes every chart as SVG and CSV, `summary.csv`, and `report.html` into `dir`.
    /// Returns the path of `report.html`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        if dir.is_file() {
            return Err(ReportError::OutIsFile { path: dir.to_owned() });
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| ReportError::Io { path, error }
        };
        if !may_write_into(dir).map_err(io(dir))? {
            return Err(ReportError::WouldOverwrite { path: dir.to_owned() });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let write = |name: String, text: &str| {
            let p = dir.join(name);
            gradscope_train::files::write_atomic(&p, text.as_bytes()).map_err(|e| ReportError::Io {
                path: p.clone(),
                error: e.error,
            })
        };
        write(
            REPORT_MARKER.into(),
            "written by gradscope; a report here may be replaced by the next one\n",
        )?;
        for c in self.charts.iter().chain(self.sections.iter().flat_map(|s| &s.charts)) {
            write(format!("{}.svg", c.name), &c.svg)?;
            write(format!("{}.csv", c.name), &c.csv)?;
        }
        write("summary.csv".into(), &summary::render_csv(&self.summary))?;
        let html = html::render(self);
        write("report.html".into(), &html)?;
        Ok(dir.join("report.html"))
    }
}
