"""Build the model class that a configuration names."""

from models.quality import QualityModel
from models.spatial import SpatialModel

MODEL_CLASSES = {"quality": QualityModel, "spatial": SpatialModel}


def build_model(config):
    """A model of `config.mode` with all weights created."""
    model = MODEL_CLASSES[config.mode](config)
    model.build_weights()
    return model
