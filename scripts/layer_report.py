"""The import structure of distill_plugin against its declared layer order.

    python scripts/layer_report.py

Prints every import cycle among distill_plugin modules (module-level and function-level imports
both), every import that goes up the order of ``LAYERS``, every string route (a dotted
``distill_plugin.…`` path given to ``importlib.import_module`` or used as a plugin / collator /
args path) that does not resolve, and, per method's config key, the library files that name it.
tests/test_layering.py asserts on the same scan (``scan``).

An import of ``a.b`` from ``a/c.py`` is an edge ``a.c -> a.b`` (``from a import b`` is an edge to
``a.b`` when ``a/b`` is a module, else to ``a``); importing a package's parent implicitly is not.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = "distill_plugin"
# Lowest first. A module may import its own layer and the layers below it. A module's layer is that
# of the longest name here that it is or lies under, relative to distill_plugin ("" is
# distill_plugin/__init__.py, which loads the plugin lazily).
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"signals", "errors", "jsonl", "shards", "no_cuda", "collators"},  # constants, batch keys, exceptions, files
    {"losses"},  # the maths: tensors in, tensors out
    {"modeling", "hidden", "alignment", "generation"},  # models, hidden states, tokens, inference
    {"offline", "evaluation"},  # stored teacher logits, evaluation of a teacher on data
    {"teachers"},  # where a batch's teacher signal comes from
    {"onpolicy"},  # rollouts during training
    {"methods", "alignment.setup"},  # one module per method: its keys, checks, source and terms
    {"args", "preflight"},  # the distill: block, the checks made before loading models
    {"trainer", "axolotl_trainer", "plugin", "serve", "checkpoints", ""},  # entry points
    {"testing", "demo"},  # tiny models, twins, the demo
))
CONFIG_KEYS = ("teacher_logits", "teacher_server", "cross_tokenizer", "hidden_weight", "on_policy_fraction", "teacher")
ROUTE = re.compile(r"^distill_plugin(\.[A-Za-z_]\w*)+$")
ROUTE_CALLS = {"import_module", "resolve_class", "find_spec"}


@dataclass(frozen=True)
class Edge:
    source: str  # module importing
    target: str  # module imported
    line: int
    deferred: bool  # inside a function (runs when called, not at import)
    route: bool = False  # a dotted path in a string, not an import statement

    def where(self) -> str:
        kind = "string route" if self.route else "deferred" if self.deferred else "module-level"
        return f"{path_of(self.source)}:{self.line}: {self.source} -> {self.target} ({kind})"


@dataclass
class Scan:
    modules: set[str]
    edges: list[Edge] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # string routes naming nothing


def module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def path_of(module: str) -> str:
    base = REPO / Path(*module.split("."))
    return (base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).relative_to(REPO).as_posix()


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def statements(tree: ast.AST):
    """(node, inside a function) for every node of ``tree``."""
    stack = [(tree, False)]
    while stack:
        node, deferred = stack.pop()
        yield node, deferred
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def imported(path: Path, node: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) an import statement brings in, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = module_of(path).split(".")
    if node.level:
        base = base[: len(base) - node.level + (1 if is_package(path) else 0)]
        return [(".".join([*base, node.module] if node.module else base), [a.name for a in node.names])]
    return [(node.module, [a.name for a in node.names])]


def imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(module, imported names, line, deferred) of every import statement in ``path``."""
    return [(module, names, node.lineno, deferred) for node, deferred in statements(ast.parse(path.read_text()))
            for module, names in imported(path, node)]


def routes(path: Path) -> list[tuple[str | None, int, bool]]:
    """(dotted path, line, deferred) of string routes in ``path``: string literals that are whole
    ``distill_plugin.…`` paths outside ``logging.getLogger(...)``, and any string (None when built
    at run time, e.g. an f-string) given to ``importlib.import_module``-like calls."""
    found, loggers, nodes = [], set(), list(statements(ast.parse(path.read_text())))
    for node, deferred in nodes:
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name == "getLogger":
            loggers.update(id(a) for a in node.args)
        elif name in ROUTE_CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and "distill_plugin" in ast.unparse(arg):
                found.append((None, node.lineno, deferred))
    for node, deferred in nodes:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in loggers \
                and ROUTE.match(node.value):
            found.append((node.value, node.lineno, deferred))
    return found


