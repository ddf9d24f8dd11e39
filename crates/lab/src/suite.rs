//! Lab suites: a base configuration, claims with named roles, seeds; and the
//! runs they plan (claims x roles x seeds, a run two claims share planned once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradscope_probe::RunConfig;

/// A lab suite, as in `experiments/*.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// TrainConfig fields shared by every run.
    #[serde(default)]
    pub base: toml::Table,
    pub claims: Vec<ClaimSpec>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One claim: what it says, how it is judged, and the runs it needs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSpec {
    pub id: String,
    pub kind: ClaimKind,
    pub title: String,
    /// TrainConfig fields overriding the suite's `base` for every role of
    /// this claim (a CNN claim's optimiser and epochs, say).
    #[serde(default)]
    pub base: toml::Table,
    /// Role name -> TrainConfig fields overriding `base`.
    pub roles: BTreeMap<String, toml::Table>,
}

/// How a claim is judged (see [`crate::claims::evaluate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Roles `deep`, `shallow`.
    DeepVsShallow,
    /// Roles `sick`, `cured`.
    Cure,
    /// Roles `relu`, `leaky`.
    DeadUnits,
    /// Roles `plain_xavier`, `plain_small`, `bn_xavier`, `bn_small`.
    Batchnorm,
    /// Roles `shallow_plain`, `deep_plain`, `deep_residual`.
    Skip,
    /// Roles `small`, `xavier`, `he`.
    Init,
}

impl ClaimKind {
    /// What a reader should look at in the claim's charts.
    pub fn look_at(self) -> &'static str {
        match self {
            ClaimKind::DeepVsShallow => {
                "the depth profile: the deep net's signal falls by a constant factor per layer toward the input (a straight line on the log axis), the shallow net's barely falls; the loss chart: the deep net stays near ln 10 = 2.30"
            }
            ClaimKind::Cure => {
                "the depth profile: the ReLU/He net's signal stays level across depth where the sigmoid net's falls; the loss chart: only the ReLU net learns"
            }
            ClaimKind::DeadUnits => {
                "the units chart: most ReLU units are dead from the start and stay dead (no gradient reaches them); the accuracy chart: only the LeakyReLU net learns"
            }
            ClaimKind::Batchnorm => {
                "the accuracy chart: both BatchNorm nets learn, whatever their initialisation; both plain sigmoid nets stay at chance"
            }
            ClaimKind::Skip => {
                "the loss chart: the deep plain net stays near ln 10 = 2.30 while the residual net of the same depth trains about as well as the shallow one or better; the depth profile at the first step: with skips the signal stays level across depth (in the control, the residual net's initialisation without skips, it fades toward the input)"
            }
            ClaimKind::Init => {
                "the depth profile at step 0: with a small init the signal dies within a few layers, Xavier lets it fade, He keeps it level; the accuracy chart: the small init stays at chance (He and Xavier both train at this depth)"
            }
        }
    }

    /// The roles a claim of this kind must define.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            ClaimKind::DeepVsShallow => &["deep", "shallow"],
            ClaimKind::Cure => &["sick", "cured"],
            ClaimKind::DeadUnits => &["relu", "leaky"],
            ClaimKind::Batchnorm => &["plain_xavier", "plain_small", "bn_xavier", "bn_small"],
            ClaimKind::Skip => &["shallow_plain", "deep_plain", "deep_residual"],
            ClaimKind::Init => &["small", "xavier", "he"],
        }
    }
}

/// One training run of the suite.
#[derive(Debug, Clone)]
pub struct Job {
    pub claim: String,
    pub role: String,
    pub seed: u64,
    pub config: RunConfig,
    pub dir: PathBuf,
}

/// The index of each distinct run among `jobs`: the first job of each
/// directory, in order. A run several claims share is planned once per claim
/// but trained, listed and drawn once.
pub fn distinct_runs(jobs: &[Job]) -> Vec<usize> {
    let mut runs: Vec<usize> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if !runs.iter().any(|&r| jobs[r].dir == j.dir) {
            runs.push(i);
        }
    }
    runs
}

impl Suite {
    /// Parses a suite file, naming it in errors.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses suite text and checks that every claim defines its roles.
    pub fn parse(text: &str) -> Result<Self, String> {
        let suite: Suite = toml::from_str(text).map_err(|e| e.to_string())?;
        for c in &suite.claims {
            for role in c.kind.roles() {
                if !c.roles.contains_key(*role) {
                    return Err(format!(
                        "claim `{}` ({:?}) needs a role `{role}`; found {:?}",
                        c.id,
                        c.kind,
                        c.roles.keys().collect::<Vec<_>>()
                    ));
                }
            }
        }
        Ok(suite)
    }

