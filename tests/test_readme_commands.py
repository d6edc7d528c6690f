import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_exactly_the_readme_test_command():
    setup_and_main, setup_and_tests = readme_commands()
    assert "pytest" in setup_and_tests and "pytest" not in setup_and_main
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert setup_and_tests in ci_commands


def test_main_command_points_at_files_that_exist():
    setup_and_main, _ = readme_commands()
    script = setup_and_main.split("&&")[-1].split()[-1]
    assert (ROOT / script).is_file(), script


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_both_commands_install_the_pinned_versions_of_every_dependency_and_test_tool():
    for command in readme_commands():
        assert 'pip install -e ".[dev]" -c constraints.txt' in command, command
    setup = (ROOT / "setup.cfg").read_text()
    requirements = re.findall(r"^install_requires =\n((?:    .+\n)+)", setup, flags=re.M)[0]
    extras = "".join(re.findall(r"^(?:training|dev) =\n((?:    .+\n)+)", setup, flags=re.M)).replace("%(training)s", "")
    constraints = (ROOT / "constraints.txt").read_text()
    pinned = {
        re.sub(r"[-_.]+", "-", name).lower()
        for name in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+$", constraints, flags=re.M)
    }
    declared = _requirement_names(requirements + extras)
    assert declared and not declared - pinned, f"not pinned in constraints.txt: {sorted(declared - pinned)}"
    assert "torch" in pinned and "pytest" in pinned
