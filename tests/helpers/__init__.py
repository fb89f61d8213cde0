"""Helpers that tests, bench/ and pebble-test/demo_stack.py import; fixtures live in tests/fixtures/.

    pebble         a real Pebble (pebble-test/start.sh) and the acmebox flags that point at it
    process        acmebox run as a user runs it, in the foreground or as a service; waiting; ports
    clock          FakeClock, real time plus an offset a test moves forward
    certs          reading the live certificate acmebox wrote
    nginx          Debian's nginx with its own prefix and server blocks
    docker         the test /etc/hosts, a busybox image, the docker CLI against a given engine
    stack          the registry stack (nginx, registry, acmebox, Pebble) on loopback
    containers     the shipped image and compose file run by a private dockerd
    oci, registry_fill, faultproxy   an OCI layout, registry contents, a fault proxy for Pebble
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's top directory."""
