//! A probe step's tensors on the host: borrowed in place on flex, copied on
//! ndarray, read in one transaction elsewhere.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use burn::backend::flex::FlexTensor;
#[allow(deprecated)] // ndarray stays a supported `--backend` while Burn ships it.
use burn::backend::{Flex, NdArray};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, ExecutionError, Tensor, TensorData, Transaction, read_sync};

/// A float tensor's values on the host, read without copying where possible.
///
/// On flex a contiguous f32 tensor is borrowed in place: the view holds a
/// reference to the tensor's buffer (an `Arc`), so the tensor stays usable and
/// nothing is copied. Burn's own read back (`into_data`) copies whenever the
/// buffer is shared, and every tensor the probe reads is shared (gradients go
/// on to the optimiser, activations to the backward pass): copying them cost
/// the probe about half of its time on an 8x256 MLP. Other backends, and
/// strided or non-f32 flex tensors, get a copy.
///
/// While a view lives the buffer is shared, so flex writes to it only after
/// copying it (copy on write): reading a view on another thread is safe, and
/// holding a weight's view across the optimiser step costs that weight a copy.
pub enum HostValues {
    /// Borrowed from a flex tensor (contiguous, offset 0, f32, aligned).
    Flex(FlexTensor),
    /// Copied out through `into_data`.
    Copied(Vec<f32>),
}

impl Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            HostValues::Flex(t) => {
                let n = t.layout().num_elements();
                // Checked in `borrow`: contiguous from offset 0, f32, 4-byte aligned.
                &bytemuck::cast_slice(t.bytes())[..n]
            }
            HostValues::Copied(v) => v,
        }
    }
}

/// A tensor's values on the host (borrowed on flex, else copied; see [`HostValues`]).
pub fn host<const D: usize>(t: &Tensor<D>) -> HostValues {
    borrow(t).unwrap_or_else(|| HostValues::Copied(t.to_data().convert::<f32>().try_into_vec().expect("f32 tensor")))
}

/// The tensor's flex buffer, if it can be read in place.
fn borrow<const D: usize>(t: &Tensor<D>) -> Option<HostValues> {
    let flex = t.clone().try_into_primitive::<Flex>().ok()?;
    let n = flex.layout().num_elements();
    (flex.dtype() == DType::F32
        && flex.is_contiguous()
        && flex.layout().start_offset() == 0
        && bytemuck::try_cast_slice::<u8, f32>(flex.bytes()).is_ok_and(|v| v.len() >= n))
    .then_some(HostValues::Flex(flex))
}

/// The tensors one probe step reads, collected first and read together.
///
/// On the CPU backends (flex, ndarray) each tensor is read where the values
/// are needed ([`Transfer::finish`], on the probe's own thread): borrowed in
/// place on flex, copied on ndarray. The training thread only keeps a handle
/// to each tensor, whatever its rank: no reshape, no downcast, no copy there.
///
/// On any other backend they are read back in **one** transaction
/// ([`Transaction`]: one request for every buffer, no kernels), started on the
/// training thread, in the order of its work, and finished wherever the
/// values are needed, so the transfer overlaps the next step's work instead of
/// stalling the training loop until the device has drained its queue. (A read
/// back per tensor, each a synchronisation, cost ~15 ms per probed step on an
/// H100 for the ~40 tensors of an 8x256 MLP.)
pub struct Gather {
    reads: Reads,
    len: usize,
}

/// How a step's tensors reach the host: decided once per run from the
/// device they live on ([`Reading::of`]), not per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// CPU backends (flex, ndarray): each tensor read on the thread that
    /// takes the statistics.
    Local,
    /// Any other backend: one transaction for every tensor.
    Transaction,
}

impl Reading {
    /// How tensors on `t`'s device are read.
    #[allow(deprecated)] // ndarray stays a supported `--backend` while Burn ships it.
    pub fn of<const D: usize>(t: &Tensor<D>) -> Self {
        if t.clone().try_into_primitive::<Flex>().is_ok() || t.clone().try_into_primitive::<NdArray>().is_ok() {
            Reading::Local
        } else {
            Reading::Transaction
        }
    }
}

/// A tensor kept to be read later, on whichever thread finishes the transfer.
type LocalRead = Box<dyn FnOnce() -> HostValues + Send>;

enum Reads {
    Local(Vec<LocalRead>),
    Transaction(Transaction),
}

impl Gather {
    /// An empty gather for tensors read the way `reading` says.
    pub fn new(reading: Reading) -> Self {
        let reads = match reading {
            Reading::Local => Reads::Local(Vec::new()),
            Reading::Transaction => Reads::Transaction(Transaction::default()),
        };
        Self { reads, len: 0 }
    }

    /// Queues `t`; its values (flattened) will be at the returned index of
    /// [`Transfer::finish`].
    pub fn add<const D: usize>(&mut self, t: Tensor<D>) -> usize {
        match &mut self.reads {
            Reads::Local(local) => local.push(Box::new(move || host(&t))),
            Reads::Transaction(tx) => *tx = std::mem::take(tx).register(t),
        }
        self.len += 1;
        self.len - 1
    }

    /// Queues the gradient of parameter `id` (of rank `rank`), if it has one.
    pub fn add_grad(&mut self, grads: &GradientsParams, (id, rank): (ParamId, usize)) -> Option<usize> {
        match rank {
            1 => grads.get::<1>(id).map(|g| self.add(g)),
            2 => grads.get::<2>(id).map(|g| self.add(g)),
            3 => grads.get::<3>(id).map(|g| self.add(g)),
            4 => grads.get::<4>(id).map(|g| self.add(g)),
            _ => None,
        }
    }

