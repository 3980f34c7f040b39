"""Every tensor the scoring and bench code creates is made on the model's device.

A factory call (torch.tensor, torch.arange, ...) without ``device=`` makes a CPU tensor, which
works on this machine and fails on the first GPU (issue 18: the bench fed CPU ids to a CUDA
model). The rule: such a call passes ``device=``, is moved at once to a device
(``torch.x(...).to(d)``; ``.to(torch.float32)`` alone leaves it on the CPU), or its line says
why the CPU is meant (``# cpu: ...``). The GPU scripts in search/results/gpu run nowhere else.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCOPE = sorted([*ROOT.glob("objectives/*.py"), *ROOT.glob("search/cli/bench/*.py"),
                *ROOT.glob("search/cli/check*.py"), *ROOT.glob("search/results/gpu/*.py")])
# not objectives/builtin: the embedded models' training scripts, which run on a CPU alone
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint",
             "randperm", "normal", "linspace", "eye", "from_numpy"}
DTYPES = {"float32", "float16", "bfloat16", "float64", "float", "half", "double", "long", "int64", "int32",
          "int", "bool", "uint8", "int8", "int16"}


def _moves(call: ast.Call) -> bool:
    """A `.to(...)` that names a device: device=, or a first argument that is no torch dtype."""
    if any(k.arg == "device" for k in call.keywords):
        return True
    first = call.args[0] if call.args else None
    return first is not None and not (isinstance(first, ast.Attribute) and first.attr in DTYPES
                                      and isinstance(first.value, ast.Name) and first.value.id == "torch")


def offences(source: str) -> list[str]:
    tree = ast.parse(source)
    lines = source.splitlines()
    moved = {id(n.func.value) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "to" and _moves(n)}
    out = []
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in FACTORIES
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"):
            continue
        if any(k.arg == "device" for k in n.keywords) or id(n) in moved:
            continue
        if "# cpu:" in lines[n.lineno - 1] or "# cpu:" in lines[n.end_lineno - 1]:
            continue
        out.append(f"{n.lineno}: {lines[n.lineno - 1].strip()}")
    return out


def test_the_rule_catches_a_cpu_tensor():
    assert offences("import torch\nx = torch.arange(4)\n") == ["2: x = torch.arange(4)"]
    assert offences("import torch\nx = torch.arange(4, device=d)\ny = torch.zeros(2).to(d)\n"
                    "z = torch.ones(3)  # cpu: a table moved with the module\n"
                    "w = torch.randperm(3).to(device=d, dtype=torch.float32)\n") == []
    # a dtype alone leaves it on the CPU; randperm is a factory too
    assert sorted(offences("import torch\nx = torch.arange(4).to(torch.float32)\ny = torch.randperm(3)\n")) == [
        "2: x = torch.arange(4).to(torch.float32)", "3: y = torch.randperm(3)"]


@pytest.mark.parametrize("path", SCOPE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_tensor_is_created_off_the_device(path):
    assert SCOPE, "no files in scope"
    assert offences(path.read_text()) == []
