"""No module imports from a room above its own (an AST walk over every import, lazy ones too).

Rooms, top to bottom: `python -m sae_lens_e2e`; the command line; the pipelines (quickstart, evaluate, groundtruth);
analysis and loading; training; the kernels; the small shared helpers. A module may import
its own room and any room below it. A new room must be placed in `LAYERS` first.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sae_lens_e2e"
HELPERS = {
    "atomic",
    "cache",
    "compat",
    "config_fields",
    "locks",
    "models",
    "names",
    "paper_settings",
    "preflight",
    "sae_files",
    "version",
}
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"pipelines"},
    {"analysis", "loading"},
    {"training"},
    {"kernels"},
    {"helpers"},  # one room: a helper may use another (locks uses atomic's process checks)
]


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for the package and the kernels shipped inside it."""
    found = {}
    for base, prefix in ((root / PACKAGE, (PACKAGE,)), (root / "kernels", (PACKAGE, "kernels"))):
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join(prefix + parts)] = path
    return found


def _room(module: str) -> str:
    """`sae_lens_e2e.training.losses` -> `training`; `sae_lens_e2e.locks` -> `helpers`; the
    package itself -> `__init__`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "helpers" if parts[1] in HELPERS else parts[1]


def _imported(tree: ast.AST, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of the package; `from sae_lens_e2e import x` names the
    submodule x when there is one, else the package's lazy public API (room `__init__`)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((node.lineno, sub if sub in known else node.module))
    return [(line, m) for line, m in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def upward_imports(root: Path) -> list[str]:
    """Every import from a lower room into a higher one, and every module in no room."""
    rank = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    modules = _modules(root)
    problems = []
    for module, path in modules.items():
        room = _room(module)
        if module == PACKAGE:
            continue  # the lazy public API: it names modules in strings, imports none
        if room not in rank:
            problems.append(f"{path}: room {room!r} is in no layer of tests/test_layers.py")
            continue
        for line, target in _imported(ast.parse(path.read_text()), set(modules)):
            to = _room(target)
            if to != room and rank.get(to, -1) <= rank[room]:
                problems.append(f"{path}:{line}: {room} imports {target} (room {to}, not below)")
    return problems


def test_no_module_imports_from_a_room_above_its_own():
    assert upward_imports(ROOT) == []


def test_the_check_finds_an_upward_import(tmp_path):
    """The walk itself can fail: a training module importing a pipeline (inside a function,
    as lazy imports are), one importing the package's public API and a shared helper
    importing a pipeline are caught; helpers may use each other."""
    for name, body in {
        "__init__": "",
        "training/__init__": "",
        "training/runner": "def f():\n    from sae_lens_e2e.pipelines.quickstart import sweep\n",
        "training/losses": "from sae_lens_e2e import compute_loss_terms\n",
        "training/sae": "from sae_lens_e2e import kernels\nimport sae_lens_e2e.atomic\n",
        "pipelines/__init__": "",
        "pipelines/quickstart/__init__": "",
        "pipelines/quickstart/sweep": "from sae_lens_e2e.training import runner\n",
        "atomic": "",
        "locks": "from sae_lens_e2e.atomic import host_id\n",
        "models": "def f():\n    from sae_lens_e2e.pipelines import tiny_lm\n",
    }.items():
        path = tmp_path / PACKAGE / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    problems = sorted(p.removeprefix(str(tmp_path / PACKAGE)) for p in upward_imports(tmp_path))
    assert problems == [
        "/models.py:2: helpers imports sae_lens_e2e.pipelines (room pipelines, not below)",
        "/training/losses.py:1: training imports sae_lens_e2e (room __init__, not below)",
        "/training/runner.py:2: training imports sae_lens_e2e.pipelines.quickstart.sweep "
        "(room pipelines, not below)",
    ]
