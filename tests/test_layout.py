"""The package's layout, checked from its source: the acceptance checks of the stage restructuring.

* imports: parsed with :mod:`ast` from every module under ``metatele/`` (module level and inside
  functions, relative and absolute), they form a graph with no cycle that only points to the same
  or an earlier stage (:data:`STAGES`); no module takes another module's private names; imports
  sit at module level except those of the optional dependencies in :data:`LAZY_IMPORTS_ALLOWED`;
* size: no module is longer than :data:`MAX_MODULE_LINES` lines;
* no reference to the internal notes (:data:`INTERNAL_REFERENCES`) anywhere in the repository;
* every public name the documentation's Python examples use (and the names of
  :data:`PUBLIC_NAMES`) is importable from ``metatele``.

Each violation is reported as ``path:line: what``.
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import metatele

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metatele"

# The stages, earliest first. A module may import modules of its own stage or of an earlier one,
# never of a later one. Stages are named by the first component under ``metatele.`` (a folder or a
# top-level module); ``__init__`` is the top-level package ``metatele`` itself, which re-exports
# the public names and so comes last with the command line.
STAGES: tuple[tuple[str, ...], ...] = (
    ("configs", "_version", "storage", "profiling"),  # foundations: import no stage
    ("tasks",),
    ("symmetry",),
    ("optimizers",),
    ("evaluation",),  # runs optimizers on tasks; meta-training validates its snapshots with it
    ("meta",),
    ("release",),
    ("studies",),
    ("commands",),  # the handlers of the command line
    ("cli", "__main__", "__init__"),  # entry points
)
STAGE_RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}

# Third-party packages that may be imported inside a function: optional at run time, and slow to
# import (wandb is only needed when a run logs, ``--wandb disabled`` never touches it).
LAZY_IMPORTS_ALLOWED = frozenset({"wandb", "sklearn"})  # optional: wandb logging, the digits family

MAX_MODULE_LINES = 450

# Internal notes that nothing in the repository may point at (this file's own patterns excepted):
# the shared folder, and the SPEC by name ("SPEC.md", "SPEC §2", "the SPEC formula").
INTERNAL_REFERENCES = re.compile(r"\.\./shared|/work/shared|\bSPEC\b(?:\.md|\s*§\s*\d*)?")
# Folders and files never scanned: version control, caches, build and run outputs, binaries.
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", "build", "dist", "wandb", "runs", "out"})
BINARY_SUFFIXES = frozenset({".safetensors", ".png", ".pdf", ".jpg", ".pt", ".npz", ".npy", ".pyc"})

# Public names promised by the restructuring brief, on top of those the documentation uses.
PUBLIC_NAMES = (
    "mlp_loss", "teleport", "group_action", "TaskConfig", "sample_tasks", "unseen_seeds",
    "load_optimizer", "compare", "summarize", "paired_comparison", "BaselineConfig", "meta_train",
    "LearnedTeleportOptimizer",
)
DOCUMENTS = ("README.md", "docs/*.md")


# ---------------------------------------------------------------------------------------------
# The import graph


@dataclass(frozen=True)
class Import:
    """One imported module (and the names taken from it) at one line of one package module."""

    source: str  # importing module, dotted: "metatele.meta.train"
    path: str  # its file, relative to the repository: "metatele/meta/train.py"
    line: int
    target: str  # imported module, dotted; a package module when it is one
    names: tuple[str, ...]  # names taken by ``from target import ...``; () when a module is imported
    local: str | None  # the name bound to the imported module itself (``import a.b as local``)
    in_function: bool

    @property
    def internal(self) -> bool:
        return self.target == "metatele" or self.target.startswith("metatele.")

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    """Dotted name of the module at ``path`` under the package folder ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest package module that ``name`` starts with (``name`` itself when not internal)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def _in_function_nodes(tree: ast.AST) -> set[int]:
    """``id`` of every import statement inside a function body."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return inside


def imports_of(source: str, path: Path, modules: dict[str, Path], root: Path = PACKAGE) -> list[Import]:
    """Every import of module ``source`` (file ``path``), a ``from P import m`` of a submodule ``m``
    counting as an import of ``P.m``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    inside = _in_function_nodes(tree)
    rel = path.relative_to(root.parent).as_posix()
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        lazy = id(node) in inside
        if isinstance(node, ast.Import):
            for alias in node.names:
                # ``import a.b`` binds ``a``; ``import a.b as x`` binds ``x`` to ``a.b``
                local = alias.asname if alias.asname else None if "." in alias.name else alias.name
                found.append(Import(source, rel, node.lineno, _resolve(alias.name, modules), (), local, lazy))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names = []
            for alias in node.names:
                if f"{parent}.{alias.name}" in modules:  # ``from . import engine``: a module
                    found.append(Import(source, rel, node.lineno, f"{parent}.{alias.name}", (),
                                        alias.asname or alias.name, lazy))
                else:
                    names.append(alias.name)
            if names:
                found.append(Import(source, rel, node.lineno, _resolve(parent, modules), tuple(names), None, lazy))
    return sorted(found, key=lambda i: i.line)


