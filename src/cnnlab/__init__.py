"""cnnlab: a laboratory for convolutional networks.

The public API, imported lazily so that `import cnnlab` (and `cnnlab.conv.convolve`) loads no torch:

    import cnnlab
    data = cnnlab.load_cifar10()                  # --data / $CNNLAB_DATA / cache / download
    result = cnnlab.fit(cnnlab.RunConfig(train_size=5000, epochs=20), data)
    outcome = cnnlab.run_study("studies/seed.toml", repeats=1)
    records = cnnlab.load_results(outcome.study_dir)
    cnnlab.write_report(outcome.study_dir)        # explains the best runs, then writes
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "RunConfig": "cnnlab.config",
    "RunResult": "cnnlab.training.metrics",
    "fit": "cnnlab.training.loop",
    "train_all": "cnnlab.execution.execute",
    "load_dataset": "cnnlab.data.datasets",
    "load_cifar10": "cnnlab.data.datasets",
    "Dataset": "cnnlab.data.datasets",
    "build_model": "cnnlab.nn.modules",
    "summary": "cnnlab.nn.summary",
    "layer_facts": "cnnlab.nn.facts",
    "explain": "cnnlab.insight.explain",
    "export_model": "cnnlab.insight.onnx_export",
    "ARCHITECTURES": "cnnlab.nn.architectures",
    "save_run": "cnnlab.training.runfolder",
    "load_run": "cnnlab.training.runfolder",
    "load_study": "cnnlab.study.studyfile",
    "plan_runs": "cnnlab.study.runner",
    "run_study": "cnnlab.study.runner",
    "StudyRun": "cnnlab.study.runner",
    "Execution": "cnnlab.config",
    "Callback": "cnnlab.study.callbacks",
    "study_and_report": "cnnlab.pipeline.studies",
    "load_results": "cnnlab.store",
    "write_report": "cnnlab.report.report",
    "Report": "cnnlab.report.report",
    "build_report": "cnnlab.report.report",
    "results_frame": "cnnlab.report.tables",
    "learning_curve": "cnnlab.report.curves",
    "convolve2d": "cnnlab.conv.convolve",
    "correlate2d": "cnnlab.conv.convolve",
    "CnnlabError": "cnnlab.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
