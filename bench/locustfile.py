"""Load test of the proxy, as in the prototype: each simulated user GETs / over and over.

    pip install locust
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 100 -r 20 -t 60s

Point --host only at a proxy you run yourself (bench/run-local.sh or the compose stack).
LOCUST_WAIT sets the pause between a user's requests in seconds (default 0: as fast as it can).
"""

import os

from locust import HttpUser, constant, task


class ProxyUser(HttpUser):
    wait_time = constant(float(os.environ.get("LOCUST_WAIT", "0")))

    @task
    def hello(self):
        with self.client.get("/", catch_response=True) as resp:
            if resp.status_code != 200 or resp.text != "Hello, world!":
                resp.failure(f"unexpected answer {resp.status_code}: {resp.text[:40]!r}")
