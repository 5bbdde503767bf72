"""`fit` on a fixed regression problem, for tests/test_core.py to run in one process and under `torchrun` in several:
the main process prints the logged losses and the final weights as JSON, the others print nothing."""
import json

import torch
from accelerate import PartialState
from torch import nn

from storyteller.core import fit, seed_everything

seed_everything(0)
x = torch.randn(256, 8)
y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)
model = nn.Linear(8, 1)
history = fit(model, lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).mean(), data, 6, lr=0.05, progress=True,
              desc="regression")
if PartialState().is_main_process:
    print(json.dumps({"losses": history.losses, "weight": model.weight.detach().cpu().flatten().tolist(),
                      "processes": PartialState().num_processes}))
