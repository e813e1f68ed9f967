"""metanets: weight spaces, their symmetry groups, and metanetworks that respect them.

torch + numpy only: this package must import without ray, deepspeed, pyarrow or mlflow.
"""

from metanets.spec import LayerSpec, NetworkSpec, SpecError, group_of_activation
from metanets.weight_space import WeightSpace

__all__ = ["LayerSpec", "NetworkSpec", "SpecError", "WeightSpace", "group_of_activation"]

from metanets import symmetry  # noqa: E402
from metanets.models import build_model, model_names  # noqa: E402

__all__ += ["build_model", "model_names", "symmetry"]
