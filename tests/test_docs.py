"""The documentation stays a user's: README.md is at most 200 lines, every relative link in README.md and docs/
resolves to a file (and heading) inside the repository, nothing points outside it, and docs/cli.md is the
rendering of the click commands as they are now."""

from __future__ import annotations

import importlib
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

from edge_unlearn.cli.reference import REGENERATE, render_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: text that sends a reader outside the repository: the design notes that used to live beside it, sibling folders
OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared|/work/")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every heading anchor of a markdown file (a repeated heading gets GitHub's -1, -2 suffixes)."""
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            out.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return out


def test_slug_matches_github():
    assert slug("Does the backbone forget on the device? (`validate --audit`)") == (
        "does-the-backbone-forget-on-the-device-validate---audit"
    )
    assert slug("2. NHLE: how a class is forgotten") == "2-nhle-how-a-class-is-forgotten"


def test_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/ (at most 200)"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(doc):
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.is_relative_to(ROOT):
            broken.append(f"{target} points outside the repository")
        elif not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: {path.name} has no heading #{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_file_named_in_the_text_exists(doc):
    """Paths written as text (``benchmarks/forgetting_depth.py``, ``tests/test_layout.py``) move with the code."""
    named = re.findall(
        r"(?<![\w/.-])((?:edge_unlearn|export|kernels|tests|benchmarks|docs)/[\w./-]+\.(?:py|md|json|png|csv))",
        doc.read_text(),
    )
    missing = sorted({path for path in named if not (ROOT / path).exists()})
    assert not missing, f"{doc.relative_to(ROOT)} names files that are not in the repository: {missing}"


def _resolves(dotted: str) -> bool:
    """Whether ``edge_unlearn.a.b.c`` names a module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(module)
            for attribute in parts[end:]:
                if not hasattr(obj, attribute):
                    return False
                obj = getattr(obj, attribute)
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_named_in_the_text_exists(doc):
    """``edge_unlearn.deploy.validate``, ``edge_unlearn.models.wrap``: names in inline code follow the code.
    ``edge_unlearn.<key>`` with no submodule of that name is an ONNX metadata key, not checked here."""
    named = set(re.findall(r"`[^`\n]*?\b(edge_unlearn(?:\.\w+)+)", doc.read_text()))
    checked = [n for n in named if importlib.util.find_spec(".".join(n.split(".")[:2])) is not None]
    missing = sorted(n for n in checked if not _resolves(n))
    assert not missing, f"{doc.relative_to(ROOT)} names modules or functions that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_text_points_outside_the_repository(doc):
    hits = [
        f"line {n}: {line.strip()[:100]}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, f"{doc.relative_to(ROOT)} points outside the repository (use docs/design.md): {hits}"


def test_no_source_file_points_to_design_notes_outside_the_repository():
    sources = [
        p
        for folder in ("edge_unlearn", "export", "kernels", "tests", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
        if p != Path(__file__).resolve()
    ]
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"(?<![\w/])DESIGN\.md|shared/DESIGN", line)
    ]
    assert not hits, f"these lines cite a DESIGN.md that is not in the repository; cite docs/design.md: {hits}"


def test_cli_reference_is_current():
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render_reference(), f"docs/cli.md is stale; regenerate it with `{REGENERATE}`"


def test_cli_reference_covers_every_command_and_option():
    """The rendering itself: a section per command, a row per visible option (so a stale test cannot pass
    on an empty rendering)."""
    import click

    from edge_unlearn.cli import main

    text = render_reference()
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        section = text.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"`{param.opts[0]}`" in section, f"{name}: {param.opts[0]} missing from docs/cli.md"
