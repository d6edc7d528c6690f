"""Run Python code in a fresh interpreter, as a user with or without this package would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# A user without the package: also drop an editable install of this checkout, if any, and fail if it still imports.
WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys
    def _foreign(hook):
        return "editable" in getattr(hook, "__module__", "") and "svitt" in getattr(hook, "__module__", "")
    sys.meta_path[:] = [finder for finder in sys.meta_path if not _foreign(finder)]
    sys.path_hooks[:] = [hook for hook in sys.path_hooks if not _foreign(hook)]
    sys.path_importer_cache.clear()
    try:
        import modeling_svitt
        sys.exit("modeling_svitt must not be importable here")
    except ImportError:
        pass
    """
)


def run_python(
    script: str, *args: str, env: dict[str, str], cwd: Path, with_package: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -c script args...` with `env` added to this process's environment (and no PYTHONPATH without the
    package)."""
    env = {**os.environ, **env}
    script = textwrap.dedent(script)
    if not with_package:
        env.pop("PYTHONPATH", None)
        script = WITHOUT_PACKAGE + script
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
