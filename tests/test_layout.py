"""The source layout keeps its rules: no import cycles between persyn's modules, even through imports inside
functions; package boundaries (the stages import no experiment, the outputs no stage, the core neither); one
device/dtype policy (persyn.models.device) that no other module second-guesses; and the README's code-layout table
names exactly what src/persyn holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "persyn"
POLICY_PACKAGE = SRC / "models"

# Calls and names that decide where a model runs or in what precision; only persyn.models may use them.
DEVICE_PROBES = {"is_available", "is_bf16_supported", "empty_cache", "_is_mkldnn_bf16_supported"}
HALF_DTYPES = {"bfloat16", "float16", "half"}


def sources() -> dict[str, Path]:
    """Module name -> file, for every module under src/persyn."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The persyn modules `name` imports anywhere in its file: at module level, inside functions, under
    TYPE_CHECKING. `from persyn.x import y` counts as persyn.x.y when that is a module, else as persyn.x."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    mods = sources()
    graph = {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}
    assert graph["persyn.pipeline"] >= {"persyn.run", "persyn.outputs.export"}  # the graph sees function-level imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


CORE = ("persyn", "persyn.config", "persyn.errors", "persyn.plugins", "persyn.files", "persyn.chat", "persyn.progress",
        "persyn.prompts", "persyn.keys", "persyn.store", "persyn.run", "persyn.status", "persyn.stamp")
UPPER = ("persyn.stages", "persyn.outputs", "persyn.experiments", "persyn.pipeline", "persyn.cli")
# Modules under each prefix must not import modules under the listed prefixes.
BOUNDARIES = {
    "persyn.stages": ("persyn.experiments", "persyn.cli"),
    "persyn.outputs": ("persyn.stages", "persyn.pipeline", "persyn.experiments", "persyn.cli"),
    **{core: UPPER for core in CORE},
    **{pkg: ("persyn.cli",) for pkg in ("persyn.backends", "persyn.executors", "persyn.models", "persyn.remote",
                                        "persyn.router", "persyn.scoring", "persyn.experiments")},
}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != "persyn" and module.startswith(prefix + "."))


def boundary_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{name} imports {dep}" for name, deps in sorted(graph.items()) for prefix, banned in BOUNDARIES.items()
            if _under(name, prefix) for dep in sorted(deps) if any(_under(dep, b) for b in banned)]


def test_package_boundaries():
    mods = sources()
    graph = {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}
    assert "persyn.stages.export" in graph and "persyn.experiments.router_eval" in graph
    assert not boundary_violations(graph)


def test_the_boundary_check_finds_a_crossing():
    graph = {"persyn.stages.route": {"persyn.experiments.frontier"}, "persyn.outputs.card": {"persyn.stages.probe"},
             "persyn.run": {"persyn.pipeline"}, "persyn.stages.probe": {"persyn.outputs.export", "persyn.run"}}
    assert boundary_violations(graph) == ["persyn.outputs.card imports persyn.stages.probe",
                                          "persyn.run imports persyn.pipeline",
                                          "persyn.stages.route imports persyn.experiments.frontier"]


def test_modules_stay_short():
    """A module over 400 lines is doing two things; the pipeline itself only runs the stages."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in sources().items()}
    assert not {n: k for n, k in sizes.items() if k > 400}
    assert sizes["persyn.pipeline"] <= 200


def readme_layout_names() -> set[str]:
    """The files and folders the README's code-layout table names in its first column."""
    text = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    table = text.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def test_the_readme_code_layout_table_matches_the_tree():
    tree = {p.name + ("/" if p.is_dir() else "") for p in SRC.iterdir()
            if p.name not in ("__init__.py", "__pycache__") and (p.is_dir() or p.suffix == ".py")}
    assert readme_layout_names() == tree


def test_no_test_module_imports_another():
    """What tests share lives in tests/helpers.py; a test module or conftest is never imported by another test."""
    found = []
    for path in sorted((SRC.parents[1] / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith("test_") or n == "conftest"]
    assert not found


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def policy_violations(tree: ast.AST) -> list[str]:
    """Where a module picks a device or a dtype itself: probing CUDA, naming a half-precision torch dtype, a
    literal dtype for from_pretrained, or the string "cuda"."""
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if node.attr in DEVICE_PROBES and ("cuda" in name or "mkldnn" in name):
                found.append(f"{where}: {name}")
            if name.startswith("torch.") and node.attr in HALF_DTYPES:
                found.append(f"{where}: {name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "from_pretrained":
            for kw in node.keywords:
                if kw.arg in ("dtype", "torch_dtype") and (
                        isinstance(kw.value, ast.Constant) or _dotted(kw.value).startswith("torch.")):
                    found.append(f"{where}: from_pretrained({kw.arg}={ast.unparse(kw.value)})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda"):
            found.append(f"{where}: {node.value!r}")
    return found


def test_only_persyn_models_picks_a_device_or_dtype():
    bad = {name: v for name, path in sources().items()
           if POLICY_PACKAGE not in path.parents and (v := policy_violations(ast.parse(path.read_text())))}
    assert not bad, f"use persyn.models.resolve_device / resolve_dtype instead: {bad}"


def test_the_policy_check_catches_each_way_of_picking():
    code = '''
import torch
a = "cuda" if torch.cuda.is_available() else "cpu"
b = torch.bfloat16
m = AutoModel.from_pretrained(path, dtype=torch.float32)
n = AutoModel.from_pretrained(path, torch_dtype="auto")
torch.cuda.empty_cache()
ok = AutoModel.from_pretrained(path, dtype=resolve_dtype("auto", device))
'''
    found = policy_violations(ast.parse(code))
    assert len(found) == 6, found  # "cuda", is_available, bfloat16, two literal dtypes, empty_cache
    assert not any("resolve_dtype" in f for f in found)
