"""A ``DistributedDataParallel`` wrapper rebuilt in place around its grown module.

DDP registers its parameters once, when it is built, so it cannot follow a growth: the wrapper
is built again around the same module, with the same settings, and keeps its identity (the
training loop of the framework holds it). Every rank must grow the same way at the same step
(growth is seeded), since building DDP checks the parameter shapes across ranks and broadcasts
rank 0's weights.
"""

from __future__ import annotations

import inspect

from torch.nn.parallel import DistributedDataParallel

from growformer.integrations.plan import GrowthCallbackError


def rewrap_(wrapper: DistributedDataParallel) -> None:
    """Rebuild ``wrapper`` around its module (after the module's parameters changed).

    Kept: device ids, output device, dim, process group, bucket size, unused-parameter search,
    gradient-as-bucket-view, static graph and buffer synchronization. A registered
    communication hook cannot be carried: ``GrowthCallbackError``.
    """
    if getattr(wrapper, "_comm_hooks", None):
        raise GrowthCallbackError(
            "the DistributedDataParallel wrapper has a communication hook, which a growth event "
            "cannot carry to the rebuilt wrapper"
        )
    settings = {
        "device_ids": wrapper.device_ids,
        "output_device": wrapper.output_device,
        "dim": wrapper.dim,
        "process_group": wrapper.process_group,
        "bucket_cap_mb": wrapper.bucket_bytes_cap / 2**20,
        "find_unused_parameters": wrapper.find_unused_parameters,
        "gradient_as_bucket_view": wrapper.gradient_as_bucket_view,
        "static_graph": wrapper.static_graph,
    }
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        settings["forward_sync_buffers"] = wrapper.broadcast_buffers
    else:
        settings["broadcast_buffers"] = wrapper.broadcast_buffers
    DistributedDataParallel.__init__(wrapper, wrapper.module, **settings)
