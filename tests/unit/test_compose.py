"""The container files, checked without a Docker engine: docker-compose.yml (scaled out: two
APIs behind a proxy, two responders, health checks, restart policies, limits, Prometheus), its
configuration files in deploy/, the Dockerfile, the entrypoint's choice of model, and that the
documented configuration matches Settings.
"""

import ast
import json
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
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.api import metrics as api_metrics
from services.responder import metrics as responder_metrics
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICE_METRICS = (api_metrics, responder_metrics)
"""Imported so that their metrics are in prometheus_client's REGISTRY."""
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
SERVICES = {
    "mongodb",
    "rabbitmq",
    "mock-model",
    "api",
    "proxy",
    "responder",
    "prometheus",
    "grafana",
}
MONITORING = {"prometheus", "grafana"}  # started only with `--profile monitoring`
REPLICAS = {"api": 2, "responder": 2}
API_PORT = 8000
PUBLISHED = {  # every port the stack publishes on the host: one for the whole API
    "proxy": ["8000:8000"],
    "rabbitmq": ["127.0.0.1:15672:15672"],
    "prometheus": ["127.0.0.1:9090:9090"],
    "grafana": ["127.0.0.1:3000:3000"],
}
HEALTHCHECKS = {
    "mongodb": "mongosh",
    "rabbitmq": "rabbitmq-diagnostics -q ping",
    "mock-model": f"127.0.0.1:{MOCK_PORT}/healthz",
    "api": f"127.0.0.1:{API_PORT}/readyz",
    "proxy": f"127.0.0.1:{API_PORT}/proxy-health",
    "responder": "127.0.0.1:9464/metrics",
    "prometheus": "127.0.0.1:9090/-/ready",
    "grafana": "127.0.0.1:3000/api/health",
}
DEPENDENCIES = {
    "api": {"mongodb", "rabbitmq"},
    "responder": {"mongodb", "rabbitmq", "mock-model"},
    "proxy": {"api"},
    "grafana": {"prometheus"},
}
DEV_SECRET_DEFAULT = re.compile(r"^\$\{AUTH_JWT_SECRET:?-(?P<secret>.+)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = compose["services"]
    return services


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


def test_the_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES
    assert services["mongodb"]["image"].startswith("mongo:8")
    # RabbitMQ 4: quorum queues with delivery limits, as shared/broker.py declares chat-message.
    assert re.fullmatch(r"rabbitmq:4(\.\d+)*-management", services["rabbitmq"]["image"])
    assert services["proxy"]["image"].startswith("nginx:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")


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


@pytest.mark.parametrize(("name", "replicas"), sorted(REPLICAS.items()))
def test_replicas(services: dict[str, Any], name: str, replicas: int) -> None:
    assert services[name]["deploy"]["replicas"] == replicas
    assert "container_name" not in services[name], "a fixed name allows one replica only"


def test_one_published_port_for_the_api_behind_the_proxy(services: dict[str, Any]) -> None:
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == PUBLISHED
    env = environment(services["api"])
    assert env["API_HOST"] == "0.0.0.0"
    assert env["API_PORT"] == str(API_PORT)
    assert [str(port) for port in services["api"]["expose"]] == [str(API_PORT)]


def nginx_conf(services: dict[str, Any]) -> str:
    mounts: dict[str, str] = {
        volume.split(":")[1]: volume.split(":")[0] for volume in services["proxy"]["volumes"]
    }
    source = ROOT / mounts["/etc/nginx/conf.d/default.conf"]
    return source.read_text()


def nginx_directives(text: str) -> list[list[str]]:
    """Each directive of an nginx file as its words, comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    return [statement.split() for statement in re.split(r"[;{}]", text) if statement.strip()]


def test_the_proxy_passes_websockets_to_every_api_replica(services: dict[str, Any]) -> None:
    directives = nginx_directives(nginx_conf(services))
    assert ["listen", str(API_PORT)] in directives
    assert ["set", "$api", f"http://api:{API_PORT}"] in directives
    assert ["resolver", "127.0.0.11", "valid=10s", "ipv6=off"] in directives, "follows replicas"
    assert ["proxy_pass", "$api"] in directives
    assert ["proxy_http_version", "1.1"] in directives
    assert ["proxy_set_header", "Upgrade", "$http_upgrade"] in directives
    assert ["proxy_set_header", "Connection", "$connection_upgrade"] in directives
    # The chat page's WebSocket sends `Origin: http://host:port`; the API accepts its own origin
    # by comparing with Host, so Host must keep the port ($host would drop it).
    assert ["proxy_set_header", "Host", "$http_host"] in directives
    timeout = next(words[1] for words in directives if words[0] == "proxy_read_timeout")
    seconds = int(timeout.removesuffix("h")) * 3600 if timeout.endswith("h") else int(timeout)
    assert seconds > 2 * Settings.model_fields["ws_ping_seconds"].default
    assert ["return", "404"] in directives, "/metrics is not served to the world"


def test_the_proxy_logs_no_query_string(services: dict[str, Any]) -> None:
    """A WebSocket URL may carry `?access_token=`: the access log has the path only."""
    directives = nginx_directives(nginx_conf(services))
    formats = [words for words in directives if words[0] == "log_format"]
    assert len(formats) == 1
    name, text = formats[0][1], " ".join(formats[0][2:])
    assert "$uri" in text
    for leaky in ("$request ", '$request"', "$request_uri", "$args", "$query_string"):
        assert leaky not in text + " "
    logs = [words for words in directives if words[0] == "access_log"]
    assert logs and all(words[-1] in (name, "off") for words in logs)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_restart_policies(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] in ("unless-stopped", "always")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_resource_limits(services: dict[str, Any], name: str) -> None:
    limits = services[name]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0
    assert re.fullmatch(r"\d+[mg]", str(limits["memory"]))


def test_mongodb_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    mounts = dict(volume.split(":")[::-1] for volume in compose["services"]["mongodb"]["volumes"])
    assert mounts["/data/db"] in compose["volumes"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_names_are_settings(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    unknown = set(env) - SETTINGS_VARIABLES - ENTRYPOINT_VARIABLES
    assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
    assert env["MONGODB_URL"] == "mongodb://mongodb:27017"
    assert env["RABBITMQ_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    for passed_through in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        assert env[passed_through] == f"${{{passed_through}:-}}"


def test_the_docs_name_the_variables_compose_passes_through(services: dict[str, Any]) -> None:
    """.env.example and README say which variables `docker compose` takes from the shell or
    `.env` (every `${NAME...}` of the services' environment), and no others."""
    passed = {
        name
        for service in APP_SERVICES
        for value in environment(services[service]).values()
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", value)
    }
    header = re.sub(r"\n# ?", " ", (ROOT / ".env.example").read_text())
    listed = re.search(r"\(for (.+?) only;", header)
    assert listed and set(re.findall(r"[A-Z][A-Z0-9_]+", listed[1])) == passed
    readme = re.search(r"Compose passes only (.+?) through", (ROOT / "README.md").read_text(), re.S)
    assert readme and set(re.findall(r"`([A-Z][A-Z0-9_]*)`", readme[1])) == passed


def test_auth_is_on_with_a_development_secret_to_change(services: dict[str, Any]) -> None:
    """The API verifies tokens; the secret goes to it alone."""
    assert "AUTH_JWT_SECRET" not in environment(services["responder"])
    value = environment(services["api"])["AUTH_JWT_SECRET"]
    match = DEV_SECRET_DEFAULT.match(value)
    assert match, f"AUTH_JWT_SECRET should default to a development secret: {value}"
    secret = match["secret"]
    assert len(secret) >= 32, "HS256 needs at least 32 characters"
    Settings(auth_jwt_secret=SecretStr(secret))  # accepted as it is
    readme = (ROOT / "README.md").read_text()
    assert secret in readme and "AUTH_JWT_SECRET=$(openssl rand -hex 32)" in readme


@pytest.mark.parametrize("name", APP_SERVICES)
def test_offline_mock_is_the_mock_model_service(services: dict[str, Any], name: str) -> None:
    assert environment(services[name])["MOCK_MODEL_URL"] == f"http://mock-model:{MOCK_PORT}/v1"


@pytest.mark.parametrize(("name", "expected"), sorted(HEALTHCHECKS.items()))
def test_healthchecks(services: dict[str, Any], name: str, expected: str) -> None:
    text = healthcheck_text(services[name])
    assert expected in text
    if name == "mongodb":
        assert "ping" in text


@pytest.mark.parametrize(("name", "needs"), sorted(DEPENDENCIES.items()))
def test_depends_on_healthy(services: dict[str, Any], name: str, needs: set[str]) -> None:
    depends_on = services[name]["depends_on"]
    assert set(depends_on) == needs
    for dependency, condition in depends_on.items():
        assert condition == {"condition": "service_healthy"}, dependency
        assert "healthcheck" in services[dependency], dependency


def test_monitoring_is_a_profile(services: dict[str, Any]) -> None:
    profiled = {name for name, service in services.items() if "profiles" in service}
    assert profiled == MONITORING
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]


def mounted(service: dict[str, Any], target: str) -> Path:
    mounts: dict[str, str] = {
        volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]
    }
    return ROOT / mounts[target]


