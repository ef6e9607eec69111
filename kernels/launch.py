"""A kernel launch as data, so the build check compiles exactly what the launchers run.

Each launcher in sae_triton.py / kl_triton.py is split into a planner (`*_launches`: allocate
outputs, pick grid, constexprs, num_warps, num_stages) and `run`. The GPU build check
(gpu_build.py) calls the same planners on meta tensors and compiles their Launches for a
target, so it cannot drift from the launch code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def run(launches: list[Launch], outputs):
    """Launch in order and return the planner's outputs."""
    for launch in launches:
        launch()
    return outputs
