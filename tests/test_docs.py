"""The docs hold together (issue 29): docs/configuration.md is what the config classes give now; every relative link
and #anchor in README.md and docs/*.md resolves (GitHub's heading slugs); every stored result they cite under
benchmarks/results/ exists. Text only: no Ray, no model."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT_EXTENSIONS = (".json", ".jsonl", ".png", ".md", ".txt", ".yaml")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# -- reading markdown the way GitHub renders it ----------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if m and m.group(1).startswith(fence):
                fence = None
            continue
        out.append((n, line))
    return out


def without_code_spans(line: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


def heading_text(raw: str) -> str:
    """The text GitHub shows for a heading's markdown: links become their text, code spans and emphasis marks go,
    backslash escapes become the character."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"(`+)(.+?)\1", r"\2", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\\(.)", lambda m: "\0" + m.group(1), text)  # escaped: kept, whatever it is
    text = re.sub(r"(?<!\0)[*]", "", text)
    text = re.sub(r"(?<![\w\0])_+|_+(?![\w])", "", text)  # _emphasis_, not snake_case
    return text.replace("\0", "").strip()


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading: lowercase; drop every character that is not a letter, number, mark,
    connector (``_``), hyphen or space; spaces become hyphens."""
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in "- " or ch == "_" or cat[0] in "LNM":
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(text: str) -> set[str]:
    """Every anchor a page has: its headings' slugs (a repeated one gets -1, -2, ...) and explicit HTML anchors."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(text):
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(heading_text(m.group(2)))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
        for a in re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", line):
            out.add(a)
    return out


_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and link reference definition outside code."""
    out = []
    for n, line in prose_lines(text):
        prose = without_code_spans(line)
        out += [(n, m.group(1)) for m in _LINK.finditer(prose)]
        m = _REF_DEF.match(prose)
        if m:
            out.append((n, m.group(1)))
    return out


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """What does not resolve on ``page``: a relative target that is not there, or an #anchor its page lacks."""
    text = page.read_text(encoding="utf-8") if text is None else text
    problems = []
    cache: dict[Path, set[str]] = {}
    for n, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = page if not path else (page.parent / path).resolve()
        where = f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: {path} does not exist")
            continue
        if anchor and dest.suffix == ".md":
            if dest not in cache:
                cache[dest] = anchors(text if dest == page else dest.read_text(encoding="utf-8"))
            if anchor not in cache[dest]:
                problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


_RESULT = re.compile(r"benchmarks/results/[A-Za-z0-9_./-]*")


def cited_results(text: str) -> list[str]:
    """Paths under benchmarks/results/ that a page names (a link or in backticks or prose), patterns left out."""
    out = []
    for m in _RESULT.finditer(text):
        if text[m.end():m.end() + 1] in ("<", "{", "*", "$"):
            continue  # a pattern such as benchmarks/results/math_corpus/r<k>/
        path = m.group(0).rstrip(".,")
        if path.endswith(RESULT_EXTENSIONS) or path.endswith("/"):
            out.append(path)
    return out


# -- the checks ------------------------------------------------------------------------------------------------


def test_configuration_page_is_up_to_date():
    from jobs.docs import configuration_problem

    assert configuration_problem() is None, configuration_problem()


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_cited_stored_result_exists(page):
    missing = sorted({p for p in cited_results(page.read_text(encoding="utf-8")) if not (REPO / p).exists()})
    assert not missing, f"{page.relative_to(REPO)} cites stored results that are not there: {missing}"


# -- the checker itself: it finds what is broken ----------------------------------------------------------------


@pytest.mark.parametrize("heading, slug", [
    ("The annotate job on Ray", "the-annotate-job-on-ray"),
    ("Configuration (`jobs/configs/default.yaml`)", "configuration-jobsconfigsdefaultyaml"),
    ("C\\* that teaches: the math corpus (`jobs/configs/math_corpus.yaml`)",
     "c-that-teaches-the-math-corpus-jobsconfigsmath_corpusyaml"),
    ("Measured here (2 cores, no GPU)", "measured-here-2-cores-no-gpu"),
    ("How a run goes: passes, commits, progress", "how-a-run-goes-passes-commits-progress"),
    ("Capacity plan (an estimate, not a measurement)", "capacity-plan-an-estimate-not-a-measurement"),
    ("Pruning — exact, by L(ε)", "pruning--exact-by-lε"),
    ("[Tools](tools.md) and *their* indexes", "tools-and-their-indexes"),
])
def test_github_slugs(heading, slug):
    assert github_slug(heading_text(heading)) == slug


def test_the_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    text = "\n".join([
        "# Page", "## Here", "",
        "[ok](#here) [ok](other.md#twice-1) [ok](other.md) ![ok](other.md) [web](https://example.com/x#y)",
        "[bad anchor](#nowhere) [bad file](missing.md) [bad other](other.md#twice-2)",
        "`[in code](gone.md)`", "```", "[in a fence](gone.md)", "## Not a heading", "```",
        "[fenced heading](#not-a-heading)", "",
    ])
    page.write_text(text)
    problems = broken_links(page)
    assert [p.split(": ")[1] for p in problems] == [
        "#nowhere", "missing.md", "other.md#twice-2", "#not-a-heading"], problems


