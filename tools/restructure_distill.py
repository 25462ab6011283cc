"""Move distill/ from 29 modules side by side into wings, and rewrite every reference.

Run from the repository root, on a clean tree with the old layout::

    python tools/restructure_distill.py            # does the move (git mv + rewrites)
    python tools/restructure_distill.py --check    # lists what it would move, changes nothing

It refuses (exit 1, nothing changed) when the tree already has the new layout, when the tree
has uncommitted changes (``--allow-dirty`` overrides), and when a distill top-level module or a
``tests/distill/test_*.py`` file is missing from the tables below: add the new ones and run
again. Delete this file once the move is merged.

Steps: (1) ``git mv`` each module (MODULES) and each test file (TESTS); (2) rewrite, in every
tracked text file: ``from distill.x import ...`` (also ``from distill import x``) statements,
names that moved between modules (SYMBOLS), dotted names (``"distill.x.y"`` strings for
monkeypatch/mock.patch, ``python -m distill.x``, ``importlib.import_module`` strings, entry
points, docs), file paths (``distill/x.py``, ``tests/distill/test_x.py``) and ``Path(__file__)``
parents in moved tests; (3) move the SYMBOLS' code to their new modules (with the imports they
use); (4) write the wings' ``__init__.py`` (WINGS); (5) compile everything and list leftovers.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import textwrap
import sys
from pathlib import Path

# -- the tables ------------------------------------------------------------------------------

MODULES = {  # old module -> new module
    # commands: flags in, exit codes out
    "distill.cli": "distill.cli.distill_cmd",
    "distill.generate_cmd": "distill.cli.generate_cmd",
    "distill.data_cmd": "distill.cli.data_cmd",
    # the recipes and what only training uses
    "distill.trainer": "distill.train.trainer",
    "distill.sequence": "distill.train.sequence",
    "distill.loop": "distill.train.loop",
    "distill.losses": "distill.train.losses",
    "distill.teacher_cache": "distill.train.teacher_cache",
    "distill.evaluation": "distill.train.evaluation",
    # may this run happen: the gate, its checks, the meter and the ledger charges
    "distill.gate": "distill.gate.checks",
    "distill.gated": "distill.gate.gated_run",
    "distill.preflight": "distill.gate.preflight",
    "distill.model_check": "distill.gate.model_check",
    "distill.meter": "distill.gate.meter",
    "distill.ledger_charges": "distill.gate.ledger_charges",
    "distill.hf": "distill.gate.hf",
    "distill.attested": "distill.gate.attested",
    "distill.refusal": "distill.gate.refusal",
    # training data
    "distill.data": "distill.data.training_data",
    "distill.prepare": "distill.data.prepare",
    # audited prompts are input data: the attested-input layer (gate) reads them for generate
    "distill.generation.prompts": "distill.data.prompts",
    "distill.shards": "distill.data.shards",
    # what a run or a generation job leaves behind
    "distill.record": "distill.outputs.run_record",
    "distill.run_report": "distill.outputs.run_report",
    "distill.model_card": "distill.outputs.model_card",
    "distill.export": "distill.outputs.export",
    "distill.run_log": "distill.outputs.run_log",
    "distill.generation.record": "distill.outputs.generation_record",
    # the torch machinery underneath
    "distill.models": "distill.runtime.models",
    "distill.distributed": "distill.runtime.distributed",
    "distill.fsdp": "distill.runtime.fsdp",
    "distill.checkpoint": "distill.runtime.checkpoint",
}

KEEP = {"distill", "distill.generation"}  # packages that stay where they are (their modules too)

SYMBOLS = {  # old module.name -> new module.name (code moves; a new name renames everywhere)
    # the recipes' shared steps leave the command module: no recipe imports a command
    "distill.cli.refuse": "distill.gate.gated_run.refuse",
    "distill.cli.dry_run_done": "distill.train.session.dry_run_done",
    "distill.cli.loop_overrides": "distill.train.session.loop_overrides",
    "distill.cli.finish_run": "distill.train.session.finish_run",
    # a run's result is what the run record records (the gate's own loops make one too)
    "distill.loop.TrainResult": "distill.outputs.run_record.TrainResult",
    # the label of a position that is not trained: the data's packing sets it
    "distill.losses.IGNORE_INDEX": "distill.data.training_data.IGNORE_INDEX",
    # the provenance of generated data (a signed generation record over the kept samples) is
    # checked by the attested-input layer in the gate, so it lives with the generation record
    "distill.sequence.verify_generated": "distill.outputs.generation_record.verify_generated",
    "distill.sequence.ProvenanceRefused": "distill.outputs.generation_record.ProvenanceRefused",
    "distill.sequence.GeneratedData": "distill.outputs.generation_record.GeneratedData",
    # one open_gate: the file-level checks get a name that says what they do
    "distill.gate.open_gate": "distill.gate.checks.run_gate_checks",
}

NEW_MODULE_DOCS = {
    "distill.train.session": (
        "The steps of a gated training run that both recipes (logit KD, sequence KD) share: the\n"
        "loop settings from the flags, the end of a dry run, and the signed record, model card,\n"
        "report and exported student at the end."),
}

PUBLIC = {"distill.gate": ("distill.gate.gated_run", ["GateRefused", "GatedRun", "open_gate"])}  # the wing re-exports

WINGS = {  # package -> (docstring, the wings it may import)
    "distill.cli": ("The training half's flopgate commands (distill, generate, data prepare): flags in, exit "
                    "codes out; registered by the flopgate.commands entry points.",
                    ["train", "generation", "gate", "data", "outputs", "runtime"]),
    "distill.train": ("The two recipes (logit KD: trainer; sequence KD: sequence), the loop they share, the "
                      "loss kernels, the teacher-logit cache, evaluation and a gated run's shared steps.",
                      ["gate", "data", "outputs", "runtime"]),
    "distill.generation": ("flopgate generate's machinery: backends (API, local), prompts, retries, the "
                           "token meter and the journal.",
                           ["gate", "data", "outputs", "runtime"]),
    "distill.gate": ("May this run or job happen: the verified audit (checks), preflight and model checks, "
                     "the compute meter and the ledger charges, and the gate inside Hugging Face trainers "
                     "(hf); open_gate is the one entry point.",
                     ["data", "outputs", "runtime"]),
    "distill.data": ("Training data: readers, packing and manifests (training_data), prepared token shards "
                     "(shards) and their preparation (prepare).",
                     ["runtime"]),
    "distill.outputs": ("What a run or job leaves behind: the signed run and generation records, the run "
                        "report, the model card, the exported student and the run log.",
                        ["runtime"]),
    "distill.runtime": ("The torch machinery under every recipe: model loading, process groups, FSDP2 and "
                        "checkpoints.",
                        []),
}

TOP_DOC = '''"""flopgate's training half, in wings; imports run one way, top to bottom
(tests/test_import_graph.py checks it; docs/architecture.md draws it):

