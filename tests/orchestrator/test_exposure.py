"""Warnings for what a run exposes beyond this machine (pure: no Ray)."""

from __future__ import annotations

import pytest

from orchestrator.spec.exposure import exposure_warnings, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "head-node", "example.org"])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_a_local_ray_with_its_dashboard_on_loopback_warns_of_nothing():
    assert exposure_warnings(None, True, "127.0.0.1") == []
    assert exposure_warnings(None, False, "0.0.0.0") == []  # no dashboard started: nothing listens there
    assert exposure_warnings("auto", False, "127.0.0.1") == []
    assert exposure_warnings("127.0.0.1:6379", False, "127.0.0.1") == []
    assert exposure_warnings("ray://localhost:10001", False, "127.0.0.1") == []


def test_a_dashboard_on_every_interface_is_named():
    [warning] = exposure_warnings(None, True, "0.0.0.0")
    assert warning.startswith("setting 'dashboard_host': the Ray dashboard will listen on 0.0.0.0")


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "10.0.0.5:6379", "head-node:6379"])
def test_a_cluster_over_the_network_is_named(address):
    [warning] = exposure_warnings(address, False, "127.0.0.1")
    host = address.split("://")[-1].rsplit(":", 1)[0]
    assert warning.startswith(f"setting 'address': the Ray cluster at {host} is reached over the network")
