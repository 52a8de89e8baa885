"""Answer extraction for long documents and the offline SQuAD v2 metric."""

from .postprocessing import load_squad_v2_metric, postprocess_and_save, squad_v2_metric_path

__all__ = ["load_squad_v2_metric", "postprocess_and_save", "squad_v2_metric_path"]
