"""What every chapter notebook does first, whether papermill or a person runs it; and how the params of a
run are shown on a page."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..config import params as params_mod
from ..paths import PARAMS_DIR, display_path, run_dir as named_run_dir


def start(params_file=None, run_dir=None, overrides=None):
    """Resolve params, seed, set the plotly renderer; returns (params, run_dir).

    With no arguments (a chapter opened in JupyterLab) it uses params/default.yaml
    and runs/default, so a notebook runs top to bottom without papermill.
    """
    import plotly.io as pio

    # The default renderer emits only the plotly JSON mime type, which the book drops;
    # this one also inlines plotly.js (offline), so figures survive into static HTML.
    pio.renderers.default = "plotly_mimetype+notebook"
    params = params_mod.resolve(params_file or PARAMS_DIR / "default.yaml", overrides)
    run_dir = Path(run_dir) if run_dir else named_run_dir(params["run_name"])
    run_dir.mkdir(parents=True, exist_ok=True)
    random.seed(params["seed"])
    np.random.seed(params["seed"])
    return params, run_dir


def shown_params(params: dict) -> dict:
    """The params that differ from the defaults (`config.params.non_default`), as a page shows them: an
    absolute path (data_dir, a checkpoint) through `display_path`, so no page leaks the building machine's
    folders. The front page, the comparison of runs and the model card list these."""
    return {k: display_path(v) if isinstance(v, str) and Path(v).expanduser().is_absolute() else v
            for k, v in params_mod.non_default(params).items()}
