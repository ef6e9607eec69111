"""A kernel launch as data, so the build check compiles exactly what the launchers run.

Each launcher in sae_triton.py / kl_triton.py is split into a planner (`*_launches`: allocate
outputs, pick grid, constexprs, num_warps, num_stages) and `run`. The GPU build check
(gpu_build.py) calls the same planners on meta tensors and compiles their Launches for a
target, so it cannot drift from the launch code.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Launch:
    kernel: Any  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple  # runtime arguments: tensors, ints, floats
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int | None = None  # None: triton's default

    @property
    def options(self) -> dict[str, int]:
        """Compile options as triton.compile / kernel[grid](...) take them."""
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Triton launches on torch's *current* CUDA device and stream, not the tensors': make
    the tensors' device current (a run on cuda:1 in a process whose current device is 0)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def run(launches: list[Launch], outputs):
    """Launch in order, on the device of the launches' tensors, and return the outputs."""
    device = next(a.device for a in launches[0].args if isinstance(a, torch.Tensor))
    with on_device(device):
        for launch in launches:
            launch()
    return outputs