def top_names(module: str) -> set[str]:
    """Names a module defines or imports at top level (and lazy ``__getattr__`` names it returns)."""
    tree = ast.parse((REPO / path_of(module)).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def resolve(dotted: str, modules: set[str]) -> str | None:
    """The module a dotted path names (itself, or its parent when the last part is an attribute)."""
    if dotted in modules:
        return dotted
    parent, _, name = dotted.rpartition(".")
    if parent in modules and name in top_names(parent):
        return parent
    return None


def scan(packages: tuple[str, ...] = (ROOT,)) -> Scan:
    """Edges into distill_plugin from every .py file under ``packages`` (directories of the repo)."""
    modules = {module_of(p) for p in (REPO / ROOT).rglob("*.py")}
    result = Scan(modules)
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            source = module_of(path)
            for module, names, line, deferred in imports(path):
                if module.split(".")[0] != ROOT:
                    continue
                subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
                for target in subs + ([module] if len(subs) < len(names) or not names else []):
                    result.edges.append(Edge(source, target, line, deferred))
            for dotted, line, deferred in routes(path):
                target = resolve(dotted, modules) if dotted else None
                if target is None:
                    result.unresolved.append(f"{path.relative_to(REPO).as_posix()}:{line}: {dotted or '<built at run time>'}")
                else:
                    result.edges.append(Edge(source, target, line, deferred, route=True))
    return result


def layer_of(module: str) -> int:
    parts = module.split(".")[1:]
    for n in range(len(parts), -1, -1):
        name = ".".join(parts[:n])
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise KeyError(f"{module}: not in LAYERS (scripts/layer_report.py): declare its layer")


def upward(edges: list[Edge]) -> list[Edge]:
    """Edges among distill_plugin modules from a lower layer to a higher one."""
    return [e for e in edges if e.source.split(".")[0] == ROOT and layer_of(e.target) > layer_of(e.source)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components (more than one module) of the import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, set()).add(e.target)
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def imports_of_tests(directory: str = "scripts") -> list[str]:
    """Imports of tests/ modules (or ``sys.path`` edits reaching tests/) in the .py files of ``directory``."""
    test_modules = {"tests"} | {p.stem for p in (REPO / "tests").rglob("*.py")}
    bad = []
    for path in sorted((REPO / directory).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        bad += [f"{rel}:{line}: {module}" for module, _, line, _ in imports(path) if module.split(".")[0] in test_modules]
        bad += [f"{rel}:{n}: {text.strip()}" for n, text in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"sys\.path\.(insert|append)\(.*[\"'/]tests\b", text)]
    return bad


def files_naming(key: str) -> list[str]:
    """Library files (outside testing/ and demo/) that name config key ``key``: ``.key`` or ``"key"``
    as a whole word (an attribute or a string), ``key:`` opening a line (a field) or ``key=`` (a
    keyword argument); a local variable of the same name does not count."""
    pattern = rf"""([.'"]{key}\b)|(^\s*{key}\s*:)|(\b{key}=)"""
    out = subprocess.run(["grep", "-rlE", "--include=*.py", pattern, ROOT], cwd=REPO, capture_output=True, text=True).stdout
    return sorted(f for f in out.split() if not f.startswith((f"{ROOT}/testing/", f"{ROOT}/demo/")))


def main() -> int:
    result = scan((ROOT, "data_prep", "scripts"))
    inside = [e for e in result.edges if e.source.split(".")[0] == ROOT]
    found = cycles(inside)
    print(f"layers (lowest first): {' -> '.join('/'.join(sorted(n or '__init__' for n in layer)) for layer in LAYERS)}")
    print(f"\nimport cycles: {len(found)}")
    for component in found:
        within = [e for e in inside if e.source in component and e.target in component]
        print(f"  {len(component)} modules: {', '.join(component)}")
        print("".join(f"    {e.where()}\n" for e in within), end="")
    up = upward(inside)
    print(f"\nupward imports: {len(up)}")
    print("".join(f"  {e.where()}\n" for e in up), end="")
    print(f"\nunresolved string routes: {len(result.unresolved)}")
    print("".join(f"  {u}\n" for u in result.unresolved), end="")
    bad = imports_of_tests()
    print(f"\nscripts importing tests/: {len(bad)}")
    print("".join(f"  {b}\n" for b in bad), end="")
    print("\nlibrary files naming each method's config key (testing/, demo/ aside):")
    for key in CONFIG_KEYS:
        files = files_naming(key)
        print(f"  {key}: {len(files)}  {' '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
