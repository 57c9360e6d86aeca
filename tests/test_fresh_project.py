"""A Django project other than sample_site, set up only by following README's install steps.

The wheel is built and installed into a fresh virtualenv, `django-admin startproject` makes a
project, and the README's code blocks (settings.py, urls.py, tasks.py, task_registry.py) are
applied to it literally. Then, as the README's emulator section says: tasks_provision against
the emulator, runserver, and a task from .enqueue() reaches SUCCESSFUL, read with get_result().
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.infra import free_port

pytestmark = pytest.mark.emulator
ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".cache" / "tools" / "bin" / "uv"


def readme_blocks() -> dict[str, str]:
    """README's python blocks of the install section, keyed by the file named on line one."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install in your project", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for body in re.findall(r"```python\n(.*?)```", section, re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and first.endswith(".py"):
            blocks[first[2:].strip()] = rest
    return blocks


def run(args, cwd, env=None, timeout=300):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    assert UV.exists(), "run scripts/bootstrap.sh first: it installs uv into .cache/tools"
    out = tmp_path_factory.mktemp("dist")
    run([str(UV), "build", "--wheel", "--out-dir", str(out), str(ROOT)], cwd=ROOT)
    [built] = out.glob("gyrinx_tasks-*.whl")
    return built


def test_wheel_ships_templates_and_static(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    templates = [n for n in names if n.startswith("gyrinx_tasks/templates/")]
    static = [n for n in names if n.startswith("gyrinx_tasks/static/")]
    assert templates and static
    assert "gyrinx_tasks/migrations/0001_initial.py" in names
    assert "gyrinx_tasks/py.typed" in names


def test_readme_install_steps_run_a_task_through_the_emulator(wheel, tmp_path, pubsub_emulator):
    blocks = readme_blocks()
    assert {"settings.py", "urls.py", "myproject/tasks.py", "myproject/task_registry.py"} <= set(
        blocks
    )

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=tmp_path, env=env)
    python = str(venv / "bin" / "python")
    run(
        [str(UV), "pip", "install", "--quiet", "--python", python, str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    run(
        [str(venv / "bin" / "django-admin"), "startproject", "myproject", "site"],
        cwd=tmp_path,
        env=env,
    )
    site = tmp_path / "site"
    for name, body in blocks.items():
        target = site / "myproject" / name.removeprefix("myproject/")
        mode = "a" if target.exists() else "w"  # settings.py and urls.py get the lines added
        with target.open(mode) as f:
            f.write("\n" + body)

    port = free_port()
    env.update(
        PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
        TASKS_VERIFY_OIDC="False",
        TASKS_ENVIRONMENT="fresh" + secrets.token_hex(3),
        DJANGO_SETTINGS_MODULE="myproject.settings",
    )
    manage = [python, "manage.py"]
    run([*manage, "migrate", "--noinput"], cwd=site, env=env)
    provision = run(
        [*manage, "tasks_provision", "--push-endpoint", f"http://127.0.0.1:{port}/tasks/pubsub/"],
        cwd=site,
        env=env,
    )
    assert "send_welcome_email" in provision

    server = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/pubsub/", timeout=2)
            except urllib.error.HTTPError:
                break  # 405 for GET: the server is up
            except OSError:
                assert time.monotonic() < deadline, "runserver did not start"
                time.sleep(0.5)
        result_id = run(
            [
                *manage,
                "shell",
                "-v",
                "0",
                "-c",
                "from myproject.tasks import send_welcome_email as t; "
                "print(t.enqueue(user_id='42').id)",
            ],
            cwd=site,
            env=env,
        ).strip()
        read = (
            "from myproject.tasks import send_welcome_email as t; "
            f"r = t.get_result({result_id!r}); print(r.status, r.return_value)"
        )
        deadline = time.monotonic() + 60
        while (
            out := run([*manage, "shell", "-v", "0", "-c", read], cwd=site, env=env).strip()
        ) != ("SUCCESSFUL welcome email sent to user 42"):
            assert time.monotonic() < deadline, f"the task did not succeed: {out}"
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=10)
    shutil.rmtree(venv, ignore_errors=True)