def test_the_checker_finds_missing_stored_results():
    text = ("`benchmarks/results/ray.json`, [x](../benchmarks/results/nope.json), benchmarks/results/demo/ and "
            "`benchmarks/results/math_corpus/r<k>/` and benchmarks/results/tools.json.")
    assert cited_results(text) == ["benchmarks/results/ray.json", "benchmarks/results/nope.json",
                                   "benchmarks/results/demo/", "benchmarks/results/tools.json"]
    assert [p for p in cited_results(text) if not (REPO / p).exists()] == ["benchmarks/results/nope.json"]


def test_the_configuration_check_finds_a_stale_page(tmp_path):
    from jobs.docs import configuration_problem, render_configuration

    page = tmp_path / "configuration.md"
    page.write_text(render_configuration().replace("| `model.dtype` | `\"float32\"`", "| `model.dtype` | `\"x\"`"))
    assert "out of date" in (configuration_problem(page) or "")
    page.write_text(render_configuration())
    assert configuration_problem(page) is None


# -- every module the docs name exists ---------------------------------------------------------------------------
PACKAGES = sorted(p.name for p in (REPO / "toolformer").iterdir() if (p / "__init__.py").exists())
# a path under the code's folders (`toolformer/run/lease.py`, `jobs/demo.py`), or one relative to the library
# as the docs' tables write them (`annotate/positions.py`, `cstar/`)
CODE_PATH = re.compile(r"(?<![\w/.-])((?:toolformer|jobs|benchmarks|tests|cluster)/[\w/.-]*\w/?"
                       r"|(?:" + "|".join(PACKAGES) + r")/[\w/]*\w\.py)(?![\w/])")
DOTTED = re.compile(r"(?<![\w./])toolformer(?:\.\w+)+")


def _defines(source: str, name: str) -> bool:
    return bool(re.search(rf"^(?:def|class|async def) {name}\b|^{name}\s*[:=]|^from \S+ import .*\b{name}\b"
                          rf"|^    (?:def|async def) {name}\b", source, re.M))


def missing_modules(page: Path, repo: Path = REPO) -> list[str]:
    """Module paths (``toolformer/run/lease.py``, ``annotate/positions.py``) and dotted names
    (``toolformer.run.lease.Lease``) in a page that name no file, or no top-level name of their module, now."""
    text = page.read_text()
    out = []
    for m in CODE_PATH.finditer(text):
        path = m.group(1)
        first = path.split("/", 1)[0]
        where = repo / path if first in ("toolformer", "jobs", "benchmarks", "tests", "cluster") else \
            repo / "toolformer" / path
        if "results/" in path or any(c in path for c in "*"):  # stored results have a test of their own
            continue
        if not where.exists():
            out.append(f"{page.name}: {path}")
    for m in DOTTED.finditer(text):
        parts = m.group(0).split(".")
        at = repo / "toolformer"
        for i, name in enumerate(parts[1:], start=1):
            if (at / name).is_dir() and (at / name / "__init__.py").exists():
                at = at / name
                continue
            if (at / f"{name}.py").exists():
                at = at / f"{name}.py"
                rest = parts[i + 1:]
                if rest and not _defines(at.read_text(), rest[0]):
                    out.append(f"{page.name}: {m.group(0)} ({rest[0]} is not in {at.relative_to(repo)})")
                break
            source = (at / "__init__.py").read_text() if at.is_dir() else at.read_text()
            if i == 1 or not _defines(source, name):  # toolformer.<x> must be a module; later, a name in one
                out.append(f"{page.name}: {m.group(0)}")
            break
    return out


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_path_named_in_the_docs_exists(page):
    problems = missing_modules(page)
    assert not problems, "\n".join(problems)


def test_the_module_check_finds_a_moved_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("The lease (`toolformer/run/lease.py`, `toolformer.run.lease.Lease`, `annotate/passes.py`) and "
                    "`toolformer/leases.py`, `toolformer.shard.RunState`, `toolformer.run.lease.Nope`, "
                    "`cstar/merged.py`, `jobs/nope.py`.")
    assert missing_modules(page) == [
        "page.md: toolformer/leases.py", "page.md: cstar/merged.py", "page.md: jobs/nope.py",
        "page.md: toolformer.shard.RunState", "page.md: toolformer.run.lease.Nope (Nope is not in toolformer/run/lease.py)"]
