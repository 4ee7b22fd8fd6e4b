"""`python -m benchmarks.plain_flower`: the plain app on Flower's simulation engine."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.simulation import run_simulation  # noqa: E402

from benchmarks.plain_flower.client_app import app as client_app  # noqa: E402
from benchmarks.plain_flower.server_app import app as server_app  # noqa: E402
from benchmarks.plain_flower.task import SETTINGS  # noqa: E402

if __name__ == "__main__":
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=SETTINGS["num-clients"],
                   backend_config={"client_resources": {"num_cpus": SETTINGS["client-cpus"]}})
