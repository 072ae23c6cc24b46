"""setup.py's choice of C++ runtime: a private copy of libstdc++ linked into _C crashes in its
first stream (every shape check and error message), so a compiler that finds only libstdc++.a
must get the shared runtime named."""
import ast
import os
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def shared_cxx_runtime():
    """setup.py's function alone (running setup.py itself would build)."""
    tree = ast.parse(SETUP.read_text())
    keep = [node for node in tree.body if isinstance(node, ast.Import)
            or (isinstance(node, ast.FunctionDef) and node.name == "shared_cxx_runtime")]
    namespace = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(SETUP), "exec"), namespace)
    return namespace["shared_cxx_runtime"]


def fake_compiler(tmp_path, answer):
    path = tmp_path / "c++"
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libstdc++ is Linux's runtime")
def test_a_compiler_without_the_shared_runtime_gets_the_loaded_one(tmp_path, monkeypatch, capsys):
    import torch  # noqa: F401  (loads libstdc++.so.6, as the build does)

    monkeypatch.setenv("CXX", fake_compiler(tmp_path, "libstdc++.so"))  # gcc's "not found"
    flags = shared_cxx_runtime()()
    assert len(flags) == 1 and os.path.isfile(flags[0]) and "libstdc++.so.6" in flags[0]
    assert "has no libstdc++.so" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libstdc++ is Linux's runtime")
def test_a_compiler_with_the_shared_runtime_adds_nothing(tmp_path, monkeypatch):
    found = tmp_path / "libstdc++.so"
    found.write_bytes(b"")
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, str(found)))
    assert shared_cxx_runtime()() == []
