"""The Compose command this machine has: the `docker compose` plugin, or the older standalone
`docker-compose` (v1). Both read the same files and take the same arguments."""

import shutil
import subprocess


def compose_command(who):
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit(f"{who}: neither `docker compose` nor `docker-compose` is installed")
