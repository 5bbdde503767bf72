"""`train_model` of a text-to-image recipe (diffusion or token prior), for tests/test_core.py to run in one process and under `torchrun` in
several: `python train_processes.py NAME OUT KEY=JSON...`. The main process prints the losses the recipe's `fit` logged
as JSON, the others print nothing."""
import json
import sys

from accelerate import PartialState

import storyteller.models.diffusion as diffusion
import storyteller.models.tokens as tokens
from storyteller.recipes import train_model

histories = []
plain_fit = diffusion.fit


def logged_fit(*args, **kwargs):
    "`fit`, keeping its history."
    histories.append(plain_fit(*args, **kwargs))
    return histories[-1]


diffusion.fit = tokens.fit = logged_fit  # what `fit_text_to_image` and `fit_token_prior` call
name, out, *sets = sys.argv[1:]
train_model(name, out=out, **{key: json.loads(value) for key, _, value in (s.partition("=") for s in sets)})
if PartialState().is_main_process:
    print(json.dumps({"losses": histories[0].losses, "processes": PartialState().num_processes}))
