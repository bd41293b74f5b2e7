"""The README opens with the two set-up commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import re


def _code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_two_setup_commands(repo_root):
    text = (repo_root / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = _code_blocks(head)
    assert len(blocks) == 2, "the README must open with exactly two set-up commands"
    run_cmd, test_cmd = blocks
    for cmd in blocks:
        assert "\n" not in cmd, "each set-up command is one line a newcomer copies"
        assert "pip install torch==2.13.0" in cmd, "torch's CPU build must be installed before the project"
        assert cmd.index("torch==2.13.0") < cmd.index("pip install -e")
    assert run_cmd.endswith("rayspace run")
    assert "pytest" in test_cmd


def test_ci_runs_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    test_cmd = _code_blocks(readme.split("\n## ", 1)[0])[1]
    tail = test_cmd[test_cmd.index("pip install -e"):]
    ci = (repo_root / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert "torch==2.13.0" in ci
    assert tail in ci.splitlines(), f"CI must run the README's test command: {tail!r}"


def test_readme_commands_exist_in_the_cli(repo_root):
    """Every `rayspace <command>` the README shows is a real subcommand."""
    from workloads.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    known = set(sub.choices)
    shown = set(re.findall(r"(?m)(?:^\s*|`|\$ |&& |\| |\$\()rayspace ([a-z][a-z-]+)", (repo_root / "README.md").read_text()))
    assert shown, "the README shows no rayspace command"
    assert shown <= known, f"README mentions unknown commands: {sorted(shown - known)}"


def test_readme_command_lines_parse(repo_root):
    """Each `rayspace ...` line in the README's code blocks is accepted by the real argument parser."""
    import shlex

    from workloads.cli import build_parser

    readme = (repo_root / "README.md").read_text()
    lines = []
    for block in _code_blocks(readme):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("rayspace ") and "$(" not in line and "|" not in line and "&&" not in line:
                lines.append(line.replace("<", "").replace(">", ""))
    assert len(lines) >= 20, lines
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse exits on an unknown flag or subcommand
            raise AssertionError(f"README command does not parse: {line}") from e
        assert callable(args.func), line