def test_prometheus_scrapes_every_replica(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config = yaml.safe_load(mounted(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["api"]["dns_sd_configs"][0]
    assert (api["names"], api["type"], api["port"]) == (["api"], "A", API_PORT)
    assert jobs["api"]["metrics_path"] == "/metrics"
    responder = jobs["responder"]["dns_sd_configs"][0]
    assert (responder["names"], responder["type"]) == (["responder"], "A")
    port = int(environment(services["responder"])["METRICS_PORT"])
    assert responder["port"] == port == Settings.model_fields["metrics_port"].default
    assert str(port) in [str(item) for item in services["responder"]["expose"]]
    rabbitmq = jobs["rabbitmq"]["static_configs"][0]["targets"]
    assert rabbitmq == ["rabbitmq:15692"]


def exported_names() -> set[str]:
    """Every sample name the two services export (suffixes included)."""
    return {
        sample.name
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name.startswith("chat_")
    } | {
        f"{family.name}{suffix}"
        for family in REGISTRY.collect()
        if family.name.startswith("chat_")
        for suffix in ("_total", "_bucket", "_count", "_sum", "")
    }


def test_alerts_use_only_metrics_the_services_export(services: dict[str, Any]) -> None:
    config = yaml.safe_load(
        mounted(services["prometheus"], "/etc/prometheus/prometheus.yml").read_text()
    )
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    alerts = yaml.safe_load(mounted(services["prometheus"], config["rule_files"][0]).read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules)
    used = {name for rule in rules for name in re.findall(r"\bchat_[a-z_]+", rule["expr"])}
    assert used, "the alerts watch the services' own metrics"
    assert used <= exported_names(), sorted(used - exported_names())
    documented = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        assert f"`{rule['alert']}`" in documented, f"{rule['alert']} is not explained"


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


def test_operations_doc_covers_every_setting() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Settings") : text.index("## Metrics")]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", section))
    assert listed >= SETTINGS_VARIABLES, sorted(SETTINGS_VARIABLES - listed)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", readme, flags=re.MULTILINE))
    assert table == SETTINGS_VARIABLES


def compose_cli() -> list[str] | None:
    """Compose v2 (`docker compose`), else Debian's Compose v1 (`docker-compose`, which
    `.ci/run` installs); None where neither is installed."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return None if legacy is None else [legacy]


def test_docker_compose_config_accepts_the_file() -> None:
    """The Compose CLI's own validation, which needs no Docker engine."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (docker compose or docker-compose): config not validated")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    result = subprocess.run(
        [*cli, "--file", "docker-compose.yml", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    default = {name for name, service in config["services"].items() if not service.get("profiles")}
    assert default == SERVICES - MONITORING  # v2 leaves profiled services out, v1 marks them
    assert config["services"]["api"]["command"] == COMMANDS["api"]


def test_operations_doc_lists_every_metric() -> None:
    """docs/operations.md's table holds every chat_ metric, as Prometheus names it."""
    documented = set(
        re.findall(
            r"^\| `(chat_[a-z_]+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.MULTILINE
        )
    )
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in REGISTRY.collect()
        if family.name.startswith("chat_")
    }
    assert documented == exported


def test_grafana_shows_the_dashboard_from_prometheus(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "chat.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = list(mounted(grafana, provider["options"]["path"]).glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        used = {name for expr in exprs for name in re.findall(r"\bchat_[a-z_]+", expr)}
        assert used <= exported_names(), sorted(used - exported_names())
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == source["uid"]
