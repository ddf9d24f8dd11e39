//! The probe's host path: the statistics of a probe step taken over host
//! memory, on CPU backends and on a GPU while a step's tensors are small
//! ([`crate::Reductions`]). Three parts:
//!
//! - [`transfer`]: the tensors a probe step needs, read to the host together
//!   ([`transfer::Gather`]): on flex, where the "device" is the host, each is
//!   borrowed in place (no copy), on ndarray copied, both on the probe's own
//!   thread; elsewhere one transaction reads them all, requested on the
//!   training thread and waited for on the probe's own thread.
//! - [`job`]: one probe step's reads and what each tensor is
//!   ([`job::HostJob`]), and the statistics taken from them.
//! - [`kernels`]: the vectorised loops those statistics run.
//!
//! The alternative, Burn reductions on the device ([`crate::device`]), costs
//! about 40 small ops per layer: a full pass over memory each on flex, a
//! kernel launch each on a GPU.

pub mod job;
pub mod kernels;
pub mod transfer;

pub use job::HostJob;
pub use transfer::{Gather, HostValues, Reading, host};
