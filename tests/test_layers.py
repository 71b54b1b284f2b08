"""The package's modules form layers: each imports only from layers below it (no circle, no arrow back up)."""

import ast
import sys
from pathlib import Path

import clcpmt

SRC = Path(clcpmt.__file__).parent

# lower number = lower layer; a module may import only from a strictly lower one
LAYERS = {
    "version": 0, "recipes": 0, "stats": 0,
    "config": 1,
    "data.readers": 2, "data.splits": 2, "data.transforms": 2, "data.synthetic": 2, "data.chestxray": 3,
    "data.sources": 4, "data.datamodule": 5,
    "thresholds": 2, "metrics": 2, "plots": 2, "console": 2, "losses": 3, "model": 3, "methods": 4, "module": 6,
    "export": 7, "system": 7,
    "inference": 8,
    "report": 9,
    "runner": 10,
    "bench": 11,
    "api": 12, "compare": 12, "audit": 9,
    "cli": 13,
    "clcpmt": 14,  # the package: its version, and the API on first use
}  # fmt: skip


def imports() -> set[tuple[str, str]]:
    """(importer, imported) for every import of a package module inside the package (relative or absolute), at any
    depth of the code."""
    edges = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__") or "clcpmt"
        package = list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            absolute += [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []
            for name in absolute:  # `import clcpmt.x` / `from clcpmt.x import y`: the same arrow, written absolute
                if name == "clcpmt" or name.startswith("clcpmt."):
                    edges.add((module, name.removeprefix("clcpmt.") if name != "clcpmt" else "clcpmt"))
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                targets = [".".join([*base, node.module])] if node.module else [".".join([*base, a.name]) for a in
                                                                                  node.names]  # fmt: skip
                for target in targets:
                    edges.add((module, target if target in LAYERS else ".".join(base) or "clcpmt"))
    return edges


def test_every_module_has_a_layer():
    modules = {".".join(p for p in f.relative_to(SRC).with_suffix("").parts if p != "__init__") or "clcpmt"
               for f in SRC.rglob("*.py")}  # fmt: skip
    assert modules - {"data"} == set(LAYERS)


def test_the_walk_sees_absolute_imports(tmp_path, monkeypatch):
    fake = tmp_path / "clcpmt"
    fake.mkdir()
    (fake / "stats.py").write_text("def f():\n    from clcpmt.cli import main\n    import clcpmt.bench\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert imports() == {("stats", "cli"), ("stats", "bench")}


def test_imports_only_point_down():
    edges = imports()
    assert ("runner", "report") in edges and ("cli", "runner") in edges  # the walk sees the imports inside functions
    upward = sorted(f"{a} -> {b}" for a, b in edges if LAYERS[a] <= LAYERS[b])
    assert not upward, upward
