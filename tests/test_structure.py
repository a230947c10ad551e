"""The shape of the package: imports run one way, families stay in their lane, the package stands alone."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitseg"

# Lower layers never import higher ones: cli -> api (create_model, evaluate, train) -> prediction and dataset
# readers -> hub -> checkpoint -> registry; families (vitseg.models) depend on the registry, the dataset
# declarations and the layers.
LAYERS = [
    ["vitseg._version", "vitseg._io", "vitseg._labels", "vitseg._argtypes", "vitseg._distributed", "vitseg.data",
     "vitseg.recipe"],
    ["vitseg._registry", "vitseg.layers", "vitseg.pos_embed", "vitseg.metrics", "vitseg.viz", "vitseg.convert"],
    ["vitseg.models", "vitseg._checkpoint", "vitseg._folders"],
    ["vitseg._hub"],
    ["vitseg.inference", "vitseg.readers"],
    ["vitseg._factory", "vitseg.eval", "vitseg.timing", "vitseg.train"],
    ["vitseg.cli", "vitseg.__main__"],
]
FAMILY_MAY_USE = ("vitseg._registry", "vitseg.data", "vitseg.recipe", "vitseg.layers", "vitseg.pos_embed",
                  "vitseg.models", "vitseg._folders")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of the file, at any depth, except under ``if TYPE_CHECKING:``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _edges() -> dict[str, set[str]]:
    """Module -> vitseg modules it imports (an imported submodule also runs its parent packages)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names in _imports(path):
            if not target.startswith("vitseg"):
                continue
            found = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES} or {target}
            own_packages = {mod.rsplit(".", i)[0] for i in range(1, mod.count(".") + 1)}
            for t in found:
                parts = t.split(".")
                # vitseg.inference.pipeline also runs vitseg/inference/__init__.py, unless that package is the
                # importer's own (then it is already being initialized)
                for i in range(2, len(parts) + 1):
                    pkg = ".".join(parts[:i])
                    if pkg in MODULES and pkg != mod and (i == len(parts) or pkg not in own_packages):
                        graph[mod].add(pkg)
    return graph


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    return None


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if m != "vitseg" and _layer(m) is None] == []


def test_import_graph_has_no_cycle() -> None:
    graph = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)


def test_imports_run_down_the_layers() -> None:
    upward = [f"{m} -> {t}" for m, targets in _edges().items() if m != "vitseg" for t in targets
              if t != "vitseg" and _layer(t) > _layer(m)]
    assert upward == []


def test_families_use_only_the_registry_and_layers() -> None:
    bad = [f"{m} -> {t}" for m, targets in _edges().items() if m.startswith("vitseg.models")
           for t in targets if not t.startswith(FAMILY_MAY_USE)]
    assert bad == []


def test_no_module_goes_through_the_lazy_top_level() -> None:
    """Inside the package, names come from the module that defines them, not from ``vitseg.<name>``."""
    bad = []
    for mod, path in MODULES.items():
        for target, names in _imports(path):
            if target == "vitseg" and any(f"vitseg.{n}" not in MODULES for n in names or ["*"]):
                bad.append(f"{mod}: from vitseg import {', '.join(names) or '(the package)'}")
        if re.search(r"^\s*import vitseg\b", path.read_text(encoding="utf-8"), re.M):
            bad.append(f"{mod}: import vitseg")
    assert bad == []


def test_package_names_nothing_outside_itself() -> None:
    """No checkout paths, reference environments, benchmark targets or work-tracking numbers in vitseg/."""
    pattern = re.compile(r"benchmarks/|tools/(make_|random_weights|mmcv_ext)|\.\./shared|zoo-spec|vitseg-mmseg-ref|"
                         r"mmseg_worker|PUBLISHED_V100|\bissue #\d|§\d")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for p in MODULES.values()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []
