//! The probe's own thread: it takes a probe step's statistics from the tensors
//! read on the training thread and writes the step's record, while training
//! goes on with the next step.
//!
//! Only collecting the tensors ([`HostJob::collect`]) stays on the training
//! thread: on the CPU backends a handle to each tensor, which this thread
//! then borrows (flex) or copies (ndarray); on a GPU the request for one
//! transfer, which this thread then waits for (so the training loop does not
//! wait for the device to drain its queue). The statistics (one pass
//! over ~5 MB per step on an 8x256 MLP, ~7 MB on update steps) and the CSV lines move off it: done in
//! line they cost that MLP 10-20% of every probed step; on their own thread the
//! training loop pays for the reads, the gradient captures and the contention
//! for memory (`gradscope bench --probe`). The record comes back at the next
//! step's `after_backward`, before the optimiser moves on, so a non-finite
//! value still stops the run within one step, with its forensics.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gradscope_models::ProbePoint;
use gradscope_train::TrainError;
use gradscope_train::files::LineLog;

use crate::host::HostJob;
use crate::metric::Metric;
use crate::record::{HIST_HEADER, PROBE_HEADER, ProbeRecord, hist_lines};
use crate::step::{StepStats, VectorKind};
use gradscope_train::run_dir::{PROBE_FILE, PROBE_HIST_FILE};

/// What a probe step's record needs besides its statistics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub step: u64,
    /// An update step: histograms, weight norms and update sizes.
    pub update: bool,
    /// This probe step closes a dead-unit window.
    pub window_end: bool,
}

/// A probe step handed to the worker.
pub(crate) enum Job {
    /// Host path: the step's tensors, read; the statistics are still to take.
    Host(Meta, HostJob),
    /// Device path: statistics already reduced and read back.
    Done(Meta, StepStats),
}

/// A record the worker wrote.
pub(crate) struct Written {
    pub record: Result<ProbeRecord, TrainError>,
    /// Whether the record holds a non-finite value (checked here, off the
    /// training thread, which only has to stop the run).
    pub nonfinite: bool,
    /// Seconds the worker spent on it.
    pub busy: Duration,
}

/// Turns a probe step's statistics into its record and appends it to the
/// run's `probe.csv` and `probe_hist.csv`.
pub(crate) struct Writer {
    pub points: Vec<ProbePoint>,
    /// Per unit, max |activation| over the probed batches of the current window.
    pub alive: Vec<Option<Vec<f32>>>,
    /// Per point, the latest weight norm (read on update steps), which the
    /// steps in between divide their gradient norm by.
    pub weight_l2: Vec<Option<f64>>,
    pub csv: LineLog,
    pub hist_csv: LineLog,
}

impl Writer {
    /// A writer appending to the run's `probe.csv` and `probe_hist.csv` in
    /// `dir` (each given its header if new).
    pub fn open(dir: &std::path::Path, points: &[ProbePoint]) -> Result<Self, TrainError> {
        let mut csv = LineLog::append(&dir.join(PROBE_FILE))?;
        let mut hist_csv = LineLog::append(&dir.join(PROBE_HIST_FILE))?;
        if csv.is_empty() {
            csv.line(PROBE_HEADER)?;
        }
        if hist_csv.is_empty() {
            hist_csv.line(HIST_HEADER)?;
        }
        Ok(Self {
            points: points.to_vec(),
            alive: vec![None; points.len()],
            weight_l2: vec![None; points.len()],
            csv,
            hist_csv,
        })
    }

    /// Takes a job's statistics and writes its record.
    fn run(&mut self, job: Job) -> Written {
        let t = Instant::now();
        let (meta, stats) = match job {
            Job::Host(meta, job) => (meta, job.compute()),
            Job::Done(meta, stats) => (meta, stats),
        };
        let record = self.write(meta, stats);
        Written {
            nonfinite: record.as_ref().is_ok_and(|r| r.first_nonfinite().is_some()),
            record,
            busy: t.elapsed(),
        }
    }

