"""metanets: weight spaces, their symmetry groups, and metanetworks that respect them.

torch + numpy only: this package must import without ray, deepspeed, pyarrow or mlflow.
"""

from metanets.spec import LayerSpec, NetworkSpec, SpecError, group_of_activation
from metanets.specs import infer_spec, spec_from_dict, weight_space_class
from metanets.transformer import TransformerSpec, TransformerWeightSpace
from metanets.weight_space import WeightSpace

__all__ = [
    "LayerSpec", "NetworkSpec", "SpecError", "TransformerSpec", "TransformerWeightSpace", "WeightSpace",
    "group_of_activation", "infer_spec", "spec_from_dict", "weight_space_class",
]

from metanets import symmetry  # noqa: E402
from metanets.registry import build_model, load_builders, model_names  # noqa: E402

load_builders()  # registers the builders of metanets.models and metanets.transformer.models

__all__ += ["build_model", "model_names", "symmetry"]
