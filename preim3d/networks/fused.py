"""Which implementation runs the fast mode's fused steps (Triton or PyTorch), and the gate that keeps
a Triton that fails from costing more than speed.

The fast mode (`G.set_precision("fast")`) runs a few steps as Triton kernels
(`networks/fast_kernels.py`): the tri-plane sampler + decoder, the importance sampling, the
compositing (with the depth ordering of both sample sets), the colour sums and the networks' bias +
activation passes (with the up-sampling filter, or the ToRGB layer). Each is a `FusedKernel`,
defined next to the PyTorch code it replaces. The choice of implementation:

    preim3d.set_kernels("auto")    # default: Triton where it passed its check on that device
    preim3d.set_kernels("torch")   # never Triton
    preim3d.set_kernels("triton")  # Triton wherever it applies, unchecked, errors raised (for
                                   # developing and timing the kernels)
    PREIM3D_KERNELS=torch          # environment variable: forces PyTorch, whatever set_kernels says

"auto": before a kernel's first use on a device it runs on a small random problem and its result
is compared with PyTorch's. A kernel that disagrees, or that raises there or at any later call, is
switched off on that device with one warning, and that call and every later one run PyTorch
instead: a Triton or driver that miscompiles or cannot compile a kernel costs speed, never correct
images or a crash. The fast mode's float16 networks are guarded separately: a pass that overflows
is recomputed in float32 (TriPlaneGenerator).

Triton is imported only when a kernel is first used; CPU-only PyTorch builds come without it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable

import torch

KERNEL_CHOICES = ("auto", "triton", "torch")
ENV_VAR = "PREIM3D_KERNELS"
_choice = "auto"


def set_kernels(choice: str) -> str:
    """Choose how the fast mode runs its fused steps: 'auto', 'triton' or 'torch' (see the module
    docstring); returns the previous choice. PREIM3D_KERNELS=torch overrides it."""
    global _choice
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    previous, _choice = _choice, choice
    return previous


def kernel_choice() -> str:
    """The choice in force: 'torch' when PREIM3D_KERNELS says so, else `set_kernels`' (default 'auto')."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced not in KERNEL_CHOICES:
        raise ValueError(f"{ENV_VAR}={forced!r}: use one of {', '.join(KERNEL_CHOICES)}")
    return "torch" if forced == "torch" else _choice


def _triton_module():
    """preim3d.networks.fast_kernels if Triton imports, else None."""
    from . import fast_kernels  # imports Triton, which takes seconds: only the fast mode needs it

    return fast_kernels if fast_kernels.triton is not None else None


def _runs_here(device: torch.device) -> bool:
    """Triton compiles for CUDA devices; on a CPU only its interpreter (TRITON_INTERPRET=1) runs kernels."""
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def on_device(device: torch.device):
    """A context in which `device` is the current CUDA device (nothing to do for other devices)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _first_tensor(args) -> torch.Tensor:
    return next(a for a in args if isinstance(a, torch.Tensor))


def _max_error(out, ref) -> float:
    """Largest |out − ref| over every tensor of the outputs, relative to max(1, |ref|): inf on NaN or
    a shape mismatch."""
    outs, refs = (out, ref) if isinstance(ref, tuple) else ((out,), (ref,))
    worst = 0.0
    for a, b in zip(outs, refs, strict=True):
        if a is None and b is None:  # an output that was not asked for
            continue
        if a is None or b is None or a.shape != b.shape:
            return float("inf")
        a, b = a.float(), b.float()
        error = ((a - b).abs() / b.abs().clamp_min(1)).max().item()
        worst = max(worst, error if error == error else float("inf"))  # NaN → inf
    return worst


class FusedKernel:
    """One fused step: a Triton launcher in `fast_kernels` (by name) and the PyTorch function it
    replaces, with the same arguments and results.

    `applies(*args)` says whether the inputs are ones the kernel handles (dtype, layout, no
    gradients); otherwise PyTorch runs, silently. `examples(device)` gives argument tuples for the
    self-check (fresh tensors on each call, as kernels may write into their arguments); results must
    agree within `tolerance` (relative to max(1, |reference|)).
    """

    def __init__(
        self,
        name: str,
        triton_name: str,
        torch_fn: Callable,
        applies: Callable[..., bool],
        examples: Callable[[torch.device], Iterable[tuple]],
        tolerance: float = 1e-2,
    ):
        self.name, self.triton_name, self.torch_fn = name, triton_name, torch_fn
        self.applies, self.examples, self.tolerance = applies, examples, tolerance
        self._ok: dict[str, bool] = {}  # device → whether the kernel may run there ("auto")

    def __repr__(self) -> str:
        return f"FusedKernel({self.name!r})"

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            # torch.compile (G.compile()) calls the kernels as they are, outside its graphs. The
            # decorator is applied only here: it loads torch._dynamo (and Triton), seconds of import.
            return torch.compiler.disable(self._dispatch)(*args)
        return self._dispatch(*args)

    def _dispatch(self, *args):
        device = _first_tensor(args).device
        choice = kernel_choice()
        if choice == "torch" or not _runs_here(device) or not self.applies(*args):
            return self.torch_fn(*args)
        # Triton compiles for, loads on and launches on the current device, whichever the tensors'.
        with on_device(device):
            return self._triton(device, choice, args)

    def _triton(self, device: torch.device, choice: str, args: tuple):
        if choice == "triton":
            module = _triton_module()
            if module is None:
                raise RuntimeError("kernels='triton' needs Triton, which this PyTorch build lacks")
            return getattr(module, self.triton_name)(*args)
        if not self.usable(device):
            return self.torch_fn(*args)
        try:
            return getattr(_triton_module(), self.triton_name)(*args)
        except Exception as exc:  # e.g. a GPU that Triton cannot compile this shape for
            self._switch_off(device, f"failed ({type(exc).__name__}: {exc})")
            return self.torch_fn(*args)

    def usable(self, device: torch.device) -> bool:
        """Whether 'auto' runs the Triton kernel on this device: Triton is there and the kernel
        agreed with PyTorch (checked once per device, here, on first use)."""
        key = str(device)
        if key not in self._ok:
            if _triton_module() is None:
                return False
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return False  # a check cannot synchronise inside a CUDA-graph capture: PyTorch there
            problem = self._check(device)
            self._ok[key] = problem is None
            if problem:
                self._switch_off(device, problem)
        return self._ok[key]

    def _check(self, device: torch.device) -> str | None:
        """None if the kernel agrees with PyTorch on the examples, else what went wrong."""
        module = _triton_module()
        # Making the examples may draw from torch's generators (a module's initial weights): they
        # are put back, so that a seeded render repeats whether or not a check ran inside it.
        rngs = [device] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=rngs, device_type=device.type):
            try:
                for args in self.examples(device):
                    reference = self.torch_fn(
                        *(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                    )
                    error = _max_error(getattr(module, self.triton_name)(*args), reference)
                    if not error <= self.tolerance:
                        return f"disagrees with PyTorch (error {error:.3g})"
            except Exception as exc:
                return f"does not run ({type(exc).__name__}: {exc})"
        return None

    def _switch_off(self, device: torch.device, problem: str) -> None:
        self._ok[str(device)] = False
        warnings.warn(
            f"the fused {self.name} kernel {problem} on {device}; running PyTorch's code instead there "
            f"(set {ENV_VAR}=torch to skip the Triton kernels altogether)",
            RuntimeWarning,
            stacklevel=3,
        )

    def reset(self) -> None:
        """Forget every device's check (they run again on next use)."""
        self._ok.clear()