cli/         the commands (distill, generate, data prepare)
train/       the recipes, the loop, losses, the teacher-logit cache, evaluation
generation/  flopgate generate's backends, retries and journal
gate/        may this run happen: the verified audit, preflight, the meter, ledger charges (open_gate)
data/        training data: readers, packing, manifests, shards
outputs/     what a run leaves: run and generation records, report, model card, exported student
runtime/     the torch machinery: models, process groups, FSDP2, checkpoints

Depends on ``audit``; never the other way round."""
'''

TESTS = {  # tests/distill/<file> -> its wing folder
    "test_distill_cli.py": "cli",
    "test_distill_data.py": "data", "test_prepare.py": "data", "test_shards.py": "data",
    "test_distill_gate.py": "gate", "test_gated.py": "gate", "test_distill_meter.py": "gate",
    "test_model_check.py": "gate", "test_preflight.py": "gate", "test_hf.py": "gate",
    "test_example_hf_trainer_sft.py": "gate", "test_example_lora_student.py": "gate",
    "test_example_trl_gkd.py": "gate", "test_attested.py": "gate",
    "test_generate_api.py": "generation", "test_generate_local.py": "generation",
    "test_generate_plan.py": "generation", "test_generate_units.py": "generation",
    "test_generate_journal.py": "generation",
    "test_distill_record.py": "outputs",
    "test_ledger_attacks.py": "gate",
    "test_distill_checkpoint.py": "runtime", "test_distill_distributed.py": "runtime",
    "test_distill_models.py": "runtime", "test_fsdp.py": "runtime",
    "test_distill_learning.py": "train", "test_distill_losses.py": "train", "test_distill_resume.py": "train",
    "test_distill_sequence.py": "train", "test_distill_speed_paths.py": "train",
    "test_distill_trainer.py": "train", "test_evaluation.py": "train", "test_teacher_cache.py": "train",
}

FIXUPS = [  # (file after the move, text, replacement): references no pattern above can see
    ("README.md", """- `distill/` - the gate (`gate.py`, and `gated.py` for any loop), the trainer, the compute
  meter, the ledger charges, checkpoints, run records, the model card and the run report, the
  post-load model check, teacher generation (`distill/generation`, `flopgate generate`) and the
  Hugging Face callback (`hf.py`).""", """- `distill/` - the training half, in wings (`docs/architecture.md`): commands (`distill/cli`),
  recipes and the loop (`distill/train`), teacher generation (`distill/generation`), the gate
  with its checks, meter, ledger charges and Hugging Face callback (`distill/gate`), training
  data (`distill/data`), what a run leaves behind (`distill/outputs`) and the torch machinery
  (`distill/runtime`)."""),
    ("README.md", "(`ledger.md`), generation (`generate.md`), other trainers (`integrations.md`) and measured numbers\n"
     "(`benchmarks.md`).", "(`ledger.md`), generation (`generate.md`), other trainers (`integrations.md`) and measured numbers\n"
     "(`benchmarks.md`); the code's layout is in `architecture.md`."),
    ("docs/distillation.md", "`distill.cli.distill_cmd.meter_figures`", "`audit.compute.run_budget.meter_figures`"),
    ("docs/gate.md", "`distill.cli.distill_cmd.meter_figures(", "`audit.compute.run_budget.meter_figures("),
    ("distill/generation/__init__.py", ":mod:`.record`   the kept-sample manifest and the signed generation record.",
     "the kept-sample manifest and the signed generation record: :mod:`distill.outputs.generation_record`."),
]

TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ".rst"}
SELF = Path("tools/restructure_distill.py")


# -- helpers ---------------------------------------------------------------------------------

def die(lines) -> None:
    for line in ([lines] if isinstance(lines, str) else lines):
        print(f"restructure: {line}", file=sys.stderr)
    sys.exit(1)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def path_of(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def parent_leaf(dotted: str) -> tuple[str, str]:
    parent, _, leaf = dotted.rpartition(".")
    return parent, leaf


SENTINEL = "\x00"  # marks names already rewritten, so the dotted pass leaves them alone


def fresh(dotted: str) -> str:
    return SENTINEL + dotted


# -- (0) checks -------------------------------------------------------------------------------

def check_tree(allow_dirty: bool) -> None:
    done = [w for w in WINGS if w not in KEEP and (path_of(w).parent / path_of(w).stem / "__init__.py").exists()]
    if done:
        die(f"already restructured ({', '.join(done)} exist); nothing done")
    if not allow_dirty:
        dirty = [l for l in git("status", "--porcelain", "--untracked-files=all").splitlines() if not l.endswith(str(SELF))]
        if dirty:
            die(["the tree has uncommitted changes (commit them, or --allow-dirty):"] + dirty[:20])
    problems = []
    for package in sorted({parent_leaf(m)[0] for m in MODULES} & KEEP):
        folder = Path(*package.split("."))
        for f in sorted(folder.glob("*.py")):
            module = ".".join(f.with_suffix("").parts)
            if f.name != "__init__.py" and module not in MODULES and package == "distill":
                problems.append(f"{f}: not in MODULES (add 'distill.{f.stem}': 'distill.<wing>.<name>')")
        for d in sorted(folder.iterdir()):
            if d.is_dir() and (d / "__init__.py").exists() and ".".join(d.parts) not in KEEP | set(WINGS):
                problems.append(f"{d}/: a package not in KEEP or WINGS")
    for old in MODULES:
        if not path_of(old).exists():
            problems.append(f"{path_of(old)}: in MODULES but not in the tree (remove it from the table)")
    for f in sorted(Path("tests/distill").glob("test_*.py")):
        if f.name not in TESTS:
            problems.append(f"{f}: not in TESTS (add '{f.name}': '<wing>')")
    for name in TESTS:
        if not (Path("tests/distill") / name).exists():
            problems.append(f"tests/distill/{name}: in TESTS but not in the tree")
    for key in SYMBOLS:
        module, name = parent_leaf(key)
        if not path_of(module).exists() or not re.search(
                rf"(?m)^(?:def|class) {name}\b|^{name}\s*[:=]", path_of(module).read_text()):
            problems.append(f"{key}: not defined at the top of {path_of(module)} (fix SYMBOLS)")
    for key, new in SYMBOLS.items():
        module = parent_leaf(key)[0]
        if parent_leaf(new)[0] != MODULES.get(module, module) and path_of(module).exists() and not any(key in p for p in problems):
            left = stranded(key, path_of(module))
            if left:
                problems.append(f"{key} uses {', '.join(left)} of {path_of(module)}, which stay(s) there: "
                                "move them too (SYMBOLS)")
    if problems:
        die(["the tables do not match the tree:"] + problems)


# -- (1) moves --------------------------------------------------------------------------------

def move_files() -> dict[Path, Path]:
    moved = {}
    for old, new in MODULES.items():
        moved[path_of(old)] = path_of(new)
    for name, wing in TESTS.items():
        moved[Path("tests/distill") / name] = Path("tests/distill") / wing / name
    for src, dst in moved.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(src), str(dst))
    return moved


# -- (2) rewrites -----------------------------------------------------------------------------

_FROM = re.compile(r"(?m)^(?P<indent>[ \t]*)from[ \t]+(?P<mod>distill(?:\.\w+)*)[ \t]+import[ \t]+"
                   r"(?P<names>\([^)]*\)|[^\n]*)")
_IMPORT_AS = re.compile(r"(?m)^(?P<indent>[ \t]*)import[ \t]+(?P<mod>distill(?:\.\w+)+)[ \t]+as[ \t]+(?P<alias>\w+)")


def _parse_names(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """``a, b as c`` or ``(a,\\n b)`` -> [(a, None), (b, c)], trailing comment."""
    comment = ""
    if text.startswith("("):
        body = "\n".join(line.split("#", 1)[0] for line in text[1:-1].splitlines())
    else:
        body, _, comment = text.partition("#")
        comment = ("  #" + comment) if comment else ""
    names = []
    for part in body.replace("\n", " ").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, alias = part.partition(" as ")
        names.append((name.strip(), alias.strip() or None))
    return names, comment.rstrip()


def _emit(indent: str, groups: dict[str, list[str]], comment: str) -> str:
    lines = []
    for module, names in groups.items():
        line = f"{indent}from {fresh(module)} import {', '.join(names)}"
        if len(line) > 116 and len(names) > 1:
            body, width, out = "", len(f"{indent}from {module} import ("), []
            for n in names:
                if body and width + len(body) + len(n) + 2 > 116:
                    out.append(body.rstrip())
                    body = ""
                body += n + ", "
            out.append(body.rstrip(", "))
            pad = " " * width
            line = f"{indent}from {fresh(module)} import (" + ("\n" + pad).join(out) + ")"
        lines.append(line)
    if comment and lines:
        lines[0] += comment
    return "\n".join(lines)


def _word(name: str) -> str:
    return rf"(?<![\w.]){re.escape(name)}\b"


def rewrite_imports(text: str) -> str:
    """``from distill... import`` statements (moved modules, moved or renamed names) and the
    attribute uses of a moved name through a module binding (``cli.refuse(...)``)."""
    renames: list[tuple[str, str]] = []   # word renames applied to the whole file afterwards
    extra: dict[tuple[str, str], list[str]] = {}  # (old module, local name) -> import lines to add

    # module bindings: from distill import x [as y]; import distill.x as y
    bindings: list[tuple[int, str, str, str]] = []  # (stmt start, indent, old module, local name)
    for m in _FROM.finditer(text):
        if m.group("mod") == "distill":
            for name, alias in _parse_names(m.group("names"))[0]:
                bindings.append((m.start(), m.group("indent"), f"distill.{name}", alias or name))
    for m in _IMPORT_AS.finditer(text):
        bindings.append((m.start(), m.group("indent"), m.group("mod"), m.group("alias")))
    for start, indent, module, local in bindings:
        for key, new in SYMBOLS.items():
            old_mod, old_name = parent_leaf(key)
            if old_mod != module:
                continue
            new_mod, new_name = parent_leaf(new)
            pattern = rf"(?<![\w.]){re.escape(local)}\.{old_name}\b"
            if re.search(pattern, text) and new_mod != MODULES.get(module, module):
                parent, leaf = parent_leaf(new_mod)
                text = re.sub(pattern, f"{leaf}.{new_name}", text)
                line = f"{indent}from {fresh(parent)} import {leaf}"
                if line not in extra.setdefault((module, local), []):
                    extra[(module, local)].append(line)

    def statement(m: re.Match) -> str:
        indent, module = m.group("indent"), m.group("mod")
        names, comment = _parse_names(m.group("names"))
        rest = text[:m.start()] + text[m.end():]
        groups: dict[str, list[str]] = {}
        changed = False
        more = []
        if module == "distill":
            for name, alias in names:
                more += [x for x in extra.get((f"distill.{name}", alias or name), []) if x not in more]
        for name, alias in names:
            if module == "distill":
                full = f"distill.{name}"
                local = alias or name
                if full in MODULES:
                    changed = True
                    if not re.search(_word(local), rest):
                        continue  # only its moved names were used: the binding goes
                    parent, leaf = parent_leaf(MODULES[full])
                    groups.setdefault(parent, []).append(leaf if leaf == local else f"{leaf} as {local}")
                else:
                    groups.setdefault(module, []).append(name if not alias else f"{name} as {alias}")
                continue
            key = f"{module}.{name}"
            if key in SYMBOLS:
                new_mod, new_name = parent_leaf(SYMBOLS[key])
            else:
                new_mod, new_name = MODULES.get(module, module), name
            if new_mod != module or new_name != name:
                changed = True
            if new_name != name:
                local = alias or name
                clash = re.search(rf"(?m)^\s*(?:def|class)\s+{re.escape(local)}\b", rest)
                if clash:
                    groups.setdefault(new_mod, []).append(f"{new_name} as {local}")
                else:
                    renames.append((local, new_name))
                    groups.setdefault(new_mod, []).append(new_name)
            else:
                groups.setdefault(new_mod, []).append(name if not alias else f"{name} as {alias}")
        if not changed and not more:
            return m.group(0)
        out = _emit(indent, groups, comment)
        if more:
            out = "\n".join(([out] if out else []) + more)
        return out

    text = _FROM.sub(statement, text)
    for m in list(_IMPORT_AS.finditer(text))[::-1]:
        lines = extra.get((m.group("mod"), m.group("alias")))
        if lines:
            text = text[:m.end()] + "\n" + "\n".join(lines) + text[m.end():]
    for old, new in renames:
        text = rename_aligned(text, old, new)
    return _merge_adjacent(text, keep_marks=True)


def rename_aligned(text: str, old: str, new: str) -> str:
    """``old`` -> ``new`` as a word; continuation lines aligned under a call's open parenthesis
    on a renamed line move with it."""
    pattern, delta = re.compile(_word(old)), len(new) - len(old)
    lines, out, shift, depth = text.split("\n"), [], 0, 0
    for line in lines:
        if shift and depth > 0:
            pad = len(line) - len(line.lstrip(" "))
            line = (" " * (pad + shift) + line.lstrip(" ")) if line.strip() and pad + shift >= 0 else line
            depth += line.count("(") - line.count(")")
            if depth <= 0:
                shift = 0
            out.append(line)
            continue
        renamed = pattern.sub(new, line)
        if renamed != line and delta:
            opened = renamed.count("(") - renamed.count(")")
            if opened > 0:
                shift, depth = delta, opened
        out.append(renamed)
    return "\n".join(out)


def _merge_adjacent(text: str, keep_marks: bool = False) -> str:
    """Two one-line ``from M import ...`` statements in a row, same M and indent, become one."""
    simple = re.compile(r"^(?P<indent>[ \t]*)from (?P<mod>\S+) import (?P<names>[\w, ]+)$")
    lines, out = text.split("\n"), []
    for line in lines:
        m, prev = simple.match(line), simple.match(out[-1]) if out else None
        if m and prev and m.group("mod") == prev.group("mod") and m.group("indent") == prev.group("indent") \
                and m.group("mod").lstrip(SENTINEL).startswith("distill"):
            names = [n.strip() for n in prev.group("names").split(",")] + \
                    [n.strip() for n in m.group("names").split(",") if n.strip() not in prev.group("names").split(", ")]
            merged = _emit(m.group("indent"), {m.group("mod").lstrip(SENTINEL): names}, "")
            out[-1] = merged if keep_marks else merged.replace(SENTINEL, "")
            continue
        out.append(line)
    return "\n".join(out)


def dotted_pattern() -> re.Pattern:
    keys = sorted(set(MODULES) | set(SYMBOLS), key=len, reverse=True)
    return re.compile(rf"(?<![\w.\x00])({'|'.join(re.escape(k) for k in keys)})(?!\w)")


def _new_child(key: str, after: str) -> bool:
    """``distill.gate`` in ``distill.gate.checks``: already the new name (an old module whose
    name is now a package's), left alone."""
    children = {parent_leaf(n)[1] for n in list(MODULES.values()) + list(NEW_MODULE_DOCS)
                if parent_leaf(n)[0] == key}
    found = re.match(r"\.(\w+)", after)
    return bool(children and found and found.group(1) in children)


def path_map() -> dict[str, str]:
    paths = {str(path_of(o)): str(path_of(n)) for o, n in MODULES.items()}
    paths.update({f"tests/distill/{name}": f"tests/distill/{wing}/{name}" for name, wing in TESTS.items()})
    return paths


def rewrite_text(text: str, dotted: re.Pattern, paths: dict[str, str], is_python: bool) -> str:
    if is_python or "distill" in text:
        text = rewrite_imports(text)

    def one(m: re.Match) -> str:
        key = m.group(1)
        if key in MODULES and _new_child(key, m.string[m.end():m.end() + 40]):
            return m.group(0)
        return fresh(SYMBOLS.get(key) or MODULES[key])

    text = dotted.sub(one, text)
    path_re = re.compile(r"(?<![\w/:])(" + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
                         + r")(?![\w/])")
    text = path_re.sub(lambda m: paths[m.group(1)], text)
    return text.replace(SENTINEL, "")


def deepen_file_paths(text: str) -> str:
    """A test moved one folder down: what it found beside itself is one level up now."""
    text = re.sub(r"Path\(__file__\)((?:\.resolve\(\))?)\.parent(?![\w\[])", r"Path(__file__)\1.parents[1]", text)
    return re.sub(r"Path\(__file__\)((?:\.resolve\(\))?)\.parents\[(\d+)\]",
                  lambda m: f"Path(__file__){m.group(1)}.parents[{int(m.group(2)) + 1}]", text)


def public_paths(text: str) -> str:
    """Outside distill/, the gate's public names come from the wing: ``from distill.gate import open_gate``."""
    for package, (module, names) in PUBLIC.items():
        if True:
            def short(m: re.Match) -> str:
                parsed, comment = _parse_names(m.group("names"))
                if m.group("mod") != module or not all(n in names for n, _ in parsed):
                    return m.group(0)
                return m.group(0).replace(f"from {module} import", f"from {package} import", 1)
            text = _FROM.sub(short, text)
            for name in names:
                text = re.sub(rf"(?<![\w.]){re.escape(module)}\.{name}\b", f"{package}.{name}", text)
    return text


# -- (3) code that moves between modules ------------------------------------------------------

def _span(source: str, tree: ast.Module, name: str) -> tuple[int, int, ast.stmt]:
    body = tree.body
    for i, node in enumerate(body):
        defined = (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name) \
            or (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)) \
            or (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name)
        if not defined:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) \
                and isinstance(getattr(body[i + 1], "value", None), ast.Constant) \
                and isinstance(body[i + 1].value.value, str):
            end = body[i + 1].end_lineno  # the constant's docstring goes with it
        lines = source.splitlines()
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
        return start, end, node
    raise SystemExit(f"restructure: {name} is not defined at the top of the module")


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _top_imports(tree: ast.Module) -> list[tuple[ast.stmt, str, str]]:
    """(statement, bound name, the line that binds just it) for each module-level import."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__" and node.level == 0:
            for a in node.names:
                out.append((node, a.asname or a.name, f"from {node.module} import {a.name}"
                            + (f" as {a.asname}" if a.asname else "")))
        elif isinstance(node, ast.Import):
            for a in node.names:
                out.append((node, a.asname or a.name.split(".")[0],
                            f"import {a.name}" + (f" as {a.asname}" if a.asname else "")))
    return out


def _bound_at_top(tree: ast.Module) -> set[str]:
    names = {bound for _, bound, _ in _top_imports(tree)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _add_imports(source: str, lines: list[str]) -> str:
    if not lines:
        return source
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    after = imports[-1].end_lineno if imports else (tree.body[0].end_lineno if tree.body and isinstance(
        tree.body[0], ast.Expr) else 0)
    text = source.splitlines(keepends=True)
    last = imports[-1] if imports else None
    last_module = (last.module if isinstance(last, ast.ImportFrom) else last.names[0].name) if last else ""
    ours = ("audit", "distill", "policies")
    head = "\n" if last and (last_module == "__future__" or (last_module.split(".")[0] not in ours
                                                             and lines[0].split()[1].split(".")[0] in ours)) else ""
    tail = "\n" if after < len(text) and text[after].strip() and not text[after].startswith(("from ", "import ")) else ""
    return "".join(text[:after]) + head + "".join(line + "\n" for line in lines) + tail + "".join(text[after:])


def _tidy(source: str) -> str:
    return re.sub(r"\n{4,}", "\n\n\n", source).rstrip("\n") + "\n"


def stranded(key: str, src: Path) -> list[str]:
    """What the code of ``key`` uses from its module (not imported there) that does not move with it."""
    old_mod, name = parent_leaf(key)
    tree = ast.parse(src.read_text())
    node = _span(src.read_text(), tree, name)[2]
    local = _bound_at_top(tree) - {bound for _, bound, _ in _top_imports(tree)} - {name}
    moving_too = {parent_leaf(k)[1] for k in SYMBOLS if parent_leaf(k)[0] == old_mod}
    return sorted(n for n in _used_names(node) & local if n not in moving_too)


def move_symbols() -> list[str]:
    notes = []
    for key, new in SYMBOLS.items():
        old_mod, name = parent_leaf(key)
        new_mod, new_name = parent_leaf(new)
        src_mod = MODULES.get(old_mod, old_mod)
        src = path_of(src_mod)
        if new_mod == src_mod:  # a rename in place: the definition and the module's own uses
            src.write_text(rename_aligned(src.read_text(), name, new_name))
            notes.append(f"renamed {key} -> {new}")
            continue
        source = src.read_text()
        tree = ast.parse(source)
        start, end, node = _span(source, tree, name)
        lines = source.splitlines(keepends=True)
        code = "".join(lines[start - 1:end])
        used = _used_names(node)
        needed = [line for _, bound, line in _top_imports(tree) if bound in used]
        if new_name != name:
            code = re.sub(_word(name), new_name, code)
        rest = "".join(lines[:start - 1] + lines[end:])
        rest_tree = ast.parse(rest)
        if name in _used_names(rest_tree):
            rest = _merge_adjacent(_add_imports(rest, [f"from {new_mod} import {new_name}"
                                                       + (f" as {name}" if new_name != name else "")]))
        src.write_text(_tidy(rest))
        dst = path_of(new_mod)
        if dst.exists():
            target = dst.read_text()
            have = _bound_at_top(ast.parse(target))
            target = _add_imports(target, [line for line in needed
                                           if line.rsplit(" ", 1)[-1] not in have and line not in target])
            if isinstance(node, (ast.Assign, ast.AnnAssign)):  # a constant: before anything uses it
                target = _add_imports(target, ["\n" + code.rstrip("\n")])
            else:
                target = target.rstrip("\n") + "\n\n\n" + code
            dst.write_text(_tidy(target))
        else:
            doc = NEW_MODULE_DOCS.get(new_mod, f"Moved from {old_mod}.")
            dst.write_text(f'"""{doc}"""\n\nfrom __future__ import annotations\n\n' + "\n".join(needed)
                           + "\n\n\n" + code)
            dst.write_text(_tidy(dst.read_text()))
        notes.append(f"moved {key} -> {new}")
    return notes


def drop_self_imports(files: list[Path]) -> None:
    """``from M import x`` inside M itself (a moved name landing where it was imported from),
    and function-level imports of what the module already binds at its top."""
    for f in files:
        module = ".".join(f.with_suffix("").parts)
        source = f.read_text()
        tree = ast.parse(source)
        top = _bound_at_top(tree)
        top_from = {(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        drop = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.lineno != node.end_lineno:
                continue
            if node.module == module and all(a.asname is None and a.name in top for a in node.names):
                drop.append(node.lineno)
            elif node not in tree.body and all(a.asname is None and (node.module, a.name) in top_from
                                                for a in node.names):
                drop.append(node.lineno)
        if drop:
            lines = source.splitlines(keepends=True)
            for n in sorted(drop, reverse=True):
                del lines[n - 1]
                if n - 1 < len(lines) and not lines[n - 1].strip() and n - 2 >= 0 and \
                        lines[n - 2].rstrip().endswith(('"""', ":")):
                    del lines[n - 1]
            f.write_text(_tidy("".join(lines)))


