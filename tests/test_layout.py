"""The layout stays true: the import graph of the repo's files, read from their source with
ast (imports inside functions included), has no cycle; the core modules import only core
modules, never a tool, an experiment or train.py; nothing imports train.py; and a core
module does no work at import. README.md, "The files", draws the same graph.

Tests are left out of the graph: they sit above everything and import train.py to run the
loop in-process (thirty-odd short runs; as subprocesses they would double the suite's time)."""

import ast
import os

import pytest

from conftest import REPO

LOOP = "train"
TOOLS = {"federated", "sample", "export", "prune", "bench", "bench_attention", "plot", "sweep", "mup", "quantize", "multitask"}  # run by users, on top of the core; never imported by it
SCRIPT_FOLDERS = ["experiments", "exercises", "data"]  # each file a script (or a script's helper)


def repo_files(root):
    """{node name: path} of every .py file outside tests: top-level modules by module name,
    the rest by their path ("experiments/harness.py")."""
    files = {f[:-3]: os.path.join(root, f) for f in os.listdir(root) if f.endswith(".py")}
    for folder in SCRIPT_FOLDERS:
        for dirpath, _, names in os.walk(os.path.join(root, folder)):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(dirpath, n)
                    files[os.path.relpath(path, root)] = path
    return files


def imported_names(path):
    """The top-level names of every absolute import in a file, anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def import_graph(root):
    """{node: set of nodes it imports}. A script's `import x` finds x.py beside it first (its
    folder is sys.path[0]), then a top-level module of the repo."""
    files = repo_files(root)
    graph = {}
    for node, path in files.items():
        here = os.path.relpath(os.path.dirname(path), root)
        edges = set()
        for name in imported_names(path):
            beside = os.path.join(here, name + ".py")
            if here != "." and beside in files:
                edges.add(beside)
            elif name in files:
                edges.add(name)
        graph[node] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of nodes [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def core_modules(graph):
    return {n for n in graph if "/" not in n and n != LOOP and n not in TOOLS}


def layout_violations(root):
    """Every way the files at root break the layout, as readable lines (empty: none)."""
    graph = import_graph(root)
    problems = []
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    core = core_modules(graph)
    for node in sorted(graph):
        if LOOP in graph[node]:
            problems.append(f"{node} imports {LOOP}.py: nothing may (it is the loop, not a library)")
        if node in core:
            for bad in sorted(graph[node] - core - {LOOP}):
                problems.append(f"core module {node} imports {bad}, which is not core")
    return problems


def test_the_repo_keeps_its_layout():
    assert layout_violations(REPO) == []


def test_the_layout_check_catches_each_mistake(tmp_path):
    """The same check on small trees that break one rule each (the repo before this test
    existed broke all three: distill.py and train.py imported each other, sample.py and
    export.py imported train.py)."""
    def tree(files):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        return str(root)

    ok = {"model.py": "import torch\n", "train.py": "import model\n", "sample.py": "from model import GPT\n",
          "experiments/harness.py": "import os\n", "experiments/a_experiment.py": "from harness import REPO\n"}
    assert layout_violations(tree(ok)) == []
    lazy_cycle = {**ok, "distill.py": "def main():\n    import train\n", "train.py": "import model\nimport distill\n"}
    assert any(p.startswith("import cycle: distill -> train -> distill") for p in layout_violations(tree(lazy_cycle)))
    tool_on_loop = {**ok, "sample.py": "from train import read_checkpoint\n"}
    assert layout_violations(tree(tool_on_loop)) == ["sample imports train.py: nothing may (it is the loop, not a library)"]
    core_on_tool = {**ok, "bench.py": "import torch\n", "model.py": "import bench\n"}
    assert layout_violations(tree(core_on_tool)) == ["core module model imports bench, which is not core"]
    # a script's own helper beside it is found first, as Python's sys.path[0] would
    shadow = {**ok, "experiments/model.py": "import os\n", "experiments/a_experiment.py": "import model\n"}
    assert import_graph(tree(shadow))["experiments/a_experiment.py"] == {"experiments/model.py"}


@pytest.mark.parametrize("name", sorted(core_modules(import_graph(REPO))))
def test_a_core_module_does_no_work_at_import(name):
    """Only imports, definitions, constant assignments and the docstring at the top level
    of a library file (a script's work sits under `if __name__ == "__main__":`)."""
    with open(os.path.join(REPO, name + ".py")) as f:
        tree = ast.parse(f.read())
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the docstring
        if isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test):
            continue
        assert isinstance(stmt, allowed), f"{name}.py line {stmt.lineno}: {ast.unparse(stmt)[:80]}"
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call)]
            # building constants from the module's own dataclasses (fields(...)) is fine; I/O is not
            names = {ast.unparse(c.func) for c in calls}
            assert names <= {"fields", "dict", "set", "list", "tuple", "len", "os.path.dirname",
                             "os.path.abspath", "re.compile"}, f"{name}.py line {stmt.lineno}: calls {names}"


def test_no_module_is_past_its_size():
    """train.py <= 500 lines, every other file <= 550 (a file past that is asking to be split)."""
    lines = {n: sum(1 for _ in open(p)) for n, p in repo_files(REPO).items()}
    assert lines[LOOP] <= 500
    assert {n: c for n, c in lines.items() if c > 550} == {}
