"""The code's shape: small modules, no import cycles, no outside paths."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFL = os.path.join(ROOT, "afl")
MAX_LINES = 400


def _modules():
  """{dotted name: path} of every module under afl/."""
  out = {}
  for d, _, files in os.walk(AFL):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


def _imports(name, path, modules):
  """afl modules that `name` imports, lazily or not (a package's import of
  its own submodules included)."""
  found = set()
  pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                        + ([base] if base else []))
      targets = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:
        t = t.rpartition(".")[0]
      if t and t != name:
        found.add(t)
  return found


def test_no_module_over_400_lines():
  long = {n: sum(1 for _ in open(p)) for n, p in _modules().items()}
  assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_import_cycle():
  modules = _modules()
  graph = {n: _imports(n, p, modules) for n, p in modules.items()}
  # A package importing its submodules (or a submodule importing a sibling
  # through the package's name) is how packages work, not a cycle.
  def edges(n):
    return {m for m in graph[n] if not (m.startswith(n + ".")
                                        or n.startswith(m + "."))}
  state = {}

  def visit(n, stack):
    state[n] = "open"
    for m in edges(n):
      if state.get(m) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack + [n, m]))
      if m not in state:
        visit(m, stack + [n])
    state[n] = "done"

  for n in sorted(graph):
    if n not in state:
      visit(n, [])


def test_no_path_outside_the_repository():
  pattern = re.compile(r"\.\./shared|DESIGN\.md|STYLE\.md")
  hits = []
  for d in ("afl", "tests", "benchmarks", "configs"):
    for base, _, files in os.walk(os.path.join(ROOT, d)):
      for f in files:
        if f.endswith((".py", ".md", ".sh")) and f != "test_layout.py":
          text = open(os.path.join(base, f)).read()
          hits += [f"{f}: {m}" for m in pattern.findall(text)]
  assert hits == []
