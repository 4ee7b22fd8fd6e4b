"""The client's side of SecAgg+ (`--secagg`): Flower's `secaggplus_mod` around our handler.

Flower's mod runs the protocol (key pairs, Shamir shares of the secrets, pairwise and
private masks, the quantization) and speaks Flower's legacy fit messages: in its masking
stage it hands on a `fitins.*` instruction and expects a `fitres.*` reply carrying the
update as float arrays and the example count as its weight. `secure_aggregation` routes
every SecAgg+ message through that mod, and a thin bridge between the mod and the handler
translates: the instruction into ours, our encoded reply into the decoded update in the
method's layout (clipped to the DP norm first when DP is on, and noised with `--dp-side
client`). The mod then weighs it by num-examples / max-weight, quantizes, masks and sends
only the masked integers; it empties every array record of the reply, so no plain update
leaves the client. Messages without SecAgg+ settings pass straight through, so one
ClientApp serves both kinds of run.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

from common import protocol as p
from common.codecs import CODECS
from common.config import RunConfig
from common.errors import UpdateError
from common.privacy import client_private
from common.updates import VALUES


def secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A SecAgg+ stage goes through Flower's mod, which calls the handler (via the bridge)
    in its masking stage only; any other message goes straight to the handler."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, _bridge(call_next))


def _bridge(call_next: ClientAppCallable) -> ClientAppCallable:
    def bridged(msg: Message, context: Context) -> Message:
        reply = call_next(as_instruction(msg), context)
        if reply.has_error():
            return reply
        return Message(content=as_fit_reply(reply.content, msg), reply_to=msg)

    return bridged


def as_instruction(msg: Message) -> Message:
    """The legacy `fitins.*` instruction the mod hands on, as our handler reads it (the
    same message: its metadata is kept)."""
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    (values,) = fitins.parameters.tensors  # the global state: one flat fp32 array
    content = RecordDict({
        p.ARRAYS: ArrayRecord({VALUES: Array(bytes_to_ndarray(values))}),
        p.CONFIG: ConfigRecord(dict(fitins.config)),
    })
    return Message(content=content, metadata=msg.metadata)


def as_fit_reply(reply: RecordDict, msg: Message) -> RecordDict:
    """Our reply with its update decoded into the `fitres.*` records the mod masks; the
    metrics and the codec/fingerprint info stay beside them for the server's checks. A
    corrupt update raises here, and the client drops out of the round."""
    cfg = RunConfig.from_json(str(msg.content["fitins.config"][p.RUN_CONFIG]))
    codec = CODECS[cfg.codec]  # fp32: secagg refuses the lossy ones
    encoded = reply[p.UPDATE][VALUES].numpy()
    flat = codec.decode(encoded, codec.count(encoded))
    if not torch.isfinite(flat).all():
        raise UpdateError(f"the update holds {int((~torch.isfinite(flat)).sum())} non-finite "
                          f"values (NaN or inf); it cannot join the secure sum.")
    weight = int(reply[p.METRICS][p.NUM_EXAMPLES])
    if cfg.dp_clipping_norm:  # DP: clip here (client-side: and noise), weigh every client alike
        norm = float(msg.content["fitins.config"][p.DP_CLIPPING_NORM])
        flat, weight = client_private(cfg, {VALUES: flat}, norm)[0][VALUES], 1
    parameters = Parameters([ndarray_to_bytes(flat.numpy())], "numpy.ndarray")
    fitres = FitRes(Status(Code.OK, ""), parameters, weight, {})
    return RecordDict({**fitres_to_recorddict(fitres, keep_input=False),
                       p.METRICS: reply[p.METRICS], p.REPLY_INFO: reply[p.REPLY_INFO]})
