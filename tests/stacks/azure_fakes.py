"""Azure's endpoints a server's first boot talks to, for a test machine that cannot reach Azure:
the Instance Metadata Service (managed-identity tokens, plain HTTP on 169.254.169.254), Key Vault
secrets and Blob downloads (HTTPS, a trustme certificate for *.vault.azure.net and
*.blob.core.windows.net). Key Vault answers 403 to the first `deny_first` reads of each secret, as
Azure does while a new role assignment is still being applied. Run in the test machine's network
namespace: `python azure_fakes.py CONFIG.json`."""

from __future__ import annotations

import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


def serve(config: dict[str, Any]) -> None:
    denied: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            with open(config["log"], "a") as log:
                log.write(f"{self.headers.get('Host')} {self.path} -> {args[1] if len(args) > 1 else ''}\n")

        def answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            host = (self.headers.get("Host") or "").split(":")[0]
            if url.path == "/metadata/identity/oauth2/token":
                if self.headers.get("Metadata") != "true":
                    return self.answer(400, b'{"error": "Metadata header"}')
                resource = parse_qs(url.query)["resource"][0]
                return self.answer(200, json.dumps({"access_token": f"token-for-{resource}"}).encode())
            if host.endswith(".vault.azure.net") and url.path.startswith("/secrets/"):
                if self.headers.get("Authorization") != "Bearer token-for-https://vault.azure.net":
                    return self.answer(401, b"{}")
                name = url.path.removeprefix("/secrets/")
                with lock:
                    denied[name] = denied.get(name, 0) + 1
                    if denied[name] <= config["deny_first"]:
                        return self.answer(403, b'{"error": {"code": "Forbidden"}}')
                return self.answer(200, json.dumps({"value": config["secrets"][name]}).encode())
            if host.endswith(".blob.core.windows.net"):
                if self.headers.get("Authorization") != "Bearer token-for-https://storage.azure.com/" or \
                        not self.headers.get("x-ms-version"):
                    return self.answer(403, b"")
                path = Path(config["blobs"]) / url.path.lstrip("/")
                if path.is_file():
                    return self.answer(200, path.read_bytes(), "application/octet-stream")
                return self.answer(404, b"")
            return self.answer(404, b"")

    imds = ThreadingHTTPServer((config["imds_host"], 80), Handler)
    tls = ThreadingHTTPServer((config["https_host"], 443), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config["cert"], config["key"])
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    Path(config["ready"]).write_text("ready")
    tls.serve_forever()


if __name__ == "__main__":
    serve(json.loads(Path(sys.argv[1]).read_text()))
