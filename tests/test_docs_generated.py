"""The generated docs match the code, and the model docstrings read as their papers.

- docs/gen_docs.py --check, in-process: the hyperparameter table of each docs/models/<script>.md
  is the script's HYPERPARAMETERS, and docs/cli.md's generated block is every parser's --help;
- each model docstring is at most 35 lines and carries no tuning figures (no "seed 0",
  "seeds 0-2", "dev seeds"): those belong in docs/models/<script>.md and docs/experiments/.
"""
import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")
MAX_DOCSTRING_LINES = 35
# per-seed figures and tuning history: "seed 0", "seeds 0-2", "seeds 10, 11", "dev seeds", "development seeds"
SEED_FIGURES = re.compile(r"(?i)\bseeds?\s*[0-9]|\b(dev|development)\s+seeds?\b")


@pytest.fixture(scope="module")
def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "docs" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docstring(model):
    """(the module docstring, the number of source lines its literal spans)."""
    tree = ast.parse((ROOT / f"{model}.py").read_text(encoding="utf-8"))
    node = tree.body[0]
    assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), \
        f"{model}.py does not start with a docstring"
    return node.value.value, node.end_lineno - node.lineno + 1


def test_generated_pages_match_the_code(gen_docs):
    stale, notes = gen_docs.stale_pages()
    assert not stale, ("stale generated docs (run python docs/gen_docs.py): "
                       + ", ".join(str(p.relative_to(ROOT)) for p in stale))


def test_check_exits_1_on_a_stale_table(gen_docs, monkeypatch, capsys):
    """--check notices a changed declaration (here a paper default) and names the page."""
    import dataclasses

    import dcgan
    monkeypatch.setitem(dcgan.HYPERPARAMETERS, "beta2", dataclasses.replace(dcgan.HYPERPARAMETERS["beta2"], default=0.123))
    assert gen_docs.main(["--check"]) == 1
    assert "docs/models/dcgan.md" in capsys.readouterr().out


def test_every_model_page_has_its_table(gen_docs):
    for model in MODELS:
        text = (ROOT / "docs" / "models" / f"{model}.md").read_text(encoding="utf-8")
        assert gen_docs.HYPER_BEGIN in text and gen_docs.HYPER_END in text, model
        for name in importlib.import_module(model).HYPERPARAMETERS:
            assert f"`--{name.replace('_', '-')}`" in text, (model, name)


def test_help_is_the_same_on_every_machine(gen_docs, monkeypatch):
    """Terminal width and CPU count do not change the generated --help."""
    import os
    first = gen_docs.render_help(importlib.import_module("began").build_parser(), "began.py")
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    assert gen_docs.render_help(importlib.import_module("began").build_parser(), "began.py") == first
    assert "min(8, the CPU count)" in first
    wrapped = [line for line in first.splitlines() if line.startswith(" " * 24)]  # help text, wrapped by argparse
    assert wrapped and max(map(len, wrapped)) <= gen_docs.WIDTH


@pytest.mark.parametrize("model", MODELS)
def test_model_docstring_is_short_and_has_no_tuning_figures(model):
    doc, lines = _docstring(model)
    assert lines <= MAX_DOCSTRING_LINES, f"{model}.py's docstring is {lines} lines (at most {MAX_DOCSTRING_LINES})"
    found = SEED_FIGURES.findall(doc)
    assert not SEED_FIGURES.search(doc), f"{model}.py's docstring has per-seed figures: {found}"
    assert f"docs/models/{model}.md" in doc, f"{model}.py's docstring links none of its departures' evidence"


def test_seed_pattern():
    for bad in ("seeds 0-2", "seed 0", "dev seeds", "development seeds 0 / 1 / 2", "Seeds 10, 11"):
        assert SEED_FIGURES.search(bad), bad
    for ok in ("--seed", "same seed, same run", "seeded"):
        assert not SEED_FIGURES.search(ok), ok