def import_graph(root: Path = PACKAGE) -> list[Import]:
    """Every import of every module of the package at ``root``."""
    modules = package_modules(root)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules, root)]


def stage_of(module: str) -> str | None:
    """Stage name of a package module (``None`` for a module of no stage)."""
    parts = module.split(".")
    key = "__init__" if len(parts) == 1 else parts[1]
    return key if key in STAGE_RANK else None


def find_cycles(edges: list[Import]) -> list[list[str]]:
    """A cycle ``a -> b -> ... -> a`` through each set of package modules that import each other
    (each strongly connected component of more than one module, or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.internal:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(component, graph) for component in components]


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One explicit cycle from ``component[0]`` back to itself inside the component (breadth first)."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {component}")  # a component always has one


def private_name(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path = PACKAGE) -> list[str]:
    """``path:line: what`` for each private name a module takes from another module: by
    ``from m import _name``, or as an attribute ``m._name`` of an imported package module ``m``."""
    modules = package_modules(root)
    found = []
    for name, path in modules.items():
        imports = imports_of(name, path, modules, root)
        found += [f"{imp.where}: imports {n} from {imp.target}"
                  for imp in imports for n in imp.names if private_name(n)]
        bound = {imp.local: imp.target for imp in imports if imp.local and imp.target in modules}
        rel = path.relative_to(root.parent).as_posix()
        found += [
            f"{rel}:{node.lineno}: uses {node.attr} of {bound[node.value.id]}"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in bound and private_name(node.attr)
        ]
    return found


def module_path(path: Path, root: Path = PACKAGE) -> str:
    return path.relative_to(root.parent).as_posix()


def unstaged_modules(root: Path = PACKAGE) -> list[str]:
    return [module_path(p, root) for m, p in package_modules(root).items() if stage_of(m) is None]


def later_stage_imports(graph: list[Import]) -> list[str]:
    """``path:line: what`` for each import of a package module of a later stage."""
    found = []
    for imp in graph:
        src, dst = stage_of(imp.source), stage_of(imp.target) if imp.internal else None
        if src and dst and STAGE_RANK[dst] > STAGE_RANK[src]:
            found.append(f"{imp.where}: {imp.source} ({src}) imports {imp.target} ({dst})")
    return found


def lazy_imports(graph: list[Import]) -> list[str]:
    """``path:line: what`` for each import inside a function, but of :data:`LAZY_IMPORTS_ALLOWED`."""
    return [
        f"{imp.where}: imports {imp.target}" + (f" ({', '.join(imp.names)})" if imp.names else "")
        for imp in graph
        if imp.in_function and imp.target.split(".")[0] not in LAZY_IMPORTS_ALLOWED
    ]


def long_modules(root: Path = PACKAGE) -> list[str]:
    return [f"{module_path(p, root)}: {n} lines" for p in package_modules(root).values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]


# ---------------------------------------------------------------------------------------------
# Checks of the package


def test_every_module_belongs_to_a_stage():
    unknown = unstaged_modules()
    assert not unknown, f"modules of no stage (add their folder to STAGES in {Path(__file__).name}): {unknown}"


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_from_a_later_stage():
    backward = later_stage_imports(import_graph())
    assert not backward, "imports from a later stage:\n" + "\n".join(backward)


def test_no_private_names_imported():
    found = private_imports()
    assert not found, "private names taken from another module:\n" + "\n".join(found)


def test_no_imports_inside_functions_except_optional_dependencies():
    lazy = lazy_imports(import_graph())
    assert not lazy, (f"imports inside functions (only {sorted(LAZY_IMPORTS_ALLOWED)} may be):\n"
                      + "\n".join(lazy))


def test_no_module_over_450_lines():
    long = long_modules()
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


# ---------------------------------------------------------------------------------------------
# References to the internal notes


def repository_text_files(root: Path = ROOT):
    """Every text file of the repository at ``root`` (sources, docs, configs, manifests)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in rel.parts[:-1])
                or not path.is_file() or path.suffix in BINARY_SUFFIXES):
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        yield rel, data.decode("utf-8", errors="replace")


def internal_references(root: Path = ROOT, skip: tuple[Path, ...] = ()) -> list[str]:
    return [
        f"{rel}:{n}: {m.group(0)!r}"
        for rel, text in repository_text_files(root) if rel not in skip
        for n, line in enumerate(text.splitlines(), 1)
        for m in INTERNAL_REFERENCES.finditer(line)
    ]


def test_no_reference_to_the_internal_notes():
    found = internal_references(skip=(Path(__file__).resolve().relative_to(ROOT),))
    assert not found, "references to ../shared or the SPEC:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# Public names


PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
MT_NAME = re.compile(r"\bmt\.([A-Za-z_]\w*)")
FROM_METATELE = re.compile(r"^\s*from\s+metatele\s+import\s+(\([^)]*\)|[^\n#]+)", re.M)


