"""The container files, checked without a Docker engine: docker-compose.yml, the Dockerfile,
the entrypoint's choice of model, and that the documented configuration matches Settings.
"""

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "docker-entrypoint"
MOCK_PORT = 8100
MOCK_COMMAND = ["python", "-m", "mock_openai", "--host", "0.0.0.0", "--port", str(MOCK_PORT)]
COMMANDS = {
    "api": ["python", "-m", "services.api"],
    "responder": ["python", "-m", "services.responder"],
    "mock-model": MOCK_COMMAND,
}
APP_SERVICES = ("api", "responder")
IMAGE_PACKAGES = ("shared", "services", "mock_openai")  # what the Dockerfile copies
# Read by scripts/docker-entrypoint, not by Settings: where the offline mock is.
ENTRYPOINT_VARIABLES = {"MOCK_MODEL_URL"}
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else list(value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.split("=", 1) for item in value)
    return {str(key): str(item) for key, item in value.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_the_five_services(services: dict[str, Any]) -> None:
    assert set(services) == {"mongodb", "rabbitmq", "mock-model", "api", "responder"}
    assert services["mongodb"]["image"].startswith("mongo:8")
    assert re.fullmatch(r"rabbitmq:(3|4)(\.\d+)*-management", services["rabbitmq"]["image"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands(services: dict[str, Any], name: str) -> None:
    assert command(services[name]) == COMMANDS[name]


def test_our_services_run_the_image_built_here(services: dict[str, Any]) -> None:
    images = {services[name].get("image") for name in COMMANDS}
    assert len(images) == 1, f"api, responder and mock-model should share one image: {images}"
    for name in COMMANDS:
        assert services[name]["pull_policy"] == "build", f"{name} must not pull {images}"
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file()


def test_ports(services: dict[str, Any]) -> None:
    assert services["api"]["ports"] == ["8000:8000"]
    env = environment(services["api"])
    assert env["API_HOST"] == "0.0.0.0"
    assert env["API_PORT"] == "8000"
    assert "ports" not in services["responder"]
    assert "ports" not in services["mock-model"]  # reached inside the compose network only


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_names_are_settings(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    unknown = set(env) - SETTINGS_VARIABLES - ENTRYPOINT_VARIABLES
    assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
    assert env["MONGODB_URL"] == "mongodb://mongodb:27017"
    assert env["RABBITMQ_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    for passed_through in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        assert env[passed_through] == f"${{{passed_through}:-}}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_offline_mock_is_the_mock_model_service(services: dict[str, Any], name: str) -> None:
    assert environment(services[name])["MOCK_MODEL_URL"] == f"http://mock-model:{MOCK_PORT}/v1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mongodb", "mongosh"),
        ("rabbitmq", "rabbitmq-diagnostics -q ping"),
        ("mock-model", f"127.0.0.1:{MOCK_PORT}/healthz"),
        ("api", "127.0.0.1:8000/readyz"),
    ],
)
def test_healthchecks(services: dict[str, Any], name: str, expected: str) -> None:
    text = healthcheck_text(services[name])
    assert expected in text
    if name == "mongodb":
        assert "ping" in text


@pytest.mark.parametrize(
    ("name", "needs"),
    [("api", {"mongodb", "rabbitmq"}), ("responder", {"mongodb", "rabbitmq", "mock-model"})],
)
def test_depends_on_healthy(services: dict[str, Any], name: str, needs: set[str]) -> None:
    depends_on = services[name]["depends_on"]
    assert set(depends_on) == needs
    for dependency, condition in depends_on.items():
        assert condition == {"condition": "service_healthy"}, dependency
        assert "healthcheck" in services[dependency], dependency


def dockerfile_instructions() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


def test_dockerfile_cmd_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    assert instructions["FROM"] == ["python:3.11-slim"]
    assert yaml.safe_load(instructions["CMD"][-1]) == COMMANDS["api"]
    entrypoint = yaml.safe_load(instructions["ENTRYPOINT"][-1])
    assert isinstance(entrypoint, list), "exec form, so the CMD and compose commands are its args"
    assert len(entrypoint) == 1
    copied = [line.split() for line in instructions["COPY"]]
    assert ["scripts/docker-entrypoint", f"/usr/local/bin/{entrypoint[0]}"] in copied
    assert ENTRYPOINT.read_text().rstrip().endswith('exec "$@"')
    for package in IMAGE_PACKAGES:
        assert [package, f"./{package}"] in copied, f"the image lacks {package}"


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_image_code_imports_only_runtime_dependencies() -> None:
    """The image installs [project].dependencies only: the dev extras are not there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {distribution_name(item) for item in pyproject["project"]["dependencies"]}
    providers = packages_distributions()
    missing = set()
    for path in (file for package in IMAGE_PACKAGES for file in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {module.split(".")[0] for module in modules}:
                if top in sys.stdlib_module_names or top in IMAGE_PACKAGES:
                    continue
                if not {distribution_name(d) for d in providers.get(top, [])} & runtime:
                    missing.add(f"{top} (imported by {path.relative_to(ROOT)})")
    assert not missing, f"not in [project].dependencies: {sorted(missing)}"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1 :], "allow-list: ignore everything, then name what goes in"
    assert "!.env" not in lines
    assert "!scripts/docker-entrypoint" in lines


def run_entrypoint(**env: str) -> dict[str, str]:
    """What the entrypoint hands to the service, for the given environment."""
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "env"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


COMPOSE_DEFAULTS = {
    "OPENAI_API_KEY": "",
    "OPENAI_BASE_URL": "",
    "OPENAI_MODEL": "",
    "MOCK_MODEL_URL": "http://mock-model:8100/v1",
}


def test_entrypoint_uses_the_mock_when_no_model_is_configured() -> None:
    env = run_entrypoint(**COMPOSE_DEFAULTS)
    assert env["OPENAI_BASE_URL"] == "http://mock-model:8100/v1"
    assert env["OPENAI_MODEL"] == "mock-model"
    assert "OPENAI_API_KEY" not in env  # empty would reach the client as a real key


def test_entrypoint_with_a_key_uses_openai() -> None:
    env = run_entrypoint(**{**COMPOSE_DEFAULTS, "OPENAI_API_KEY": "sk-test"})
    assert env["OPENAI_API_KEY"] == "sk-test"
    assert "OPENAI_BASE_URL" not in env  # the client's default: the OpenAI API
    assert "OPENAI_MODEL" not in env  # Settings' default


def test_entrypoint_with_a_base_url_uses_that_server() -> None:
    server = {"OPENAI_BASE_URL": "http://ollama:11434/v1", "OPENAI_MODEL": "llama3.2"}
    env = run_entrypoint(**{**COMPOSE_DEFAULTS, **server})
    assert {key: env[key] for key in server} == server
    assert "OPENAI_API_KEY" not in env


def test_entrypoint_without_a_mock_changes_nothing() -> None:
    assert "OPENAI_BASE_URL" not in run_entrypoint()


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    assigned = dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE))
    assert set(assigned) == SETTINGS_VARIABLES
    for name, field in Settings.model_fields.items():
        if field.default is not None:
            value = assigned[name.upper()].strip('"')
            assert type(field.default)(value) == field.default, name


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", readme, flags=re.MULTILINE))
    assert table == SETTINGS_VARIABLES


def test_docker_compose_config_accepts_the_file() -> None:
    """The Compose CLI's own validation, which needs no Docker engine: run where it exists."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin: `docker compose config` not run")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    result = subprocess.run(
        [docker, "compose", "--file", "docker-compose.yml", "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"mongodb", "rabbitmq", "mock-model", "api", "responder"}
    assert config["services"]["api"]["command"] == COMMANDS["api"]
