"""The compute floor: the plain app's rounds in one process, with no Flower and no Ray.

Each round every client loads the global weights, trains its steps, and the weights are
averaged by shard size; the global model is evaluated before the first round and after each.
"""

from __future__ import annotations

from benchmarks.plain_flower.task import SETTINGS, get_model, load_data, load_test_data, test, train


def main() -> None:
    net, testloader = get_model(), load_test_data()
    loaders = [load_data(i, SETTINGS["num-clients"]) for i in range(SETTINGS["num-clients"])]
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    print(f"round 0: accuracy {test(net, testloader)[1]:.4f}", flush=True)
    for server_round in range(1, SETTINGS["rounds"] + 1):
        states, sizes = [], []
        for loader in loaders:
            net.load_state_dict(global_state)
            train(net, loader, SETTINGS["local-steps"])
            states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            sizes.append(len(loader.dataset))
        total = sum(sizes)
        global_state = {k: sum(s[k].float() * (n / total) for s, n in zip(states, sizes)
                               ).to(states[0][k].dtype) for k in global_state}
        net.load_state_dict(global_state)
        print(f"round {server_round}: accuracy {test(net, testloader)[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