def documented_names(root: Path = ROOT) -> dict[str, list[str]]:
    """Each name the ```python blocks of the documents use as ``mt.<name>`` or
    ``from metatele import <name>``, with the ``path:line`` where it is used."""
    used: dict[str, list[str]] = {}
    for pattern in DOCUMENTS:
        for path in sorted(root.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            for block in PYTHON_BLOCK.finditer(text):
                start = text.count("\n", 0, block.start(1)) + 1
                code = block.group(1)
                hits = [(m.start(), m.group(1)) for m in MT_NAME.finditer(code)]
                for m in FROM_METATELE.finditer(code):
                    for item in m.group(1).strip().strip("()").split(","):
                        if item.split():  # "name" or "name as alias"
                            hits.append((m.start(), item.split()[0]))
                for offset, name in hits:
                    line = start + code.count("\n", 0, offset)
                    used.setdefault(name, []).append(f"{path.relative_to(root)}:{line}")
    return used


def test_documentation_examples_use_importable_names():
    used = documented_names()
    assert used, "no `mt.<name>` found in the documents' python blocks: the scan itself is broken"
    missing = [f"{where}: {name}" for name, places in sorted(used.items())
               if not hasattr(metatele, name) for where in places]
    assert not missing, "names the documentation uses that `metatele` lacks:\n" + "\n".join(missing)


def test_all_is_a_curated_list_of_the_public_names():
    names = metatele.__all__
    assert len(names) == len(set(names)), "a name listed twice in metatele.__all__"
    assert all(hasattr(metatele, n) for n in names)
    assert not [n for n in names if n == "annotations" or n.startswith("_") or inspect.ismodule(getattr(metatele, n))]
    assert set(PUBLIC_NAMES) | set(documented_names()) <= set(names)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_importable(name):
    assert hasattr(metatele, name), f"metatele.{name} is missing"
    assert name in metatele.__all__, f"metatele.{name} exists but is not in metatele.__all__"


# ---------------------------------------------------------------------------------------------
# The checks themselves can fail: a small package with each kind of violation


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root / "metatele"


def test_checks_find_each_kind_of_violation(tmp_path):
    pkg = _write(tmp_path, {
        "metatele/__init__.py": "from .tasks.family import sample\n",
        "metatele/tasks/__init__.py": "",
        "metatele/tasks/family.py": "import numpy\nfrom ..meta.train import _step\n\ndef sample():\n"
                                    "    import wandb\n    from . import mlp\n    return mlp._hidden\n",
        "metatele/tasks/mlp.py": "from .family import sample\n_hidden = 1\n",
        "metatele/meta/__init__.py": "",
        "metatele/meta/train.py": "import metatele.tasks.family as fam\n_step = 0\n",
        "metatele/meta/engine.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
        "metatele/meta/config.py": "x = 1\n" * MAX_MODULE_LINES,
        "metatele/plots.py": "from .meta import engine\n",
        "notes.md": "see ../shared/SPEC.md and SPEC §3,\nthe SPEC formula; a spec, SPECS\n",
    })
    graph = import_graph(pkg)
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and cycles[0][0] == cycles[0][-1] == "metatele.meta.train"
    assert set(cycles[0]) == {"metatele.meta.train", "metatele.tasks.family"}  # the shortest way back
    assert later_stage_imports(graph) == [
        "metatele/tasks/family.py:2: metatele.tasks.family (tasks) imports metatele.meta.train (meta)"]
    assert [(i.target, i.line) for i in graph if i.in_function] == [("wandb", 5), ("metatele.tasks.mlp", 6)]
    assert lazy_imports(graph) == ["metatele/tasks/family.py:6: imports metatele.tasks.mlp"]
    assert unstaged_modules(pkg) == ["metatele/plots.py"]
    assert long_modules(pkg) == [f"metatele/meta/engine.py: {MAX_MODULE_LINES + 1} lines"]
    assert {i.target for i in graph if not i.internal} == {"numpy", "wandb"}
    private = private_imports(pkg)
    assert private == ["metatele/tasks/family.py:2: imports _step from metatele.meta.train",
                       "metatele/tasks/family.py:7: uses _hidden of metatele.tasks.mlp"]
    refs = internal_references(tmp_path)
    assert refs == ["notes.md:1: '../shared'", "notes.md:1: 'SPEC.md'", "notes.md:1: 'SPEC §3'", "notes.md:2: 'SPEC'"]


def test_documented_names_are_found_with_their_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "text mt.not_code\n```python\nimport metatele as mt\nx = mt.teleport(w)\n"
        "from metatele import (compare,\n    summarize as s)\n```\n```bash\nmt.shell\n```\n", encoding="utf-8")
    (tmp_path / "docs" / "a.md").write_text("```python\ny = mt.nowhere\n```\n", encoding="utf-8")
    assert documented_names(tmp_path) == {
        "teleport": ["README.md:4"], "compare": ["README.md:5"], "summarize": ["README.md:5"],
        "nowhere": ["docs/a.md:2"],
    }
