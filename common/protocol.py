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
CLIENT_STATE = "client-state-dir"  # server -> client in a simulation: where client state persists
