//! Parameters by module path. Burn's `ParamId`s are random per run; paths such
//! as `hidden.3.linear.weight` are stable, so everything gradscope writes or
//! compares across runs is keyed by path.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// A float parameter of a module.
#[derive(Debug, Clone)]
pub struct NamedParam {
    pub path: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
}

impl NamedParam {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Default)]
struct PathCollector {
    stack: Vec<String>,
    out: Vec<NamedParam>,
}

/// Enum variants (`Model::Mlp`) are not part of a parameter's path.
fn is_variant(container_type: &str) -> bool {
    container_type.starts_with("Enum:")
}

impl ModuleVisitor for PathCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if !is_variant(container_type) {
            self.stack.push(name.to_owned());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !is_variant(container_type) {
            self.stack.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // BatchNorm's running statistics are state, not trainable parameters.
        if self.stack.last().is_some_and(|n| n.starts_with("running_")) {
            return;
        }
        self.out.push(NamedParam {
            path: self.stack.join("."),
            id: param.id,
            shape: param.lazy_shape().dims::<D>().to_vec(),
        });
    }
}

/// Every trainable float parameter of `module` (BatchNorm running statistics
/// excluded), in visit order.
pub fn named_params<M: Module>(module: &M) -> Vec<NamedParam> {
    let mut c = PathCollector::default();
    module.visit(&mut c);
    c.out
}

/// Number of trainable parameters (what PyTorch's `parameters()` counts;
/// Burn's `num_params` also counts BatchNorm's running statistics).
pub fn trainable_params<M: Module>(module: &M) -> usize {
    named_params(module).iter().map(NamedParam::numel).sum()
}
