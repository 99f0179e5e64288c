"""The layer rule of docs/architecture.md, enforced by reading the imports of every module under gspo_async/.

Every import counts, function-local ones included: a lazy import is still a dependency. The rule:

- the roles `actor` and `learner` are peers: neither imports the other;
- nothing below the roles (every package but the entry points) imports a role;
- production code never imports the test doubles in `gspo_async.testing`;
- `algo` is pure tensor math: it imports no other package of ours;
- no import cycle between modules, and none between the packages below the roles.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "gspo_async"
ROLES = {"actor", "learner"}
ENTRY_POINTS = {"cli", "local", "__main__"}  # compose the roles; nothing imports them but each other
TESTING = "testing"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The top-level package of a module: 'gspo_async.learner.endpoint' -> 'learner', 'gspo_async.config' ->
    'config'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gspo_async"


def imports_of(path: Path) -> set[str]:
    """The gspo_async modules `path` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from gspo_async.x import y` may name a submodule y
            found |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in found if m == "gspo_async" or m.startswith("gspo_async.")}


def module_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


GRAPH = module_graph()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def edges_between_packages() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the module imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for mod, deps in GRAPH.items():
        for dep in deps:
            a, b = package_of(mod), package_of(dep)
            if a != b and b != "gspo_async":
                edges[(a, b)].append(f"{mod} -> {dep}")
    return edges


EDGES = edges_between_packages()


def violations(rule) -> list[str]:
    return sorted(line for (a, b), lines in EDGES.items() if rule(a, b) for line in lines)


def test_the_graph_is_read():
    # Guards the reader itself: the learner uses the coordinator and the actor uses the protocol client.
    assert "gspo_async.learner.coordinator" in GRAPH["gspo_async.learner.main"] | {
        d for m, deps in GRAPH.items() if m.startswith("gspo_async.learner.") for d in deps}
    assert ("actor", "protocol") in EDGES


def test_roles_are_peers():
    assert violations(lambda a, b: a in ROLES and b in ROLES) == []


def test_nothing_below_the_roles_imports_a_role():
    assert violations(lambda a, b: b in ROLES and a not in ROLES | ENTRY_POINTS) == []


def test_nothing_imports_an_entry_point():
    assert violations(lambda a, b: b in ENTRY_POINTS and a not in ENTRY_POINTS) == []


def test_production_code_never_imports_test_doubles():
    assert violations(lambda a, b: b == TESTING and a != TESTING) == []


def test_algo_is_pure_math():
    assert violations(lambda a, b: a == "algo") == []
    for path in (PACKAGE_ROOT / "algo").rglob("*.py"):
        tree = ast.parse(path.read_text())
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in called and "print" not in called, f"{path.name} does I/O"


def test_no_module_import_cycle():
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH))}"


def test_no_package_cycle_below_the_roles():
    shared = {a for a, _ in EDGES} | {b for _, b in EDGES}
    shared -= ROLES | ENTRY_POINTS | {TESTING}
    graph = {p: {b for (a, b) in EDGES if a == p and b in shared} for p in shared}
    cycle = find_cycle(graph)
    detail = [line for a, b in zip(cycle, cycle[1:]) for line in EDGES[(a, b)]] if cycle else []
    assert cycle is None, f"package cycle {' -> '.join(cycle)}:\n" + "\n".join(detail)


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a"}}, True),
])
def test_cycle_finder_on_hand_made_graphs(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic


def test_no_file_over_600_lines():
    long = {str(p.relative_to(PACKAGE_ROOT)): n for p in PACKAGE_ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


# ----- the docs show the tree as it is -------------------------------------------------------------------------------
DOCS_ROOT = PACKAGE_ROOT.parent
NAME = re.compile(r"(?<![\w/.-])([a-z_0-9]+)(\.py|/)(?![\w.])")


def top_level_units() -> set[str]:
    """The packages and top-level modules of gspo_async, as the docs name them: 'learner/', 'config.py'."""
    return ({f"{p.name}/" for p in PACKAGE_ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))}
            | {p.name for p in PACKAGE_ROOT.glob("*.py") if p.name != "__init__.py"})


def diagram_order() -> list[str]:
    """The shared and foundation packages in the order docs/architecture.md's diagram lists them (name at column 19
    of the rows from 'shared' down to 'test doubles')."""
    text = (DOCS_ROOT / "docs" / "architecture.md").read_text()
    lines = text[text.index("\n shared "): text.index("\n test doubles")].splitlines()
    order = []
    for line in lines:
        m = re.match(r"([a-z_0-9]+)(/|\.py)\s", line[19:])
        if m:
            order.append(m.group(1))
    return order


def test_the_diagram_orders_the_shared_packages_as_they_import():
    order = diagram_order()
    listed = {u.removesuffix("/").removesuffix(".py") for u in top_level_units()}
    expected = listed - ROLES - ENTRY_POINTS - {TESTING}
    assert sorted(order) == sorted(expected), (
        f"docs/architecture.md's diagram lists {sorted(order)}; the tree has {sorted(expected)}: add or remove the row")
    upward = [line for (a, b), lines in EDGES.items() if a in order and b in order
              and order.index(a) > order.index(b) for line in lines]
    assert upward == [], ("these imports go up the diagram of docs/architecture.md (each package may import only "
                          f"those listed below it): move the row or the code: {sorted(upward)}")
    text = (DOCS_ROOT / "docs" / "architecture.md").read_text()
    diagram = text[text.index("```\n"): text.index("```", text.index("```\n") + 4)]
    files = {p.name for p in PACKAGE_ROOT.rglob("*.py")}
    gone = sorted({n + k for n, k in NAME.findall(diagram) if k == ".py" and n + k not in files})
    assert gone == [], f"docs/architecture.md's diagram names files that do not exist: {gone}"


def readme_layout() -> str:
    text = (DOCS_ROOT / "README.md").read_text()
    start = text.index("```\n", text.index("## Layout\n")) + 4
    return text[start: text.index("```", start)]


def test_the_readme_layout_names_every_package_and_only_files_that_exist():
    layout = readme_layout()
    entries: dict[str, list[str]] = {}  # 'learner/' -> the lines of its entry in the gspo_async/ block
    current = None
    for line in layout.splitlines()[1:]:
        if not line.startswith("  "):
            break  # the end of the gspo_async/ block
        m = NAME.match(line[2:])
        if m and line[2] != " ":
            current = m.group(0)
            entries[current] = []
        entries[current].append(line[19:])
    assert set(entries) == top_level_units(), (
        f"README's Layout names {sorted(entries)}; gspo_async/ holds {sorted(top_level_units())}")
    missing = []
    for unit, lines in entries.items():
        where = PACKAGE_ROOT / unit if unit.endswith("/") else PACKAGE_ROOT
        for name, kind in NAME.findall(" ".join(lines)):
            hits = list(where.rglob(name + ".py")) if kind == ".py" else [p for p in where.rglob(name) if p.is_dir()]
            if not hits:
                missing.append(f"{unit} {name}{kind}")
    assert missing == [], f"README's Layout names files that do not exist: {missing}"


def test_the_readers_of_the_docs_see_a_change():
    # The two readers above must fail on a doc that drifted: a package missing from the tree, a file that is not.
    assert "learner/" in top_level_units() and "config.py" in top_level_units()
    assert NAME.findall("weight_sync.py (x), backends/ (torch), prometheus-client, a/b") == [
        ("weight_sync", ".py"), ("backends", "/")]
    order = diagram_order()
    assert order.index("bootstrap") < order.index("engines") < order.index("models")
