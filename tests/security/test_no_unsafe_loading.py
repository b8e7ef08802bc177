"""The package never unpickles, never runs remote code, never evals config values."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("selflengthen_jax/**/*.py"), *ROOT.glob("launch/*.py")])
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            yield node, (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")


def test_sources_were_found():
    assert len(SOURCES) > 30


def test_no_eval_exec_or_pickle_anywhere():
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, name in calls(tree):
            if name in BANNED_CALLS and isinstance(node.func, ast.Name):
                problems.append(f"{path}:{node.lineno} calls {name}()")
            if name == "load" and isinstance(node.func, ast.Attribute) and \
                    getattr(node.func.value, "id", "") in {"torch", "pickle", "yaml"}:
                problems.append(f"{path}:{node.lineno} calls {node.func.value.id}.load")
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            problems += [f"{path}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
    assert problems == []


def test_trust_remote_code_is_never_enabled():
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


def test_yaml_is_only_read_with_safe_load():
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path
        assert "UnsafeLoader" not in text and "FullLoader" not in text, path


def test_templates_are_rendered_without_code_execution():
    from selflengthen_jax.pipeline.prompts import render
    out = render("Hello {name}", name="{__class__.__mro__}")
    assert out == "Hello {__class__.__mro__}"
