"""The package's layers, from its source: every import goes to the module's own layer or below,
nothing imports the command line, the demo or the benchmarks but they themselves, the
references import nothing from the operators, and no two modules import each other in a cycle."""
import ast
import os
import subprocess
import sys

import omnifast

ROOT = os.path.dirname(omnifast.__file__)

# Bottom up; a module belongs to the longest prefix listed. A module named `commands` (each area's
# subcommands) belongs to the top whatever its package.
LAYERS = {
    "omnifast._C_loader": 0, "omnifast.runs": 0, "omnifast.geometry": 0,  # loader, run folders, geometry
    "omnifast.ops": 1, "omnifast.reference": 1,                            # kernels and references
    "omnifast.flame": 2, "omnifast.sdf": 2, "omnifast.eg3d": 2,            # models of the head, drop-ins
    "omnifast.render": 3,                                                  # renderer
    "omnifast.data": 4,                                                    # datasets
    "omnifast.gan": 5,                                                     # training
    "omnifast": 5,                                                         # the package's own face
    "omnifast.bench": 6, "omnifast.demo": 6, "omnifast.cli": 6, "omnifast.__main__": 6,  # top
}
TOP = 6


def layer_of(module):
    if module.split(".")[-1] == "commands":
        return TOP
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                is_package = parts[-1] == "__init__"
                yield ".".join(parts[:-1] if is_package else parts), path, is_package


def imports(module, path, is_package):
    """Every omnifast module `module` imports, at any depth of its code."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import name` may name a submodule
            found |= {f"{base}.{a.name}" if os.path.exists(_source(f"{base}.{a.name}")) else base
                      for a in node.names}
    return {m for m in found if m == "omnifast" or m.startswith("omnifast.")}


def _source(module):
    path = os.path.join(os.path.dirname(ROOT), *module.split("."))
    return path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")


def graph():
    return {module: imports(module, path, is_package) for module, path, is_package in modules()}


def test_every_import_goes_down_or_sideways():
    wrong = [(m, i) for m, targets in graph().items() for i in targets if layer_of(i) > layer_of(m)]
    assert not wrong, "imports that run back up the layers: " + ", ".join(f"{m} -> {i}" for m, i in wrong)


def test_only_the_top_imports_the_command_line_demo_and_benchmarks():
    wrong = [(m, i) for m, targets in graph().items() for i in targets
             if layer_of(i) == TOP and layer_of(m) < TOP]
    assert not wrong, ", ".join(f"{m} -> {i}" for m, i in wrong)
    loaded = subprocess.run([sys.executable, "-c", "import sys, omnifast; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    for name in ("omnifast.bench", "omnifast.cli", "omnifast.demo"):
        assert f"'{name}'" not in loaded, f"import omnifast imports {name}"


def test_references_import_nothing_from_the_operators():
    wrong = [(m, i) for m, targets in graph().items() if m.startswith("omnifast.reference")
             for i in targets if not i.startswith("omnifast.reference")]
    assert not wrong, ", ".join(f"{m} -> {i}" for m, i in wrong)


def test_no_import_cycles():
    edges = graph()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in edges.get(module, ()):
            target = target if target in edges else target.rsplit(".", 1)[0]
            if target == module or target not in edges:
                continue
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module, [module])


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The walk sees an upward import written the way the package writes imports."""
    fake = tmp_path / "omnifast" / "ops"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from ..sdf import train\n    from omnifast.cli import main\n")
    found = imports("omnifast.ops.bad", str(fake / "bad.py"), False)
    assert "omnifast.cli" in found and any(i.startswith("omnifast.sdf") for i in found)
    assert all(layer_of(i) > layer_of("omnifast.ops.bad") for i in found)
