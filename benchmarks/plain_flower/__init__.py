"""What a user would write instead of fedpafi: a plain Flower app in the shape of Flower's
quickstart-huggingface example (task.py, client_app.py, server_app.py), and the same
training with no Flower at all (no_flower.py). `benchmarks/scale.py` times them against
`fedpafi simulate --method full` on the same work (SETTINGS in task.py)."""
