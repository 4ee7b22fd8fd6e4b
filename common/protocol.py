"""Names of the records and keys that travel between server and clients, in one place."""

ARRAYS = "arrays"  # server -> client: global state (one flat fp32 array)
CONFIG = "config"  # server -> client: run config JSON, round, fingerprint
UPDATE = "update"  # client -> server: encoded update
METRICS = "metrics"  # client -> server: num-examples, train-loss, partition-id, ...
REPLY_INFO = "info"  # client -> server: codec and fingerprint the client used

RUN_CONFIG = "run-config"
ROUND = "server-round"
FINGERPRINT = "mask-fingerprint"
CODEC = "codec"
NUM_EXAMPLES = "num-examples"
PARTITION = "partition-id"
DP_CLIPPING_NORM = "dp-clipping-norm"  # server -> client: the round's DP norm (adaptive moves it)
DP_UNCLIPPED = "dp-unclipped"  # client -> server, client-side DP: 1 if its norm was within it
# What a client times in a round, each reported as `<phase>-seconds`: building the model
# (0 when its process kept it from an earlier round), cutting its shard, loading the global
# state, local training (tokenizing included) and encoding the update.
CLIENT_PHASES = ("build", "data", "load", "train", "encode")
# --download-codec ternary: a coded download carries the round of the view it changes
# (server -> client, absent from a whole state); a reply, the round of the view its client
# now holds (client -> server)
VIEW_BASE = "view-base-round"
VIEW_ROUND = "view-round"
CLIENT_STATE = "client-state-dir"  # server -> client in a simulation: where client state persists