    pub fn write(&mut self, meta: Meta, stats: StepStats) -> Result<ProbeRecord, TrainError> {
        let mut rec = ProbeRecord::new(meta.step, self.points.len());
        for (p, m, v) in stats.values {
            match p {
                None => rec.model.insert(m.to_owned(), v),
                Some(i) => rec.layers[i].insert(m.to_owned(), v),
            };
        }
        let mut hists = Vec::new();
        for (i, kind, v) in stats.vectors {
            match kind {
                VectorKind::Histogram => hists.push((i, v.into_iter().map(f64::from).collect::<Vec<_>>())),
                VectorKind::UnitMaxAbs => {
                    // Units at zero for every sample of this batch.
                    rec.layers[i].insert(Metric::DeadFrac, dead_fraction(&v));
                    let acc = self.alive[i].get_or_insert_with(|| vec![0.0; v.len()]);
                    acc.iter_mut().zip(&v).for_each(|(a, b)| *a = a.max(*b));
                }
            }
        }
        if meta.window_end {
            // Units that stayed at zero for every sample of every probed batch in the window.
            for (i, acc) in self.alive.iter_mut().enumerate() {
                if let Some(a) = acc.take() {
                    rec.layers[i].insert(Metric::DeadWindowFrac, dead_fraction(&a));
                }
            }
        }
        for (layer, latest) in rec.layers.iter_mut().zip(&mut self.weight_l2) {
            if let Some(w) = layer.get(&Metric::WeightL2) {
                *latest = Some(*w);
            }
            let Some(g) = layer.get(&Metric::GradL2).copied() else {
                continue;
            };
            if let Some(n) = layer.get(&Metric::WeightNumel).copied() {
                layer.insert(Metric::GradRms, g / n.sqrt());
            }
            // Ratios to a zero weight (a zero-initialised layer) are undefined, not divergent.
            if let Some(w) = latest.filter(|w| *w != 0.0) {
                layer.insert(Metric::GradWeightRatio, g / w);
            }
            // The update relative to the weights it started from: a zero-initialised
            // layer's first update has no ratio (against the weights after it, it
            // would read exactly 1).
            let before = layer.remove(&Metric::WeightBeforeL2).filter(|w| *w != 0.0);
            if let (Some(u), Some(w)) = (layer.remove(&Metric::UpdateL2), before) {
                layer.insert(Metric::UpdateWeightRatio, u / w);
            }
        }
        let lines = rec.csv_lines(&self.points);
        self.csv.line(lines.trim_end_matches('\n'))?;
        if meta.update {
            let text: String = hists
                .iter()
                .map(|(i, counts)| hist_lines(rec.step, &self.points[*i], counts))
                .collect();
            if !text.is_empty() {
                self.hist_csv.line(text.trim_end_matches('\n'))?;
            }
        }
        Ok(rec)
    }
}

/// The fraction of units whose max |activation| is 0: dead on every sample seen.
pub(crate) fn dead_fraction(max_abs: &[f32]) -> f64 {
    max_abs.iter().filter(|&&a| a == 0.0).count() as f64 / max_abs.len().max(1) as f64
}

/// Runs [`Job`]s through a [`Writer`], one at a time: on a thread of its own,
/// or, on a machine with one core (nothing to gain there), when waited for.
pub(crate) enum Worker {
    Thread {
        /// `None` once dropping: closing it ends the thread's loop.
        jobs: Option<mpsc::Sender<Job>>,
        results: mpsc::Receiver<Written>,
        thread: Option<thread::JoinHandle<()>>,
    },
    /// The writer, and the job to run when waited for.
    Inline(Box<(Writer, Option<Job>)>),
}

