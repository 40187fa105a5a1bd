"""``rollingworld eval ckpt=FILE data=DIR out=DIR``: fidelity, drift, control and speed of one world model.

The sections, their resume and the report are ``runtime.evaluation``'s; the measures are ``worldmodel.eval``'s.
"""
from __future__ import annotations


def run(cfg) -> int:
    from runtime.evaluation import evaluate

    print(f"report: {evaluate(cfg)}")
    return 0
