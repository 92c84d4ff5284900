"""A small transactions MLP trained quickly (non-privately) for tests of what happens after
training: compressed variants, serving them."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from lepton.generators import transactions
from services.trainer.split import is_validation
from shared.datasets import load_spec
from shared.events import Scalar
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model


@cache
def trained_mlp() -> tuple[dict[str, Any], dict[str, torch.Tensor], FeatureTransform,
                           list[dict[str, Scalar]], list[dict[str, Scalar]]]:
    """(architecture, state, transform, training payloads, held-out payloads) of a 32-16 MLP
    trained on 5000 generated transactions (the spec's transform: no data statistics; a fixed
    width, so the compression tests do not change with the spec's)."""
    torch.set_num_threads(1)  # as the trainer runs; two threads crawl on a busy 2-core machine
    spec = load_spec("transactions")
    events = list(transactions(5000, seed=3, customers=20_000))
    ft = FeatureTransform.from_spec(spec)
    train = [dict(e.payload) for e in events if not is_validation(e.event_id, 20)]
    held = [dict(e.payload) for e in events if is_validation(e.event_id, 20)]
    arch = architecture("mlp", ft.dim, (32, 16))
    torch.manual_seed(0)
    net = build_model(arch)
    x, y = torch.from_numpy(ft.transform(train)), torch.from_numpy(ft.labels(train))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    loss = torch.nn.BCEWithLogitsLoss()
    for _ in range(15):
        for index in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            loss(net(x[index]), y[index]).backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return arch, state, ft, train, held