    /// Every run of the suite (claims x roles x seeds), with its directory under `out`.
    pub fn jobs(&self, out: &Path) -> Result<Vec<Job>, String> {
        let mut jobs = Vec::new();
        for c in &self.claims {
            for (role, overrides) in &c.roles {
                for &seed in &self.seeds {
                    let mut table = self.base.clone();
                    for (k, v) in c.base.iter().chain(overrides) {
                        table.insert(k.clone(), v.clone());
                    }
                    table.insert("seed".into(), toml::Value::Integer(seed as i64));
                    // Through the same strict reader as `--config` files: a typo in a suite is named.
                    let config = RunConfig::from_toml(&toml::to_string(&table).expect("a table serialises"))
                        .map_err(|e| format!("claim `{}`, role `{role}`: {e}", c.id))?;
                    config
                        .train
                        .model
                        .resolve()
                        .map_err(|e| format!("claim `{}`, role `{role}`: {e}", c.id))?;
                    // A configuration another claim already runs is trained once, in that claim's folder.
                    let dir = match jobs.iter().find(|j: &&Job| j.config == config) {
                        Some(same) => same.dir.clone(),
                        None => out.join(&c.id).join(format!("{role}-s{seed}")),
                    };
                    jobs.push(Job {
                        claim: c.id.clone(),
                        role: role.clone(),
                        seed,
                        config,
                        dir,
                    });
                }
            }
        }
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_suites_parse_and_expand() {
        for (file, seeds) in [("vanishing.toml", 2), ("quick.toml", 1), ("full.toml", 3)] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../experiments")
                .join(file);
            let suite = Suite::load(&path).unwrap();
            let jobs = suite.jobs(Path::new("lab")).unwrap();
            let roles: usize = suite.claims.iter().map(|c| c.roles.len()).sum();
            assert_eq!(jobs.len(), roles * seeds, "{file}");
            assert!(jobs.iter().all(|j| j.config.train.seed == j.seed));
        }
    }

    #[test]
    fn identical_runs_are_shared_between_claims() {
        let suite = Suite::parse(
            "name = \"x\"\nseeds = [0, 1]\n[[claims]]\nid = \"a\"\nkind = \"cure\"\ntitle = \"t\"\nroles.sick = { lr = 0.5 }\nroles.cured = {}\n[[claims]]\nid = \"b\"\nkind = \"cure\"\ntitle = \"t\"\nroles.sick = { lr = 0.5 }\nroles.cured = { lr = 0.2 }\n",
        )
        .unwrap();
        let jobs = suite.jobs(Path::new("out")).unwrap();
        assert_eq!(jobs.len(), 8);
        let dir = |claim: &str, role: &str, seed: u64| {
            jobs.iter()
                .find(|j| j.claim == claim && j.role == role && j.seed == seed)
                .unwrap()
                .dir
                .clone()
        };
        assert_eq!(dir("b", "sick", 1), Path::new("out/a/sick-s1"));
        assert_eq!(dir("b", "cured", 1), Path::new("out/b/cured-s1"));
        assert_ne!(dir("a", "sick", 0), dir("a", "sick", 1), "seeds stay apart");
        // 8 jobs, 6 runs: b's sick role is a's in both seeds.
        let runs = distinct_runs(&jobs);
        assert_eq!(runs.len(), 6);
        assert!(runs.iter().all(|&i| jobs[i].claim == "a" || jobs[i].role == "cured"));
    }

    #[test]
    fn missing_role_is_named() {
        let err =
            Suite::parse("name = \"x\"\n[[claims]]\nid = \"c\"\nkind = \"cure\"\ntitle = \"t\"\nroles.sick = {}\n")
                .unwrap_err();
        assert!(err.contains("claim `c` (Cure) needs a role `cured`"), "{err}");
    }

    #[test]
    fn role_overrides_base() {
        let suite = Suite::parse(
            "name = \"x\"\nseeds = [3]\n[base]\nlr = 0.1\nepochs = 2\n[[claims]]\nid = \"c\"\nkind = \"cure\"\ntitle = \"t\"\nbase = { lr = 0.2, batch_size = 16 }\nroles.sick = { lr = 0.5 }\nroles.cured = {}\n",
        )
        .unwrap();
        let jobs = suite.jobs(Path::new("out")).unwrap();
        let sick = jobs.iter().find(|j| j.role == "sick").unwrap();
        assert_eq!((sick.config.train.lr, sick.config.train.seed), (0.5, 3));
        assert_eq!(sick.dir, Path::new("out/c/sick-s3"));
        // Suite base < claim base < role.
        let cured = &jobs.iter().find(|j| j.role == "cured").unwrap().config.train;
        assert_eq!((cured.lr, cured.batch_size, cured.epochs), (0.2, 16, 2));
    }

    #[test]
    fn keys_nobody_owns_are_named() {
        let suite = |role: &str| {
            Suite::parse(&format!(
                "name = \"x\"\n[[claims]]\nid = \"c\"\nkind = \"cure\"\ntitle = \"t\"\nroles.sick = {{ {role} }}\nroles.cured = {{}}\n"
            ))
            .unwrap()
            .jobs(Path::new("out"))
        };
        let err = suite("learning_rate = 0.5").unwrap_err();
        assert!(
            err.contains("claim `c`, role `sick`: unknown key `learning_rate`"),
            "{err}"
        );
        let err = suite("probe_update_every = 0").unwrap_err();
        assert!(err.contains("probe_update_every = 0"), "{err}");
        let ok = suite("probe = { kind = \"every\", n = 3 }").unwrap();
        let sick = ok.iter().find(|j| j.role == "sick").unwrap();
        assert_eq!(
            sick.config.probe.schedule,
            gradscope_probe::ProbeSchedule::Every { n: 3 }
        );
    }
}
