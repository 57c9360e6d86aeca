"""A Django project other than sample_site, set up only by following README's install steps.

The wheel is built and installed into a fresh virtualenv, `django-admin startproject` makes a
project, and the README's code blocks (settings.py, urls.py, tasks.py, task_registry.py) are
applied to it literally. Then, as the README's emulator section says: tasks_provision against
the emulator, runserver, and a task from .enqueue() reaches SUCCESSFUL, read with get_result().
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import free_port

# One worker builds the wheel and the fresh site once for the whole module (pytest-xdist).
pytestmark = [pytest.mark.emulator, pytest.mark.xdist_group("fresh_project")]
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
    # No --wheel: the sdist is built first and the wheel from it, as PyPI users' installers
    # from the sdist and `python -m build` do.
    run([str(UV), "build", "--out-dir", str(out), str(ROOT)], cwd=ROOT)
    [built] = out.glob("gyrinx_tasks-*.whl")
    return built


def test_wheel_ships_templates_static_and_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, packaged in [
        (ROOT / "templates", "gyrinx_tasks/templates"),
        (ROOT / "static", "gyrinx_tasks/static"),
        (ROOT / "gyrinx_tasks" / "migrations", "gyrinx_tasks/migrations"),
    ]:
        files = [f for f in folder.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        assert files, f"{folder} is empty"
        missing = {f"{packaged}/{f.relative_to(folder).as_posix()}" for f in files} - names
        assert not missing, f"the wheel lacks {sorted(missing)}"
    assert "gyrinx_tasks/py.typed" in names


@pytest.fixture(scope="module")
def fresh_site(wheel, tmp_path_factory) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """The wheel in a fresh virtualenv and a startproject site set up by README's blocks.

    Yields the site folder, the venv's python and the environment to run it with.
    """
    blocks = readme_blocks()
    assert {"settings.py", "urls.py", "myproject/tasks.py", "myproject/task_registry.py"} <= set(
        blocks
    )
    tmp_path = tmp_path_factory.mktemp("fresh")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "GYRINX_"))}
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
    env["DJANGO_SETTINGS_MODULE"] = "myproject.settings"
    run([python, "manage.py", "migrate", "--noinput"], cwd=site, env=env)
    yield site, python, env
    shutil.rmtree(venv, ignore_errors=True)


# Run in the fresh site: Django's test client renders admin pages as a superuser and reports
# which template files and static file were used, so the test can see they came from the wheel.
RENDER_ADMIN = """
import json
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
client = Client()
client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
pages = {}
for url in ("/admin/gyrinx_tasks/", "/admin/gyrinx_tasks/taskexecution/",
            "/admin/gyrinx_tasks/killswitch/"):
    response = client.get(url)
    pages[url] = {
        "status": response.status_code,
        "templates": sorted({t.origin.name for t in response.templates
                             if (t.name or "").startswith("admin/gyrinx_tasks/")}),
        "html": response.content.decode(),
    }
print(json.dumps({"pages": pages, "css": finders.find("gyrinx_tasks/admin.css")}))
"""


def test_wheel_renders_the_admin_from_its_own_templates_and_static(fresh_site):
    site, python, env = fresh_site
    found = json.loads(run([python, "manage.py", "shell", "-v", "0", "-c", RENDER_ADMIN],
                           cwd=site, env=env))
    installed = Path(run([python, "-c", "import gyrinx_tasks; print(gyrinx_tasks.__file__)"],
                         cwd=site, env=env).strip()).parent
    assert installed.is_relative_to(Path(python).parent.parent), "not the wheel's copy"
    assert found["css"] == str(installed / "static" / "gyrinx_tasks" / "admin.css")
    for url, page in found["pages"].items():
        assert page["status"] == 200, f"{url}: {page['status']}\n{page['html'][:2000]}"
        assert page["templates"], f"{url} used none of the app's templates"
        for origin in page["templates"]:
            assert Path(origin).is_relative_to(installed / "templates"), origin
        assert "gyrinx_tasks/admin.css" in page["html"]


def test_readme_install_steps_run_a_task_through_the_emulator(fresh_site, pubsub_emulator):
    site, python, env = fresh_site
    port = free_port()
    env = dict(
        env,
        PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
        TASKS_VERIFY_OIDC="False",
        TASKS_ENVIRONMENT="fresh" + secrets.token_hex(3),
    )
    manage = [python, "manage.py"]
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
