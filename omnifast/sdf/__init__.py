"""The semantic SDF (stage I): data sampler, network, losses, training, evaluation and export."""
from .data import ParamDistribution, SDFBatch, SDFSampler
from .losses import LossWeights, eikonal_loss, iso_loss, sdf_loss, semantic_loss, semantic_sdf_losses
from .network import NetworkConfig, SDFOutput, SemanticSDF

__all__ = ["LossWeights", "NetworkConfig", "ParamDistribution", "SDFBatch", "SDFOutput", "SDFSampler",
           "SemanticSDF", "eikonal_loss", "iso_loss", "semantic_loss", "semantic_sdf_losses", "sdf_loss"]
