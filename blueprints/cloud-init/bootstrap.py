"""First boot of a dr server (run by cloud-init with the image's python3; standard library only).

Reads /etc/dr/bootstrap.json (rendered by `dr` from the spec and the plan) and, each step retried
with backoff until one deadline, saying on the console what it waits for:
  1. Key Vault secrets through the VM's managed identity (its role assignments may take minutes
     to apply: a 403 is waited out, not fatal);
  2. the estate's own wheels from the private `packages` container (no public index), installed
     with `pip --no-index --require-hashes` into the venv;
  3. registration with the configuration server (`dr-agent register`, itself retrying until the
     same deadline) for a master target;
  4. the systemd units.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/dr/bootstrap.json"
STORAGE_API = "2021-08-06"  # x-ms-version of the Blob service REST API
KEYVAULT_API = "7.4"


def say(message):
    print("dr-bootstrap: " + message, flush=True)


def retry(what, call, deadline):
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except (OSError, ValueError, KeyError, urllib.error.URLError, subprocess.CalledProcessError) as err:
            left = deadline - time.monotonic()
            if left <= 0:
                say(f"gave up waiting for {what}: {err}")
                raise SystemExit(1) from None
            pause = min(60.0, 2.0 ** min(attempt, 6), left)
            say(f"waiting for {what} (attempt {attempt}: {err}); next try in {pause:.0f} s")
            time.sleep(pause)


def get(url, headers, timeout=30):
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read()


def token(config, resource):
    url = config["imds"] + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + \
        urllib.parse.quote(resource, safe="")
    if config.get("identity_client_id"):
        url += "&client_id=" + config["identity_client_id"]
    return json.loads(get(url, {"Metadata": "true"}))["access_token"]


def secret(config, uri):
    bearer = token(config, "https://vault.azure.net")
    return json.loads(get(uri + "?api-version=" + KEYVAULT_API, {"Authorization": "Bearer " + bearer}))["value"]


def write(path, text, mode=0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def download(config, url, path):
    headers = {"x-ms-version": STORAGE_API}
    if config.get("blob_auth", "identity") == "identity":
        headers["Authorization"] = "Bearer " + token(config, "https://storage.azure.com/")
    data = get(url, headers, timeout=300)
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)


def main():
    with open(CONFIG) as f:
        config = json.load(f)
    deadline = time.monotonic() + float(config["deadline_s"])
    say(f"{config['role']} {config['name']}: bootstrap (deadline {config['deadline_s']:.0f} s)")

    values = {}
    for item in config["secrets"]:
        values[item["key"]] = retry(f"Key Vault secret {item['uri']} (the VM identity's role assignment)",
                                    lambda item=item: secret(config, item["uri"]), deadline)
    if config.get("env_file"):
        write(config["env_file"], "".join(f"{e}={values[e]}\n" for e in config["env_keys"]))
    if config.get("passphrase_file"):
        write(config["passphrase_file"], values["DR_VAULT_KEY"])

    packages = config["packages"]
    os.makedirs(packages["dir"], exist_ok=True)
    for name in packages["files"]:
        target = os.path.join(packages["dir"], name)
        retry(f"package {name} from the estate's private container",
              lambda name=name, target=target: download(config, packages["base_url"] + "/" + name, target), deadline)
    venv = packages["venv"]
    if not os.path.exists(os.path.join(venv, "bin", "pip")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    say(f"installing {len(packages['files'])} wheels by hash (no index)")
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--no-index", "--find-links",
                    packages["dir"], "--require-hashes", "-r", packages["requirements"]], check=True)
    for command in packages["links"]:
        link = os.path.join("/usr/local/bin", command)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join(venv, "bin", command), link)

    register = config.get("register")
    if register:
        left = max(60, int(deadline - time.monotonic()))
        say(f"registering with the configuration server {register['server']} (up to {left} s)")
        argv = [os.path.join(venv, "bin", "dr-agent"), "register", "--server", register["server"], "--name",
                register["name"], "--role", register["role"], "--out", register["out"], "--passphrase-env",
                "DR_VAULT_KEY", "--deadline", f"{left}s"]
        for address in register.get("addresses", []):
            argv += ["--address", address]
        subprocess.run(argv, check=True, env={**os.environ, "DR_VAULT_KEY": values["DR_VAULT_KEY"]})

    for command in config.get("start", []):
        say("starting: " + " ".join(command))
        subprocess.run(command, check=True)
    say("done")


if __name__ == "__main__":
    main()
