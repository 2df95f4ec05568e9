"""The loss engine: CE / LS / MaxSup (and a distillation term) of logits, loss and gradient in one pass.

The gradient is computed in the forward and stored, into the logits' own buffer with `inplace_backward=True`; the
backward only hands it to autograd. Beyond the gradient a backend uses only row- or chunk-sized temporaries, and
on a GPU the engine never waits for the device. Inputs are validated by the public losses (`hf_maxsup.losses`,
`hf_maxsup.linear`) before they reach [`fused_loss`].

Layout, one idea per module:

- `job.py`: the contract. `LossJob` (one call's work; the formulas every backend computes are in the module's
  docstring), `SUMS` (what a backend returns), `LOSS_NAMES` and their kernel codes, the `Backend` protocol
  (`unavailable(device, dtype)`, `forward(job)`, `scale_(grad, factor)`).
- `dispatch.py`: which backend serves a call. `auto` picks `c` on a CPU, `triton` on a GPU when Triton imports,
  `torch` otherwise (and for float64); `HF_MAXSUP_BACKEND=auto|c|triton|torch` forces one; [`kernel_info`] says
  which backend serves a device and why the faster ones do not; [`check_environment`] checks the engine's
  environment variables before any work.
- `ops.py`: the engine as torch operators (`hf_maxsup::fused_loss`, `fused_loss_`, `scale_grad_`) with fake
  implementations, what `torch.compile`, meta tensors and `torch.export` see; [`rows_loss_and_grad_`] (one pass
  over rows a caller chunks itself).
- `function.py`: one call, [`fused_loss`]: the operators under the autograd `Function` (in `torch.func`'s form),
  in place or not; `differentiable.py`: the gradient as differentiable formulas, for double backward and soft
  targets that require grad.
- `linear.py`: [`fused_linear_loss`], the loss of `hidden @ weight.T + bias` chunk by chunk, as operators too.
- `reduction.py`: the one reduction of the backends' sums (`mean`, `sum`, `none`, `num_items_in_batch`, from
  device tensors), the logged means and the gradient's scale.
- the backends: `_c.py` + `csrc/fused_loss.c` (the one-pass C kernel on CPU tensors, built on first use by
  `_cbuild.py` into a private, hash-verified cache), `_triton.py` (the Triton backend on GPUs: its launcher and the
  list of the compiled variants that `python -m hf_maxsup.kernels --aot sm_80,sm_90` checks; the kernels in
  `_triton_kernels.py`), `_torch.py` (chunked PyTorch on any device); `_layout.py`: row strides, so that views need
  no copy.
"""

from .dispatch import BACKENDS, check_environment, kernel_info, select_backend
from .function import fused_loss
from .job import LOSS_CODES, LOSS_NAMES, SUMS, Backend, LossJob
from .linear import fused_linear_loss
from .ops import rows_loss_and_grad_
from .reduction import component_means, denominator

__all__ = [
    "BACKENDS",
    "LOSS_CODES",
    "LOSS_NAMES",
    "SUMS",
    "Backend",
    "LossJob",
    "check_environment",
    "component_means",
    "denominator",
    "fused_linear_loss",
    "fused_loss",
    "kernel_info",
    "rows_loss_and_grad_",
    "select_backend",
]
