"""Transformer encoders: their weight space, symmetry group, Transformer-NFN layers and models.

`TransformerSpec` and `TransformerWeightSpace` mirror `NetworkSpec` and `WeightSpace`; the group functions
live in `metanets.transformer.symmetry` and are reached through `metanets.symmetry`, which dispatches on
the spec or element type. Layers and models are imported from their modules (`metanets.build_model`).
"""

from metanets.transformer.spec import TransformerSpec, looks_like_transformer
from metanets.transformer.weight_space import TransformerWeightSpace

__all__ = ["TransformerSpec", "TransformerWeightSpace", "looks_like_transformer"]
