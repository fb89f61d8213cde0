"""A registry client looping over every node's port 443 (run inside the test's fabric network
namespace): a new TLS connection per request, verified against the CA file, `GET /v2/` (the
registry's 401 token challenge is the right answer). Stops when the stop file exists; writes
{"ok": n, "failed": n, "errors": [...], "serials": {address: [serials seen, in order]}} to
the result file.

    python swarm_client.py CA_FILE DOMAIN STOP_FILE RESULT_FILE ADDRESS...
"""

import http.client
import json
import os
import socket
import ssl
import sys


def main() -> None:
    ca, domain, stop, result, *addresses = sys.argv[1:]
    ctx = ssl.create_default_context(cafile=ca)
    ok, failed, errors = 0, 0, []
    serials: dict[str, list[str]] = {a: [] for a in addresses}
    while not os.path.exists(stop):
        for address in addresses:
            try:
                with socket.create_connection((address, 443), timeout=5) as raw, \
                        ctx.wrap_socket(raw, server_hostname=domain) as tls:
                    der = tls.getpeercert(binary_form=True) or b""
                    conn = http.client.HTTPConnection(domain)
                    conn.sock = tls
                    conn.request("GET", "/v2/", headers={"Host": domain, "Connection": "close"})
                    status = conn.getresponse().status
                if status != 401:
                    raise RuntimeError(f"HTTP {status}")
                from cryptography import x509

                serial = f"{x509.load_der_x509_certificate(der).serial_number:x}"
                if not serials[address] or serials[address][-1] != serial:
                    serials[address].append(serial)
                ok += 1
            except Exception as e:
                failed += 1
                errors.append(f"{address}: {type(e).__name__}: {e}"[:200])
    with open(result, "w") as f:
        json.dump({"ok": ok, "failed": failed, "errors": errors[:50], "serials": serials}, f)


if __name__ == "__main__":
    main()
