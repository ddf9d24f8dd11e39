//! The lab's run policy, shared by `gradscope lab` and `gradscope fix`: a
//! job's directory is trained, resumed or reused, and never overwritten; and
//! the judging of a suite from its runs into one report and `claims.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradscope_probe::ProbedRun;
use gradscope_report::{ReportError, RunData};
use gradscope_train::run_dir::{CHECKPOINTS_DIR, CONFIG_FILE, read_config, read_summary};
use gradscope_train::{RunDir, Status, TrainError};

use crate::claims::{ClaimResult, evaluate};
use crate::suite::{Job, Suite, distinct_runs};

/// Why a job or a suite's judging could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "{dir} holds a run of another configuration (from another suite or version); move it away or choose another --out"
    )]
    OtherRun { dir: PathBuf },
    #[error("{dir} was interrupted")]
    Interrupted { dir: PathBuf },
    #[error("moving {dir} aside: {source}")]
    MoveAside { dir: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// What [`run_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Trained from scratch.
    Trained,
    /// Continued from a checkpoint a previous lab left.
    Resumed,
    /// A run of this configuration had already ended there.
    Reused,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Trained => "trained",
            JobOutcome::Resumed => "resumed",
            JobOutcome::Reused => "reused",
        }
    }
}

/// Runs one job, or reuses/resumes what a previous lab left in its
/// directory; a run of another configuration there is refused, and one that
/// died before its first checkpoint is moved aside, never deleted. Returns
/// what it did and, when the TensorBoard export failed, why.
pub fn run_job(job: &Job) -> Result<(JobOutcome, Option<String>), LabError> {
    let dir = &job.dir;
    // What a previous lab left here is reused only if it is this very run.
    if dir.join(CONFIG_FILE).exists() {
        let saved = gradscope_probe::RunConfig::split(read_config(dir)?).map_err(TrainError::from)?;
        if saved != job.config {
            return Err(LabError::OtherRun { dir: dir.clone() });
        }
    }
    if let Some(s) = read_summary(dir).ok().flatten()
        && matches!(s.status, Status::Completed | Status::Diverged)
    {
        return Ok((JobOutcome::Reused, None));
    }
    let (run, outcome) = if dir.join(CHECKPOINTS_DIR).join("latest").exists() {
        (ProbedRun::resume(dir, Default::default())?, JobOutcome::Resumed)
    } else {
        if dir.exists() {
            // Another process still training here (a second lab on the same --out) is left alone.
            if dir.join(CONFIG_FILE).exists() {
                drop(RunDir::open(dir)?);
            }
            let aside = dir.with_extension(format!("incomplete-{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
            std::fs::rename(dir, &aside).map_err(|source| LabError::MoveAside {
                dir: dir.clone(),
                source,
            })?;
        }
        (ProbedRun::start(&job.config, dir)?, JobOutcome::Trained)
    };
    let summary = run.run()?;
    if summary.status == Status::Interrupted {
        return Err(LabError::Interrupted { dir: dir.clone() });
    }
    let warning = gradscope_tensorboard::export(dir)
        .err()
        .map(|e| format!("no TensorBoard events for {}: {e}", dir.display()));
    Ok((outcome, warning))
}

/// How [`run_all`] spreads the runs over the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// One run at a time, on every thread of the pool.
    Sequential,
    /// This many runs at a time, one thread each (each run in a one-thread
    /// rayon pool of its own).
    Concurrent(usize),
}

/// Runs every job ([`run_job`]); a run that several jobs share (the same
/// directory) is run once. `done` hears of each run as it ends: its index in
/// `jobs` and what [`run_job`] did. Stops at the first error, after the runs
/// already going have ended, and returns it with the failed job's index.
pub fn run_all(
    jobs: &[Job],
    spread: Spread,
    done: &(dyn Fn(usize, JobOutcome, Option<String>) + Sync),
) -> Result<(), (usize, LabError)> {
    let unique = distinct_runs(jobs);
    let one = |i: usize| {
        let (outcome, warning) = run_job(&jobs[i]).map_err(|e| (i, e))?;
        done(i, outcome, warning);
        Ok(())
    };
    let workers = match spread {
        Spread::Sequential => return unique.into_iter().try_for_each(one),
        Spread::Concurrent(n) => n.clamp(1, unique.len().max(1)),
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("a one-thread pool starts");
                while failed.lock().is_ok_and(|f| f.is_none()) {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&i) = unique.get(k) else { break };
                    if let Err(e) = pool.install(|| one(i))
                        && let Ok(mut f) = failed.lock()
                    {
                        f.get_or_insert(e);
                    }
                }
            });
        }
    });
    match failed.into_inner().expect("no worker panicked holding the lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Judges every claim of `suite` from its jobs' runs (trained already) and
/// writes the lab report under `out/report` and the verdicts to
/// `out/claims.json`. Returns the results and the report page's path.
pub fn judge_suite(suite: &Suite, jobs: &[Job], out: &Path) -> Result<(Vec<ClaimResult>, PathBuf), LabError> {
    // A run shared by several claims is trained once and drawn once.
    let dirs: Vec<PathBuf> = distinct_runs(jobs).into_iter().map(|i| jobs[i].dir.clone()).collect();
    let mut report = gradscope_report::lab_report(&dirs, Vec::new())?;
    let mut results: Vec<ClaimResult> = Vec::new();
    for claim in &suite.claims {
        // The claim's runs by role, in the order its kind names them.
        let mut roles: Vec<&str> = claim.kind.roles().to_vec();
        roles.extend(
            claim
                .roles
                .keys()
                .map(String::as_str)
                .filter(|r| !claim.kind.roles().contains(r)),
        );
        let mut by_role: BTreeMap<String, Vec<RunData>> = BTreeMap::new();
        let mut ordered: Vec<(String, RunData)> = Vec::new();
        for role in roles {
            for job in jobs.iter().filter(|j| j.claim == claim.id && j.role == role) {
                if let Some(r) = report.runs.iter().find(|r| r.dir == job.dir) {
                    by_role.entry(job.role.clone()).or_default().push(r.clone());
                    ordered.push((job.role.clone(), r.clone()));
                }
            }
        }
        let result = evaluate(claim, &by_role);
        report.sections.push(gradscope_report::claim_section(
            result.heading(),
            claim.kind == crate::suite::ClaimKind::DeadUnits,
            &ordered,
        )?);
        results.push(result);
    }
    let html = report.write(&out.join("report"))?;
    let json = serde_json::to_string_pretty(&serde_json::json!({ "suite": suite.name, "claims": results }))
        .expect("claims serialise");
    let path = out.join("claims.json");
    gradscope_train::files::write_atomic(&path, json.as_bytes()).map_err(TrainError::from)?;
    Ok((results, html))
}
