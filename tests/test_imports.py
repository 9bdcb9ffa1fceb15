"""The package's import graph: acyclic (lazy imports inside functions count), and model/ does no I/O.

Parsed from the source (no module is imported), so a cycle hidden behind a function-level import fails
here the same as a top-level one.
"""
import ast
from pathlib import Path

import gpt3lab

ROOT = Path(gpt3lab.__file__).parent
# what gpt3lab.model may import from the rest of the package, and the I/O libraries it may not import
MODEL_MAY_IMPORT = ("gpt3lab.model", "gpt3lab.config", "gpt3lab.errors", "gpt3lab.attention_spec")
IO_LIBRARIES = ("pathlib", "os", "shutil", "tempfile", "safetensors", "io", "pickle")


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported_names(name: str, f: Path, mods=()) -> set[str]:
    """What the import statements anywhere in `f` name: `import a.b` -> a.b; `from a import b` -> a.b when
    that is a module in `mods`, else a (relative imports made absolute)."""
    pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
    return names


def graph() -> dict[str, set[str]]:
    """module -> the gpt3lab modules it imports (each name resolved to its longest module prefix)."""
    mods = modules()

    def module_of(n: str) -> str | None:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        return n or None
    return {m: {t for n in imported_names(m, f, mods) if (t := module_of(n)) and t != m} for m, f in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(edges):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_the_import_graph_is_acyclic():
    edges = graph()
    assert "gpt3lab.checkpoint" in edges["gpt3lab.loader"]               # the parser sees real edges
    assert "gpt3lab.model.lora" in edges["gpt3lab.adapters"]
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_model_package_does_no_io():
    mods = modules()
    for m, f in mods.items():
        if m == "gpt3lab.model" or m.startswith("gpt3lab.model."):
            names = imported_names(m, f, mods)
            ours = {n for n in names if n.startswith("gpt3lab")}
            bad = sorted(n for n in ours if not n.startswith(MODEL_MAY_IMPORT))
            io = sorted(n for n in names if n.split(".")[0] in IO_LIBRARIES)
            assert not bad and not io, f"{m} imports {bad + io}"


def reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for w in edges[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def engine_model_reads(f: Path) -> list[int]:
    """Lines of `f` that read `<...engine>.model` (the server must talk to the engine and the inspector only)."""
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "model":
            v = node.value
            name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""
            if "engine" in name:
                out.append(node.lineno)
    return out


def test_the_server_never_reaches_the_model():
    """serve/ knows the engine's contract and an inspector object: it imports no model code (serve/cli.py, which
    builds the engine and the inspector, excepted) and never reads engine.model."""
    mods, edges = modules(), graph()
    for m, f in mods.items():
        if not m.startswith("gpt3lab.serve"):
            continue
        assert not engine_model_reads(f), f"{m} reads engine.model at lines {engine_model_reads(f)}"
        if m == "gpt3lab.serve.cli":
            continue
        bad = sorted(t for t in edges[m] if t.startswith(("gpt3lab.model", "gpt3lab.inspect", "gpt3lab.generate.engine",
                                                          "gpt3lab.generate.core")))
        assert not bad, f"{m} imports {bad}"


def test_the_checker_finds_an_engine_model_read(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f(self):\n    return self.engine.model\n")
    assert engine_model_reads(f) == [2]


def test_inspect_needs_no_trainer():
    """The explainer (inspect, its priming task) runs without the training loop being importable."""
    got = reaches(graph(), "gpt3lab.inspect")
    assert not any(m.startswith("gpt3lab.train") or m == "gpt3lab.priming_demo" for m in got), sorted(got)
