"""fmhub: fine-tune foundation-model backbones with Accelerate and serve them as Gradio demos."""

__version__ = "0.1.0"

from fmhub.config import TrainConfig
from fmhub.scenarios import get_scenario, list_scenarios
from fmhub.serving import Predictor, load_predictor

__all__ = ["TrainConfig", "Predictor", "load_predictor", "get_scenario", "list_scenarios", "__version__"]
