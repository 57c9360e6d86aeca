"""Check a `tasks_provision --format terraform` document against the hashicorp/google schema.

`terraform validate` needs the provider binary from the Terraform registry. Without it, the
provider's schema is still published in @cdktf/provider-google, generated from the provider
(its package.json says which version); this reads the argument names and value kinds of the
three resources from there and reports every argument of the document the provider lacks:

    npm pack @cdktf/provider-google@16.12.1 && tar xzf cdktf-provider-google-16.12.1.tgz
    python manage.py tasks_provision --format terraform > gyrinx_tasks.tf.json
    python scripts/check_terraform_schema.py package/lib gyrinx_tasks.tf.json

It exits 1 when anything is wrong. A development aid, not part of the test suite.
"""

import json
import re
import sys
from pathlib import Path

FOLDERS = {"google_pubsub_topic": "pubsub-topic",
           "google_pubsub_subscription": "pubsub-subscription",
           "google_cloud_scheduler_job": "cloud-scheduler-job"}
# One argument in the generated *ToHclTerraform functions and synthesizeHclAttributes().
ENTRY = re.compile(r'(\w+): \{\s*value: (.*?),\s*isBlock: (\w+),\s*type: "(\w+)",'
                   r'\s*storageClassType: "(\w+)"', re.S)
Schema = dict[str, tuple[str | None, str]]  # argument -> (nested block's function, storage)


def arguments(text: str) -> Schema:
    found = {}
    for name, value, _block, _kind, storage in ENTRY.findall(text):
        nested = re.findall(r"(?<![.\w])(\w+ToHclTerraform)", value)
        found[name] = (nested[0] if nested else None, storage)
    return found


def schema(lib: Path, resource: str) -> tuple[Schema, dict[str, Schema]]:
    text = (lib / FOLDERS[resource] / "index.js").read_text()
    blocks = {name: arguments(body) for name, body in re.findall(
        r"function (\w+ToHclTerraform)\(struct\) \{(.*?)\n\}", text, re.S)}
    top = re.search(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}", text, re.S)
    if top is None:
        raise SystemExit(f"No synthesizeHclAttributes() in {FOLDERS[resource]}: not a cdktf "
                         "provider package this script understands.")
    return arguments(top.group(1)), blocks


def check(body: dict, args: Schema, blocks: dict[str, Schema], where: str) -> list[str]:
    problems = []
    for key, value in body.items():
        if key == "//":
            continue
        if key not in args:
            problems.append(f"{where}.{key}: the provider has no such argument")
            continue
        nested, storage = args[key]
        if nested:
            if isinstance(value, dict):
                problems += check(value, blocks[nested], blocks, f"{where}.{key}")
            else:
                problems.append(f"{where}.{key}: a block, given {value!r}")
        elif storage == "string" and not isinstance(value, str):
            problems.append(f"{where}.{key}: a string, given {value!r}")
        elif storage == "number" and not isinstance(value, int):
            problems.append(f"{where}.{key}: a number, given {value!r}")
        elif storage.endswith("Map") and not isinstance(value, dict):
            problems.append(f"{where}.{key}: a map, given {value!r}")
    return problems


def main(lib: str, document: str) -> int:
    resources = json.loads(Path(document).read_text())["resource"]
    problems, count = [], 0
    for resource, bodies in resources.items():
        args, blocks = schema(Path(lib), resource)
        for label, body in bodies.items():
            problems += check(body, args, blocks, f"{resource}.{label}")
            count += 1
    print("\n".join(problems) or f"All {count} resources use only the provider's arguments.")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
