"""Every playbook parses, with the committed example inventory; the examples agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansiblekit import ANSIBLE_DIR, PLAYBOOKS, Project, tool


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The project as committed, with the examples as its inventory and (encrypted) vault."""
    project = Project.create(tmp_path_factory.mktemp("syntax"))
    (project.path / "inventory.yml").write_text((ANSIBLE_DIR / "inventory.example.yml").read_text())
    project.write_vault(yaml.safe_load((ANSIBLE_DIR / "vault.example.yml").read_text()))
    return project


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(example: Project, playbook: str) -> None:
    example.playbook(playbook, "--syntax-check").check()


def test_playbooks_are_the_expected_ones() -> None:
    found = {p.name for p in ANSIBLE_DIR.glob("*.yml") if isinstance(yaml.safe_load(p.read_text()), list)}
    assert found == set(PLAYBOOKS)


def test_the_example_settings_resolve_through_the_example_vault(example: Project) -> None:
    """group_vars template through the vault into each role's variables (debug runs on the
    controller: no host is contacted)."""
    run = example.run(
        tool("ansible"),
        "soclab_edge:soclab_server",
        "-m",
        "ansible.builtin.debug",
        "-a",
        json.dumps({"msg": "{{ [soclab_site, soclab_mqtt_host, soclab_mqtt_accounts | list | sort] }}"}),
        "--vault-password-file",
        str(example.vault_password_file),
    ).check()
    assert run.output.count("soclab.example.org") == 2
    assert "lab1/pi-01/mppt" in run.output
    run = example.run(
        tool("ansible"),
        "soclab_server",
        "-m",
        "ansible.builtin.debug",
        "-a",
        json.dumps(
            {"msg": "{{ soclab_server_secrets | length }} {{ 'KEY' in soclab_server_tls_server_key }}"}
        ),
        "--vault-password-file",
        str(example.vault_password_file),
    ).check()
    assert '"msg": "3 True"' in run.output


def test_the_example_vault_holds_an_account_for_every_example_device() -> None:
    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory.example.yml").read_text())
    group_vars = yaml.safe_load((ANSIBLE_DIR / "group_vars/all/main.yml").read_text())
    vault = yaml.safe_load((ANSIBLE_DIR / "vault.example.yml").read_text())
    site = group_vars["soclab_site"]
    devices = {
        f"{site}/{host}/{instrument['device']}"
        for host, hostvars in inventory["soclab_edge"]["hosts"].items()
        for instrument in hostvars["soclab_edge_instruments"]
    }
    accounts = set(vault["vault_soclab_mqtt_accounts"])
    assert devices <= accounts, devices - accounts


def test_the_example_vault_holds_placeholders_only() -> None:
    def leaves(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        else:
            yield str(node)

    vault = yaml.safe_load((ANSIBLE_DIR / "vault.example.yml").read_text())
    for value in leaves(vault):
        assert "CHANGE_ME" in value, value


def test_secrets_stay_out_of_the_repository() -> None:
    ignored = (ANSIBLE_DIR / ".gitignore").read_text().split()
    assert {"/inventory.yml", "/group_vars/all/vault.yml"} <= set(ignored)
    for path in Path(ANSIBLE_DIR).rglob("*"):
        if path.is_file() and path.name not in ("vault.yml",):
            assert not path.read_bytes().startswith(b"$ANSIBLE_VAULT"), path
