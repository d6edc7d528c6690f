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
