//! gradscope-lab owns experiments: the lab's suites (claims with roles and
//! seeds, [`suite`]) and the rule that judges each claim from its runs
//! ([`claims`]), `gradscope fix`'s remedies and the rule that says whether one
//! cured a run ([`fix`]), and the policy that trains, resumes or reuses the
//! runs they plan without overwriting anything ([`run`]). It trains through the
//! probe crate's [`gradscope_probe::ProbedRun`], reads runs and draws them
//! through the report crate, and knows nothing of command lines or terminals.

pub mod claims;
pub mod fix;
pub mod run;
pub mod suite;

pub use claims::{ClaimResult, Outcome, evaluate};
pub use run::{JobOutcome, LabError, Spread, judge_suite, run_all, run_job};
pub use suite::{ClaimKind, ClaimSpec, Job, Suite, distinct_runs};
