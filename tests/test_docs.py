"""The docs cannot rot: every relative link and #anchor in README.md and docs/ resolves, every
command line they show parses with its script's own parser, and the README stays a front page.
(The generated pages — hyperparameter tables, cli.md — are checked in test_docs_generated.py.)"""
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
SCRIPTS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began", "evaluate", "compare")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))  # no headings in code
    found, seen = set(), {}
    for h in re.findall(r"(?m)^#{1,6} (.+?)\s*$", text):
        s = slug(h)
        n = seen.get(s, 0)  # GitHub numbers repeated headings: x, x-1, x-2
        seen[s] = n + 1
        found.add(s if n == 0 else f"{s}-{n}")
    return found


def links(page: Path):
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        yield m.group(1)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    bad = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_link_checker_sees_a_broken_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title, with `code` (and more)\n\n[ok](#title-with-code-and-more) "
                                   "[bad](#nope) [file](b.md#x)\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("## X\n", encoding="utf-8")
    page = tmp_path / "a.md"
    assert anchors(page) == {"title-with-code-and-more"}
    assert list(links(page)) == ["#title-with-code-and-more", "#nope", "b.md#x"]


# ---- command lines ----------------------------------------------------------------------
# Placeholders the docs use for a value, and what stands in for them when parsing.
PLACEHOLDERS = {"S": "0", "N": "1000", "K": "2", "P": "0.5", "B": "32", "W": "64", "2N": "2000", "$A": "none",
                "A": "none", "M": "2", "BETA": "0.999", "X": "1", "E": "500",
                "POLICY": "translation", "FLAGS": None}  # FLAGS: the flags a table row lists
COMMAND = re.compile(r"(?:^|[\s`(])((?:[A-Z_]+=\S+\s+)*(?:python|torchrun)\s+[^`\n]*?(?:\b(?:"
                     + "|".join(SCRIPTS) + r")\.py)\b[^`\n]*)")


def commands(page: Path):
    """Every shown command line running one of the scripts: fenced lines, and inline `code`
    spans (which may wrap over two lines in the Markdown source)."""
    text = page.read_text(encoding="utf-8")
    spans = re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", text)
    fenced = [ln for block in spans for ln in block.splitlines()]
    prose = re.sub(r"(?ms)^```.*?^```", "", text)
    inline = [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose)]
    for line in fenced + inline:
        line = line.split(" #")[0].strip()  # a trailing shell comment
        m = COMMAND.search(line)
        if m:
            yield m.group(1).strip()


def argv_of(command: str):
    """(script, argv) of a shown command, with its placeholders filled in."""
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)  # [--flag] = optional: parse it too
    command = command.replace("…", " ").replace("...", " ")
    tokens = shlex.split(command.split("&&")[0].split(">")[0].split("|")[0])
    while tokens and re.match(r"[A-Z_]+=", tokens[0]):  # OMP_NUM_THREADS=1 ...
        tokens.pop(0)
    i = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    script = Path(tokens[i]).stem
    rest = []
    for t in tokens[i + 1:]:
        t = PLACEHOLDERS.get(t, t)
        if t is None:
            continue
        t = re.sub(r"<[^>]+>", "x", t)
        rest.append(t)
    return script, rest


def parse(script: str, argv: list):
    mod = importlib.import_module(script)
    if script == "compare" and "--" in argv:
        own, theirs = argv[:argv.index("--")], argv[argv.index("--") + 1:]
        args = mod.build_parser().parse_args(own)
        for model in args.models:  # the flags after -- go to every model's script
            importlib.import_module(model).build_parser().parse_args(theirs)
        return args
    return mod.build_parser().parse_args(argv)


ALL = [(page, cmd) for page in PAGES for cmd in commands(page)]


def test_the_docs_show_commands_for_every_script():
    shown = {argv_of(cmd)[0] for _, cmd in ALL}
    assert set(SCRIPTS) <= shown, set(SCRIPTS) - shown
    assert len(ALL) > 100  # the docs are full of them; a broken extractor finds few


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_parses_with_its_scripts_parser(page, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    bad = []
    for cmd in commands(page):
        script, argv = argv_of(cmd)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parse(script, argv)
        except SystemExit as e:
            if e.code not in (0, None):  # --help exits 0
                bad.append(f"{cmd!r}: {err.getvalue().strip()}")
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_a_wrong_flag_in_a_shown_command_is_caught(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    script, argv = argv_of("python dcgan.py --stepz 10")
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        parse(script, argv)
    assert e.value.code == 2


# ---- the front page ---------------------------------------------------------------------

def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:30])
    assert "pip install" in first_screen and "python dcgan.py" in first_screen
    picture = next(i for i, ln in enumerate(lines) if ln.startswith("!["))
    table = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    assert picture < table  # one picture before any table
