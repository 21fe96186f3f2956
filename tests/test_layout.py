"""The test files mirror the package layout: ``tests/test_<module>.py`` for ``tuckerflow/<module>``.

A file is named after the module or subpackage it tests, dotted path with ``_`` for ``.``
(``test_integrate_parallel_bug.py`` for ``tuckerflow/integrate/parallel_bug.py``,
``test_geometry.py`` for the subpackage), optionally followed by a topic
(``test_cli_resume.py``); a private module is named without its underscore
(``test_host_reads.py`` for ``tuckerflow/_host.py``). Files about the package as a whole are
listed in ``CROSS_CUTTING`` with the reason.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tuckerflow"
TESTS = ROOT / "tests"

CROSS_CUTTING = {
    "test_fuzz.py": "the bad-input fuzz of the whole public API",
    "test_gpu_check.py": "backends/gpu_check.py, the `make gpu-check` driver outside the package",
    "test_import.py": "what `import tuckerflow` loads",
    "test_layout.py": "this convention",
    "test_precision.py": "rank decisions of optimizer and layers together in float32/bf16/float64",
}


def module_names(package=PACKAGE):
    """``"a_b"`` for every module ``tuckerflow/a/b.py`` and subpackage ``tuckerflow/a/b/``."""
    names = set()
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.add("_".join(p.lstrip("_") for p in parts))
    return names


def misplaced(files, modules):
    """The ``test_*.py`` names in ``files`` that name no module and are not cross-cutting."""
    out = []
    for name in files:
        stem = name.removeprefix("test_").removesuffix(".py")
        if name in CROSS_CUTTING:
            continue
        if not any(stem == m or stem.startswith(m + "_") for m in modules):
            out.append(name)
    return sorted(out)


def test_every_test_file_names_a_module_or_is_cross_cutting():
    files = [p.name for p in TESTS.glob("test_*.py")]
    assert misplaced(files, module_names()) == []
    # every exception still exists (a renamed or removed file leaves no stale entry)
    assert set(CROSS_CUTTING) <= set(files)


def test_the_rule_rejects_a_file_for_no_module():
    modules = module_names()
    assert {"integrate_parallel_bug", "geometry", "host", "cli"} <= modules
    files = ["test_foo.py", "test_integrate.py", "test_integrate_bug.py", "test_cli_resume.py"]
    files += ["test_integrates.py", "test_bug.py", "test_fuzz.py"]
    assert misplaced(files, modules) == ["test_bug.py", "test_foo.py", "test_integrates.py"]
