"""cluster.yaml (AWS GPU workers) and cluster-local.yaml (machines you have): valid for Ray's own cluster
launcher validator (``prepare_config`` + ``validate_config``, offline: nothing contacts a cloud or a host),
and our rules: the head declares no GPUs, the dashboard listens on 127.0.0.1, token authentication is on
on every node, GPU worker types declare GPUs and an accelerator type, setup installs this project, the
images run the pinned Ray on Python 3.11. Broken variants are rejected by the validator or by the rules."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = {"aws": ROOT / "cluster.yaml", "local": ROOT / "cluster-local.yaml"}
TOKEN = "~/.ray/auth_token"


def load(name: str) -> dict:
    return yaml.safe_load(FILES[name].read_text())


def prepared(config: dict) -> dict:
    """The config as ``ray up`` sees it (defaults merged), checked by Ray's validator."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(config))
    validate_config(out)
    return out


def ray_starts(config: dict, head: bool) -> list[str]:
    key = "head_start_ray_commands" if head else "worker_start_ray_commands"
    return [c for c in config.get(key, []) if "ray start" in c]


def pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if re.match(r"ray(\[|\s|>|=|<|$)", d))


def violations(config: dict) -> list[str]:
    """Our rules, on a prepared config; one message per broken rule."""
    from packaging.requirements import Requirement

    out = []
    types, head = config["available_node_types"], config["head_node_type"]
    heads, workers = ray_starts(config, True), ray_starts(config, False)
    if not heads or not workers:
        out.append("no ray start for the head or the workers")
    if types[head].get("resources", {}).get("GPU", 0) != 0:
        out.append("head declares GPUs")
    for c in heads:
        if "--num-gpus=0" not in c.split():
            out.append("head starts Ray with GPUs")
        hosts = re.findall(r"--dashboard-host[= ](\S+)", c)
        if hosts != ["127.0.0.1"]:
            out.append(f"dashboard host {hosts}")
    for c in heads + workers:
        if not re.search(r"(^|[;&\s])(export\s+)?RAY_AUTH_MODE=token[;\s].*\bray start\b", c):
            out.append(f"no token auth: {c}")
    if config.get("file_mounts", {}).get(TOKEN) != TOKEN:
        out.append("the token is not copied to the nodes")
    if config["provider"]["type"] != "local":  # the local provider has one node type; Ray detects the GPUs
        gpu_types = [t for t in types if t != head]
        if not gpu_types:
            out.append("no GPU worker type")
        for name in gpu_types:
            res = types[name].get("resources", {})
            accels = [k for k in res if k.startswith("accelerator_type:")]
            if res.get("GPU", 0) < 1 or len(accels) != 1 or res[accels[0]] != 1:
                out.append(f"{name}: resources {res}")
            if not 0 <= types[name]["min_workers"] <= types[name]["max_workers"]:
                out.append(f"{name}: min/max workers")
        docker = config.get("docker", {})
        spec = Requirement(pinned_ray()).specifier
        for image in (docker.get("worker_image", docker.get("image")), docker.get("head_image", docker.get("image"))):
            m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(gpu|cpu|cu\d+)", image or "")
            if not m or m.group(1) not in spec:
                out.append(f"image {image} is not Ray {spec} on Python 3.11")
        if not re.search(r"-(gpu|cu\d+)$", docker.get("worker_image", docker.get("image", ""))):
            out.append("the workers' image has no CUDA")
    if config.get("file_mounts", {}).get("~/salient") != ".":
        out.append("the working tree is not synced")
    setup = config.get("setup_commands", [])
    if not any(re.search(r"\bpip install\b.*-e ~/salient\s*$", c) for c in setup):
        out.append("setup does not install this project")
    return out


@pytest.mark.parametrize("name", FILES)
def test_configs_pass_rays_validator_and_our_rules(name):
    config = prepared(load(name))
    assert violations(config) == []
    if name == "local":
        node = config["available_node_types"][config["head_node_type"]]
        assert node["min_workers"] == node["max_workers"] == len(config["provider"]["worker_ips"])


def test_ray_is_pinned_to_the_validated_version():
    """The validator is Ray's private API: the installed Ray is the pinned one, and the pin is one minor."""
    import ray
    from packaging.requirements import Requirement

    spec = Requirement(pinned_ray()).specifier
    assert ray.__version__ in spec
    major, minor = map(int, ray.__version__.split(".")[:2])
    assert f"{major}.{minor + 1}.0" not in spec and f"{major}.{minor - 1}.99" not in spec


def _set(config: dict, path: str, value) -> None:
    *keys, last = path.split("/")
    for k in keys:
        config = config[k]
    config[last] = value


def _rename(config: dict, path: str, new: str) -> None:
    *keys, last = path.split("/")
    for k in keys:
        config = config[k]
    config[new] = config.pop(last)


@pytest.mark.parametrize(("name", "break_it", "match"), [
    ("aws", lambda c: _rename(c, "head_node_type", "head_node_typ"), "head_node_typ"),
    ("aws", lambda c: _rename(c, "available_node_types/gpu.h100/min_workers", "min_worker"), "min_worker"),
    ("aws", lambda c: c["available_node_types"]["gpu.l4"].pop("node_config"), "node_config"),
    ("aws", lambda c: _set(c, "available_node_types/gpu.l4/resources/GPU", 0.5), "0.5"),
    ("aws", lambda c: _set(c, "head_node_type", "head.gpu"), "head_node_type"),
    ("aws", lambda c: _set(c, "docker/pull_before_rum", True), "pull_before_rum"),
    ("local", lambda c: _rename(c, "file_mounts", "file_mount"), "file_mount"),
    ("local", lambda c: c["provider"].pop("worker_ips"), "worker_ips"),
])
def test_rays_validator_rejects_broken_configs(name, break_it, match):
    config = load(name)
    break_it(config)
    with pytest.raises(Exception, match=re.escape(match)) as e:  # noqa: PT011 - jsonschema, ValueError or click
        prepared(config)
    assert type(e.value).__name__ in ("ValidationError", "ValueError", "ClickException")


@pytest.mark.parametrize(("name", "break_it", "match"), [
    ("aws", lambda c: _set(c, "available_node_types/head.cpu/resources", {"GPU": 1}), "head declares GPUs"),
    ("aws", lambda c: _set(c, "head_start_ray_commands", [c["head_start_ray_commands"][1].replace(
        "--num-gpus=0", "")]), "head starts Ray with GPUs"),
    ("local", lambda c: _set(c, "head_start_ray_commands", [c["head_start_ray_commands"][1].replace(
        "127.0.0.1", "0.0.0.0")]), "dashboard host"),
    ("aws", lambda c: _set(c, "worker_start_ray_commands", [c["worker_start_ray_commands"][1].replace(
        "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")]), "no token auth"),
    ("local", lambda c: c["file_mounts"].pop(TOKEN), "token is not copied"),
    ("aws", lambda c: c["available_node_types"]["gpu.h100"]["resources"].pop("accelerator_type:H100"), "gpu.h100"),
    ("aws", lambda c: _set(c, "docker/image", "rayproject/ray:2.59.0-py311-gpu"), "is not Ray"),
    ("aws", lambda c: _set(c, "docker/image", "rayproject/ray:2.60.0-py311-cpu"), "no CUDA"),
    ("local", lambda c: _set(c, "setup_commands", ["pip install salient"]), "does not install this project"),
])
def test_our_rules_catch_broken_configs(name, break_it, match):
    config = load(name)
    break_it(config)
    assert any(match in v for v in violations(prepared(config))), violations(prepared(config))
