"""Graph passes: Graph IR -> Graph IR rewrites, run in the order `pipeline.PIPELINE` lists."""

from lpuc.passes.pipeline import PIPELINE, PassContext, run_pipeline

__all__ = ["PIPELINE", "PassContext", "run_pipeline"]
