"""docker/ stays in step with the project: no Docker engine needed, the files are parsed and cross-checked.

The compose files are read with PyYAML (installed with the project: huggingface_hub, which open_clip needs,
depends on it); the Dockerfile with a small parser of its own. What they promise is checked against the
README (install commands, the documented flags) and the code (console script, env vars, CLI options).
When Compose v2 is on the machine, `docker compose config` validates the files too (it needs no engine).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from paths import ROOT

DOCKER = ROOT / "docker"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_QDRANT = (1, 16)  # collection metadata


# -- parsing --------------------------------------------------------------------------------------


def dockerfile(path: Path = DOCKER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def commands(shell: str) -> list[str]:
    """A shell line's `&&`-separated commands, normalised by shlex."""
    return [shlex.join(shlex.split(part)) for part in shell.split("&&") if part.strip()]


def pip_installs(shell_lines: list[str]) -> list[str]:
    return [c for line in shell_lines for c in commands(line) if c.startswith("pip install")]


def without_index_url(command: str) -> tuple[str, str | None]:
    words = shlex.split(command)
    url = None
    if "--index-url" in words:
        i = words.index("--index-url")
        url = words[i + 1]
        del words[i : i + 2]
    return shlex.join(words), url


def readme_main_job() -> list[str]:
    """README's "Run the main job" command line, which the image must reproduce."""
    text = (ROOT / "README.md").read_text()
    start = text.index("**Run the main job**")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, "README: no bash block after **Run the main job**"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def compose(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((DOCKER / name).read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Short-syntax volumes as {target: source}; sources may hold `${VAR:-default}` with colons inside."""
    out = {}
    for spec in service.get("volumes") or []:
        rest, _, last = spec.rpartition(":")
        if last in ("ro", "rw"):
            spec = rest
        source, _, target = spec.rpartition(":")
        out[target] = source
    return out


def image_version(image: str) -> tuple[int, ...]:
    repo, _, tag = image.partition(":")
    assert repo == "qdrant/qdrant", image
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    assert match, f"pin the Qdrant image to a version, not {tag or 'latest'!r}"
    return tuple(int(g) for g in match.groups() if g is not None)


def command_words(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def healthcheck_probe(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


# -- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_installs_what_the_readme_installs() -> None:
    runs = [args for word, args in dockerfile() if word == "RUN"]
    image, readme = pip_installs(runs), pip_installs(readme_main_job())
    assert readme, "README's main job installs nothing?"
    stripped = [without_index_url(c) for c in image]
    assert [c for c, _ in stripped] == readme  # same commands, same order, modulo torch's index
    urls = {c: url for c, url in stripped if url}
    assert list(urls.values()) == [TORCH_INDEX]  # the CPU wheels, and only for torch's install
    (torch_install,) = urls
    assert "torch==" in torch_install and "torchvision==" in torch_install


def test_dockerfile_copies_exist_and_reach_the_build() -> None:
    steps = dockerfile()
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    assert copies
    sources = [src for words in copies for src in [w for w in words if not w.startswith("--")][:-1]]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the build context (the repository root)"
    # pip install . needs the package and everything pyproject names (its readme)
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    assert {"pyproject.toml", "enclip_qdrant"} <= set(sources)
    # every folder pyproject maps a package to (the CLI lives in cli/) must reach the image too
    mapped = tomllib.loads(pyproject)["tool"]["setuptools"].get("package-dir", {})
    assert "cli" in mapped.values()
    missing = set(mapped.values()) - set(sources)
    assert not missing, f"the image would be built without {missing}"
    assert readme and readme.group(1) in sources
    # and the .dockerignore beside the Dockerfile lets exactly those through
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()]
    allowed = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!")}
    assert set(sources) <= allowed


def test_dockerfile_runs_the_cli_in_data() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["enclip-qdrant"]]  # exec form: arguments pass straight on
    assert 'enclip-qdrant = "enclip_qdrant.cli.app:main"' in (ROOT / "pyproject.toml").read_text()
    workdirs = [args for word, args in steps if word == "WORKDIR"]
    assert workdirs[-1] == "/data"
    envs = dict(shlex.split(args)[0].split("=", 1) for word, args in steps if word == "ENV" and "=" in args
                and len(shlex.split(args)) == 1)
    assert envs["ENCLIP_HOME"] == "/data/.enclip"
    from enclip_qdrant.workspace import ENV_HOME

    assert ENV_HOME == "ENCLIP_HOME"


# -- docker-compose.yml ---------------------------------------------------------------------------


def check_qdrant_node(service: dict[str, Any]) -> None:
    assert image_version(service["image"]) >= MIN_QDRANT
    probe = healthcheck_probe(service)
    assert "/readyz" in probe and "6333" in probe
    assert "$" not in probe.replace("$$", ""), "a single $ is Compose interpolation: escape it as $$"
    assert any(target == "/qdrant/storage" for target in mounts(service))
    assert env(service)["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY")


def check_enclip(doc: dict[str, Any], url: str, nodes: list[str]) -> None:
    service = doc["services"]["enclip"]
    context = (DOCKER / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    environment = env(service)
    assert environment["QDRANT_URL"] == url
    assert environment["QDRANT_API_KEY"].startswith("${QDRANT_API_KEY")
    volumes = mounts(service)
    assert "/data/catalog" in volumes
    assert "/data/.enclip" in volumes and volumes["/data/.enclip"] in doc["volumes"]  # bundles persist
    assert {n: c["condition"] for n, c in service["depends_on"].items()} == dict.fromkeys(nodes, "service_healthy")
    host = re.fullmatch(r"http://([\w-]+):6333", url)
    assert host and host.group(1) in doc["services"]


def check_serve(doc: dict[str, Any]) -> None:
    """The query service: the same image as the CLI, listening beyond localhost, so with its own key."""
    service = doc["services"]["serve"]
    assert service["image"] == doc["services"]["enclip"]["image"]
    assert service["build"] == doc["services"]["enclip"]["build"]
    command = service["command"]
    assert command[0] == "serve" and command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in {str(p) for p in service["ports"]}
    environment = env(service)
    assert environment["ENCLIP_API_KEY"].startswith("${ENCLIP_API_KEY:?")  # required: no open service by accident
    assert environment["QDRANT_URL"] == "http://qdrant:6333"
    volumes = mounts(service)
    assert "/data/catalog" in volumes and "/data/.enclip" in volumes
    assert service["depends_on"]["qdrant"]["condition"] == "service_healthy"


def test_compose_single_server() -> None:
    doc = compose("docker-compose.yml")
    assert set(doc["services"]) == {"qdrant", "enclip", "serve"}
    check_serve(doc)
    qdrant = doc["services"]["qdrant"]
    check_qdrant_node(qdrant)
    assert {"6333:6333", "6334:6334"} <= {str(p) for p in qdrant["ports"]}
    (storage,) = [src for target, src in mounts(qdrant).items() if target == "/qdrant/storage"]
    assert storage in doc["volumes"]  # a named volume, not a bind mount
    check_enclip(doc, "http://qdrant:6333", ["qdrant"])


def test_compose_cluster() -> None:
    doc = compose("docker-compose.cluster.yml")
    nodes = ["qdrant-1", "qdrant-2", "qdrant-3"]
    assert set(doc["services"]) == {*nodes, "enclip"}
    storages = set()
    for name in nodes:
        node = doc["services"][name]
        check_qdrant_node(node)
        assert env(node)["QDRANT__CLUSTER__ENABLED"] == "true"
        words = command_words(node)
        assert words[0] == "./qdrant"
        assert flag(words, "--uri") == f"http://{name}:6335"  # how peers reach this node
        storages.add(mounts(node)["/qdrant/storage"])
    assert flag(command_words(doc["services"]["qdrant-1"]), "--bootstrap") is None  # node 1 starts the cluster
    for name in nodes[1:]:
        assert flag(command_words(doc["services"][name]), "--bootstrap") == "http://qdrant-1:6335"
        assert doc["services"][name]["depends_on"]["qdrant-1"]["condition"] == "service_healthy"
    assert len(storages) == 3 and storages <= set(doc["volumes"])  # one volume per node
    assert {"6333:6333", "6334:6334"} <= {str(p) for p in doc["services"]["qdrant-1"]["ports"]}
    assert not any("6335" in str(p) for n in nodes for p in doc["services"][n].get("ports", []))  # peers only
    check_enclip(doc, "http://qdrant-1:6333", nodes)
    text = (DOCKER / "docker-compose.cluster.yml").read_text()
    shards, replicas = map(int, re.search(r"--shards (\d+) --replicas (\d+)", text).groups())  # type: ignore[union-attr]
    assert (shards, replicas) == (3, 2) and replicas <= len(nodes)


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cluster.yml"])
def test_compose_config_when_compose_v2_is_here(name: str, tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no Docker Compose v2 here: the structural checks above stand in for it")
    result = subprocess.run(
        [docker, "compose", "-f", str(DOCKER / name), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), "QDRANT_API_KEY": "test"},
    )
    assert result.returncode == 0, result.stderr


# -- README ---------------------------------------------------------------------------------------


def readme_section() -> str:
    """The server guide (README links to it): docs/server.md."""
    return (ROOT / "docs" / "server.md").read_text()


def test_readme_walks_through_every_step() -> None:
    section = readme_section()
    for step in (
        "docker compose -f docker/docker-compose.yml up -d qdrant",
        "export QDRANT_URL=",
        "enclip-qdrant index ./catalog --url",
        "--api-key",
        "--on-disk --quantization int8",
        "enclip-qdrant query",
        "enclip-qdrant info",
        "docker compose -f docker/docker-compose.cluster.yml up -d",
        "--shards 3 --replicas 2",
        "--blue-green",
        "enclip-qdrant rollback",
        "enclip-qdrant push",
    ):
        assert step in section, step


def test_readme_flags_exist_in_the_cli() -> None:
    """Every `enclip-qdrant VERB --flag` the section shows is a real option of that command."""
    import typer

    from enclip_qdrant.cli.app import app

    group = typer.main.get_command(app)
    lines = [line for line in readme_section().splitlines() if "enclip" in line]
    checked = 0
    for line in lines:
        verbs = r"(?:enclip-qdrant|run --rm enclip) (index|query|info|rollback|push)\b([^`|]*)"
        for verb, args in re.findall(verbs, line):
            known = {opt for p in group.commands[verb].params for opt in p.opts}  # type: ignore[attr-defined]
            for word in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", args):
                assert word in known, f"docs/server.md: enclip-qdrant {verb} has no {word}"
                checked += 1
    assert checked >= 10
