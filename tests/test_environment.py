"""environment.yml (conda users) must pin exactly what the Makefile installs."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pip == reqs