    /// Queues the current values of the given parameters of `model`; the index
    /// of each, by position in `ids` (`None` where `ids` has none or the module lacks it).
    pub fn add_params<M: Module>(&mut self, model: &M, ids: &[Option<ParamId>]) -> Vec<Option<usize>> {
        struct Add<'a> {
            gather: &'a mut Gather,
            ids: &'a [Option<ParamId>],
            at: Vec<Option<usize>>,
        }
        impl ModuleVisitor for Add<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(i) = self.ids.iter().position(|id| *id == Some(param.id)) {
                    self.at[i] = Some(self.gather.add(param.val().inner()));
                }
            }
        }
        let mut add = Add {
            gather: self,
            ids,
            at: vec![None; ids.len()],
        };
        model.visit(&mut add);
        add.at
    }

    /// Starts reading every queued tensor: nothing to do on a CPU backend;
    /// elsewhere the transfer is requested here and waited for by
    /// [`Transfer::finish`].
    pub fn start(self) -> Transfer {
        let tx = match self.reads {
            Reads::Local(reads) => return Transfer::Local(reads),
            Reads::Transaction(tx) => tx,
        };
        let mut read: InFlight = Box::pin(tx.execute_async());
        // One poll issues the request (Burn's futures are lazy); a backend that
        // reads synchronously is done right here.
        match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(data) => Transfer::Done(host_values(data)),
            Poll::Pending => Transfer::InFlight(read),
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = Result<Vec<TensorData>, ExecutionError>> + Send>>;

/// A [`Gather`]'s values: to read on a CPU backend, ready, or in flight from the device.
pub enum Transfer {
    Local(Vec<LocalRead>),
    Done(Vec<HostValues>),
    InFlight(InFlight),
}

impl Transfer {
    /// The values, in the order they were added; reads them on a CPU backend,
    /// waits for a transfer in flight elsewhere.
    pub fn finish(self) -> Vec<HostValues> {
        match self {
            Transfer::Local(reads) => reads.into_iter().map(|read| read()).collect(),
            Transfer::Done(values) => values,
            Transfer::InFlight(read) => host_values(read_sync(read)),
        }
    }
}

fn host_values(data: Result<Vec<TensorData>, ExecutionError>) -> Vec<HostValues> {
    let data = data.unwrap_or_else(|e| panic!("the probe could not read its tensors back: {e:?}"));
    data.into_iter()
        .map(|d| {
            let v = d
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("probe tensors are float");
            HostValues::Copied(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_borrows_flex_buffers_and_copies_the_rest() {
        use burn::tensor::{Device, Tensor, TensorData};
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 3.5).collect();
        let data = TensorData::new(x.clone(), [3, 4]);
        let t = Tensor::<2>::from_data(data.clone(), &Device::flex());
        let view = host(&t);
        assert!(
            matches!(view, HostValues::Flex(_)),
            "a contiguous flex tensor is read in place"
        );
        assert_eq!(&*view, &x[..]);
        drop(view);
        // Still usable, unchanged.
        assert_eq!(t.clone().into_data().try_to_vec::<f32>().unwrap(), x);
        // A transposed view is strided: copied, in logical order.
        let tt = t.clone().transpose();
        let want = tt.clone().into_data().try_to_vec::<f32>().unwrap();
        let view = host(&tt);
        assert!(matches!(view, HostValues::Copied(_)));
        assert_eq!(&*view, &want[..]);
        // Another backend: copied.
        let ndarray = gradscope_train::Backend::Ndarray
            .device()
            .expect("ndarray is compiled in");
        let nd = Tensor::<2>::from_data(data, &ndarray);
        let view = host(&nd);
        assert!(matches!(view, HostValues::Copied(_)));
        assert_eq!(&*view, &x[..]);
    }

    /// Flex lends its buffers; ndarray is copied where the values are read; a GPU's transfer
    /// (wgpu, where a Vulkan driver exists: llvmpipe in CI) is requested here
    /// and finished on another thread, as the probe's worker does.
    #[test]
    fn gather_reads_every_tensor_in_order_on_any_backend() {
        use burn::tensor::{Device, Tensor, TensorData};
        use gradscope_train::Backend;
        let mut devices = vec![(Device::flex(), true), (Backend::Ndarray.device().unwrap(), false)];
        match Backend::Wgpu.device() {
            Ok(wgpu) => devices.push((wgpu, false)),
            Err(e) => eprintln!("wgpu not checked: {e}"),
        }
        for (device, borrowed) in devices {
            let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
            let b: Vec<f32> = vec![-1.5, 2.5, 7.0];
            let reading = Reading::of(&Tensor::<1>::zeros([1], &device));
            let mut gather = Gather::new(reading);
            let ia = gather.add(Tensor::<2>::from_data(TensorData::new(a.clone(), [2, 3]), &device));
            let ib = gather.add(Tensor::<1>::from_data(TensorData::new(b.clone(), [3]), &device));
            let transfer = gather.start();
            let values = std::thread::spawn(move || transfer.finish()).join().unwrap();
            assert_eq!((&*values[ia], &*values[ib]), (&a[..], &b[..]), "{device:?}");
            assert_eq!(values.iter().all(|v| matches!(v, HostValues::Flex(_))), borrowed);
        }
    }
}
