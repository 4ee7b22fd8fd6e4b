"""The plain ServerApp: Flower's FedAvg over whole models, evaluated centrally each round."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from benchmarks.plain_flower.task import SETTINGS, get_model, load_test_data, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    net = get_model()
    testloader = load_test_data()

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, testloader)
        print(f"round {server_round}: accuracy {accuracy:.4f}", flush=True)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy = FedAvg(fraction_evaluate=0.0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(net.state_dict()),
                   num_rounds=SETTINGS["rounds"], evaluate_fn=global_evaluate)
