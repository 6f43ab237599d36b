"""The shape of the code the issues ask for: no import cycle, short functions in xtrt/quant."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "xtrt"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the xtrt modules it imports (at module level or inside functions)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n in mods and n != m and not m.startswith(n + "."):
                    graph[m].add(n)
    return graph


def _cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _imports()
    assert _cycle(graph) is None
    # the check sees the cycle the old writer had (outputs -> pipeline -> outputs)
    graph["xtrt.quant.outputs"].add("xtrt.quant.pipeline")
    assert _cycle(graph) is not None


@pytest.mark.parametrize("path", sorted((PKG / "quant").glob("*.py")), ids=lambda p: p.name)
def test_functions_in_xtrt_quant_are_short(path):
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 80]
    assert not long
