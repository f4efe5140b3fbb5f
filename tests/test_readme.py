"""README snippets are executed, and CI runs exactly the README's test command."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_snippets_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    namespaces = []
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        namespaces.append(namespace)
    api = next(ns for ns in namespaces if "report" in ns)
    assert api["report"].row("fp16")["metrics"]["compression_rate"] > 1.8


def test_readme_has_exactly_two_setup_commands_and_ci_uses_the_test_one() -> None:
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert len(bash_blocks) == 2
    assert bash_blocks[0].strip().endswith("dwindle demo")
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"cmd=\$\((.*)\)\n", script).group(1)
    cmd = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True).stdout
    assert cmd.strip() == bash_blocks[1].strip()
    assert "pytest" in cmd
