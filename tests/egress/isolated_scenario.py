"""Run by tests/egress/test_isolated.py inside a network namespace the test made (``unshare --net``), with only
loopback up: a server, its test upstreams and sandboxes that ask the proxy for refused addresses (metadata,
link-local, private ranges, names resolving to them, rebinding). Even a proxy bug could not send a packet off
the machine from here. Prints one JSON line: what each sandbox saw, and what the upstream received.

Usage: isolated_scenario.py BACKEND [DOCKER_HOST]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, as pytest puts it
from egress.servers import running_upstream
from sandbox_client import SandboxClient
from sandbox_server.testing import server_in_thread

FETCH = """
import json, urllib.request, urllib.error
out = {}
for url in URLS:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            out[url] = {"status": r.status}
    except urllib.error.HTTPError as e:
        out[url] = {"status": e.code, "refused": e.headers.get("X-Sandbox-Egress", "")}
    except Exception as e:
        out[url] = {"error": type(e).__name__}
print(json.dumps(out))
"""


SERVER_PORT = 50123  # the namespace is the test's own: nothing else listens in it


def main() -> None:
    backend = sys.argv[1]
    extra: dict[str, Any] = {"docker_host": sys.argv[2]} if backend == "docker" else {}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    routes = subprocess.run(["ip", "-o", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    with running_upstream("127.0.0.2") as up, tempfile.TemporaryDirectory() as tmp:
        port = up.port
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "t.yaml").write_text(f"""\
version: 1
tenants:
  default:
    static_validation: {{enabled: false}}
    network:
      mode: allowlist
      allow:
        - {{host: 169.254.169.254, ports: [80, {port}]}}
        - {{host: "fd00:ec2::254", ports: [80]}}
        - {{host: 224.0.0.251, ports: [{port}]}}
        - {{host: 10.1.2.3, ports: [{port}]}}
        - {{host: meta.test, ports: [80, {port}]}}
        - {{host: private.test, ports: [{port}]}}
        - {{host: mapped.test, ports: [{port}]}}
        - {{host: mixed.test, ports: [{port}]}}
        - {{host: ok.test, ports: [{port}]}}
        - {{host: 127.0.0.2, ports: [{port}]}}
        - {{host: 127.0.0.1, ports: [{SERVER_PORT}]}}
""")
        names = {"meta.test": ["169.254.169.254"], "private.test": ["10.9.8.7"],
                 "mapped.test": ["::ffff:169.254.169.254"], "mixed.test": ["127.0.0.2", "169.254.169.254"],
                 "ok.test": ["127.0.0.2"]}
        urls = [f"http://169.254.169.254:{port}/latest/meta-data", "http://169.254.169.254/latest/meta-data",
                "http://[fd00:ec2::254]/latest/meta-data", f"http://224.0.0.251:{port}/m",
                f"http://meta.test:{port}/x", f"http://private.test:{port}/x", f"http://mapped.test:{port}/x",
                f"http://mixed.test:{port}/x", f"http://ok.test:{port}/echo/ok", f"http://10.1.2.3:{port}/x"]
        with server_in_thread(backend=backend, policies_dir=policies, egress_hosts=names, port=SERVER_PORT,
                              **extra) as srv, SandboxClient(srv.target, timeout=120) as sbx:
            result = sbx.execute(f"URLS = {urls!r}\n" + FETCH, language="python")
            # Through the proxy on purpose (NO_PROXY keeps 127.0.0.1 on the sandbox's own loopback otherwise).
            own = sbx.execute(
                "import os, urllib.request\n"
                "os.environ.pop('NO_PROXY'); os.environ.pop('no_proxy')\n"
                "urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler("
                "{'http': os.environ['HTTP_PROXY']})))\n"
                f"URLS = ['http://127.0.0.1:{SERVER_PORT}/']\n" + FETCH, language="python")
        print(json.dumps({
            "status": result.status.name, "stderr": result.stderr[-2000:],
            "seen": json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {},
            "own_port": own.stdout.strip(), "upstream_paths": [r.path for r in up.requests],
            "routes": routes, "links": links}))


if __name__ == "__main__":
    main()