impl Worker {
    pub fn start(mut writer: Writer) -> Self {
        if thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return Worker::Inline(Box::new((writer, None)));
        }
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, results) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("gradscope-probe".into())
            .spawn(move || {
                while let Some(job) = next_job(&inbox) {
                    if outbox.send(writer.run(job)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the probe's worker thread");
        Worker::Thread {
            jobs: Some(jobs),
            results,
            thread: Some(thread),
        }
    }

    /// Hands over a job; [`Self::wait`] for its record before submitting the next.
    pub fn submit(&mut self, job: Job) {
        match self {
            Worker::Thread { jobs, .. } => {
                // A closed channel means the thread died; `wait` reports why.
                let _ = jobs.as_ref().expect("open until dropped").send(job);
            }
            Worker::Inline(inline) => inline.1 = Some(job),
        }
    }

    /// The record of the job submitted last.
    pub fn wait(&mut self) -> Written {
        match self {
            Worker::Thread { results, thread, .. } => match results.recv() {
                Ok(written) => written,
                // The thread ended without answering: it panicked. Raise its panic here.
                Err(_) => match thread.take().map(thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("the probe's worker thread stopped"),
                },
            },
            Worker::Inline(inline) => {
                let job = inline.1.take().expect("a job was submitted");
                inline.0.run(job)
            }
        }
    }
}

/// How often the worker looks for a job while jobs come often, and for how long.
///
/// Handing a job to a thread blocked in `recv` wakes it with a system call on
/// the sending thread, the training thread. A worker that looks for its next
/// job every [`POLL`] spares the training thread that call; the job has a
/// whole training step to be done in (what it buys: BENCHMARKS.md, "Probe
/// overhead"). After [`POLL_FOR`] without a job (a sparse schedule, a slow
/// step) it blocks again.
const POLL: Duration = Duration::from_micros(200);
const POLL_FOR: Duration = Duration::from_millis(50);

/// The next job, or `None` once the channel is closed.
fn next_job(inbox: &mpsc::Receiver<Job>) -> Option<Job> {
    let idle = Instant::now();
    while idle.elapsed() < POLL_FOR {
        match inbox.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => thread::sleep(POLL),
        }
    }
    inbox.recv().ok()
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Worker::Thread { jobs, thread, .. } = self {
            jobs.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradscope_models::PointKind;

    fn point(name: &str, depth: usize) -> ProbePoint {
        ProbePoint {
            name: name.into(),
            kind: PointKind::Dense,
            depth,
            activation: Some(gradscope_models::Activation::Relu),
            params: vec![format!("{name}.weight")],
            weight: Some(format!("{name}.weight")),
            shape: vec![4],
            has_norm: false,
            block: None,
            main_path: true,
        }
    }

    fn stats(dead_units: &[f32]) -> StepStats {
        let mut s = StepStats::default();
        s.values.push((None, Metric::Loss, 2.3));
        s.values.push((Some(0), Metric::GradL2, 0.5));
        s.values.push((Some(0), Metric::WeightL2, 2.0));
        s.values.push((Some(0), Metric::WeightNumel, 16.0));
        s.values.push((Some(0), Metric::UpdateL2, 0.01));
        s.values.push((Some(0), Metric::WeightBeforeL2, 2.0));
        s.vectors.push((0, VectorKind::UnitMaxAbs, dead_units.to_vec()));
        s
    }

    fn writer(dir: &std::path::Path) -> Writer {
        Writer::open(dir, &[point("hidden.0", 0)]).unwrap()
    }

    /// Records and CSV lines are the same whether the worker runs on its own
    /// thread or in line, and a dead-unit window spans the jobs.
    #[test]
    fn thread_and_inline_workers_write_the_same_records() {
        let run = |threaded: bool| {
            let dir = tempfile::tempdir().unwrap();
            let w = writer(dir.path());
            let mut worker = if threaded {
                Worker::start(w)
            } else {
                Worker::Inline(Box::new((w, None)))
            };
            let mut recs = Vec::new();
            for (step, units) in [[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 1.0]].iter().enumerate() {
                let meta = Meta {
                    step: step as u64,
                    update: false,
                    window_end: step == 1,
                };
                worker.submit(Job::Done(meta, stats(units)));
                recs.push(worker.wait().record.unwrap());
            }
            drop(worker);
            (recs, std::fs::read_to_string(dir.path().join("probe.csv")).unwrap())
        };
        let (threaded, csv) = run(true);
        assert_eq!((threaded.clone(), csv.clone()), run(false));
        let last = &threaded[1];
        assert_eq!(last.get(0, Metric::DeadFrac), Some(0.5));
        // Unit 0 was zero in both batches; unit 2 only in the first.
        assert_eq!(last.get(0, Metric::DeadWindowFrac), Some(0.25));
        assert_eq!(last.get(0, Metric::GradWeightRatio), Some(0.25));
        assert_eq!(last.get(0, Metric::UpdateWeightRatio), Some(0.005));
        assert_eq!(last.get(0, Metric::UpdateL2), None, "turned into the ratio");
        assert!(csv.contains("1,hidden.0,0,dead_window_frac,0.25"), "{csv}");
    }

    /// Steps between update steps divide by the latest weight norm, and say
    /// nothing of the weights themselves; a zero norm gives no ratio.
    #[test]
    fn steps_between_updates_use_the_latest_weight_norm() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let record = |w: &mut Writer, step: u64, grad: f64, weight: Option<f64>| {
            let mut s = StepStats::default();
            s.values.push((Some(0), Metric::GradL2, grad));
            s.values.push((Some(0), Metric::WeightNumel, 16.0));
            if let Some(weight) = weight {
                s.values.push((Some(0), Metric::WeightL2, weight));
                s.values.push((Some(0), Metric::UpdateL2, 0.1 * weight));
                s.values.push((Some(0), Metric::WeightBeforeL2, weight));
            }
            let meta = Meta {
                step,
                update: weight.is_some(),
                window_end: false,
            };
            w.write(meta, s).unwrap()
        };
        let first = record(&mut w, 0, 1.0, Some(4.0));
        assert_eq!(first.get(0, Metric::GradWeightRatio), Some(0.25));
        assert_eq!(first.get(0, Metric::UpdateWeightRatio), Some(0.1));
        let between = record(&mut w, 1, 2.0, None);
        assert_eq!(
            between.get(0, Metric::GradWeightRatio),
            Some(0.5),
            "against step 0's norm"
        );
        assert_eq!(between.get(0, Metric::GradRms), Some(0.5));
        assert_eq!(between.get(0, Metric::WeightL2), None);
        assert_eq!(between.get(0, Metric::UpdateWeightRatio), None);
        let next = record(&mut w, 2, 2.0, Some(8.0));
        assert_eq!(next.get(0, Metric::GradWeightRatio), Some(0.25), "the new norm");
        let zero = record(&mut w, 3, 2.0, Some(0.0));
        assert_eq!(zero.get(0, Metric::GradWeightRatio), None);
        assert_eq!(zero.get(0, Metric::GradRms), Some(0.5), "needs no weight norm");
        let csv = std::fs::read_to_string(dir.path().join("probe.csv")).unwrap();
        assert!(csv.contains("1,hidden.0,0,grad_weight_ratio,0.5"), "{csv}");
        assert!(!csv.contains("1,hidden.0,0,weight_l2"), "{csv}");
        assert!(
            !csv.contains(Metric::WeightBeforeL2.name()),
            "consumed by the ratio: {csv}"
        );
    }

    /// A zero-initialised layer's first update has no update:weight ratio (it
    /// is not 1, as it would be against the weights after the update).
    #[test]
    fn an_update_from_zero_weights_has_no_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let mut s = StepStats::default();
        s.values.push((Some(0), Metric::GradL2, 1.0));
        s.values.push((Some(0), Metric::WeightL2, 0.3));
        s.values.push((Some(0), Metric::UpdateL2, 0.3));
        s.values.push((Some(0), Metric::WeightBeforeL2, 0.0));
        let meta = Meta {
            step: 0,
            update: true,
            window_end: false,
        };
        let rec = w.write(meta, s).unwrap();
        assert_eq!(rec.get(0, Metric::UpdateWeightRatio), None);
        assert_eq!(rec.get(0, Metric::UpdateL2), None);
        assert_eq!(rec.get(0, Metric::WeightBeforeL2), None);
    }

    /// A job handed over while the worker polls, and one after it has gone
    /// back to blocking (a sparse schedule), are both taken.
    #[test]
    fn worker_takes_jobs_while_polling_and_after_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = Worker::start(writer(dir.path()));
        for (step, pause) in [(0, Duration::ZERO), (1, Duration::ZERO), (2, POLL_FOR * 2)] {
            std::thread::sleep(pause);
            let meta = Meta {
                step,
                update: false,
                window_end: false,
            };
            worker.submit(Job::Done(meta, stats(&[1.0; 4])));
            assert_eq!(worker.wait().record.unwrap().step, step);
        }
    }
}