# -- (4) the wings ----------------------------------------------------------------------------

def write_wings() -> None:
    for package, (doc, imports) in WINGS.items():
        init = Path(*package.split(".")) / "__init__.py"
        allowed = ", ".join(imports) if imports else "nothing else of distill"
        text = f'"""{textwrap.fill(doc, 96)}\n\nImports: {allowed}; and audit."""\n'
        if init.exists():
            body = init.read_text()
            if ast.get_docstring(ast.parse(body)) is not None:
                _, old, body = body.split('"""', 2)
                text = f'"""{old.rstrip()}\n\nImports: {allowed}; and audit."""\n'
            text = text + ("\n" + body.lstrip("\n") if body.strip() else "")
        if package in PUBLIC:
            module, names = PUBLIC[package]
            text += (f"\nfrom {module} import {', '.join(names)}\n\n"
                     f"__all__ = [{', '.join(repr(n) for n in names)}]\n")
        init.write_text(text)
        git("add", str(init))
    Path("distill/__init__.py").write_text(TOP_DOC)


# -- (5) after --------------------------------------------------------------------------------

def leftovers(files: list[Path]) -> list[str]:
    """Files that do not compile, and old names still written somewhere (of modules whose old
    name is not a new package's: ``distill.gated``, ``distill/hf.py``...)."""
    gone = [old for old in MODULES if old not in WINGS]
    names = re.compile(r"(?<![\w.:/])(" + "|".join(re.escape(o) for o in sorted(gone, key=len, reverse=True))
                       + r"|" + "|".join(re.escape(str(path_of(o))) for o in gone) + r")(?![\w/])")
    found = []
    for f in files:
        if not f.exists() or f.suffix not in TEXT_SUFFIXES or f == SELF:
            continue
        text = f.read_text()
        if f.suffix == ".py":
            try:
                compile(text, str(f), "exec")
            except SyntaxError as exc:
                found.append(f"{f}:{exc.lineno}: does not compile: {exc.msg}")
        for m in names.finditer(text):
            found.append(f"{f}:{text.count(chr(10), 0, m.start()) + 1}: still says {m.group(1)}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check the tables against the tree; change nothing")
    parser.add_argument("--allow-dirty", action="store_true", help="run on a tree with uncommitted changes")
    args = parser.parse_args(argv)
    if not Path("distill").is_dir() or not Path(".git").exists() and not Path(".git").is_file():
        die("run from the repository root")
    check_tree(args.allow_dirty)
    if args.check:
        for old, new in MODULES.items():
            print(f"{path_of(old)} -> {path_of(new)}")
        for name, wing in TESTS.items():
            print(f"tests/distill/{name} -> tests/distill/{wing}/{name}")
        for old, new in SYMBOLS.items():
            print(f"{old} -> {new}")
        return 0
    moved = move_files()
    dotted, paths = dotted_pattern(), path_map()
    files = [Path(p) for p in git("ls-files").splitlines()]
    files = [f for f in files if f.suffix in TEXT_SUFFIXES and f != SELF and f.exists()]
    deeper = set(moved.values()) - {path_of(n) for n in MODULES.values()}
    for f in files:
        text = f.read_text()
        new = rewrite_text(text, dotted, paths, f.suffix == ".py")
        if f in deeper:
            new = deepen_file_paths(new)
        if not f.parts[0] == "distill":
            new = public_paths(new)
        if new != text:
            f.write_text(new)
    for name, old, new in FIXUPS:
        f = Path(name)
        if f.exists() and old in f.read_text():
            f.write_text(f.read_text().replace(old, new))
        else:
            print(f"restructure: fixup not applied (text not found): {name}: {old[:60]}", file=sys.stderr)
    notes = move_symbols()
    for new_mod in {parent_leaf(n)[0] for n in SYMBOLS.values()}:
        if path_of(new_mod).exists():
            git("add", str(path_of(new_mod)))
    write_wings()
    py = [f for f in Path("distill").rglob("*.py")]
    drop_self_imports(py)
    git("add", "-A", *[p for p in ("distill", "tests", "docs", "examples", "bench", "README.md", "pyproject.toml",
                                   "audit") if Path(p).exists()])
    for note in notes:
        print(note)
    print(f"moved {len(moved)} files; rewrote references in {len(files)} tracked text files")
    problems = leftovers([Path(p) for p in git("ls-files").splitlines()])
    if problems:
        print("check these by hand:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    print("next: pip install -e . (the flopgate.commands entry points name the new modules), then "
          "python -m pytest tests/test_import_graph.py and the tests; commit")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
