"""Medical images: a timm backbone fine-tuned on labelled images, with Grad-CAM and calibrated probabilities.

Data (`--data`): none -> the embedded synthetic set (`fmhub.data.medical_synth`: normal / lesion with lesion masks),
a MedMNIST `.npz` file, a local imagefolder (`class_name/*.png`, optionally under train/validation/test), or a Hub
dataset id (loaders in `fmhub.data.image_data`). Research and education only: nothing here is a medical device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fmhub.errors import FmhubError
from fmhub.scenarios.base import Scenario

if TYPE_CHECKING:
    from fmhub.config import TrainConfig

DILATE_BELOW = 256  # px: below this the offline default backbone runs its last stage at output stride 16


class MedicalImage(Scenario):
    name = "medical-image"
    title = "Medical image"
    emoji = "🩻"
    description = "timm classifier with Grad-CAM; research use only"
    license = "apache-2.0"
    notice = "Research and education only, not a medical device."
    tab = "fmhub.ui.medical_image:build_medical_image_tab"
    micro_batched = True
    score_model_needs_weights = True  # Grad-CAM localisation
    modality = "image"
    pipeline_tag = "image-classification"
    library_name = "timm"
    default_backbone = "efficientnet_lite0"
    input_key = "path"
    defaults = {
        "epochs": 8,
        "freeze_backbone_epochs": 1,
        "batch_size": 32,
        "eval_batch_size": 64,
        "learning_rate": 1e-3,
        "head_learning_rate": 3e-3,
        "weight_decay": 0.01,
        "scheduler": "cosine",
        "warmup_ratio": 0.1,
        "image_size": 128,
        "early_stopping_patience": 0,
        "metric_for_best_model": "macro_f1",
        "augment": True,
        "temperature_scaling": True,
    }

    # -- data ---------------------------------------------------------------------------------------------------
    def load_data(self, config: TrainConfig, label_names: list[str] | None = None):
        from fmhub.data import image_data

        if config.data is None:
            splits, names = image_data.load_embedded(), image_data.embedded_class_names()
        elif str(config.data).lower().endswith(".npz"):
            splits, names = image_data.load_medmnist_npz(config.data)
        else:
            return image_data.load_image_datasets(config.data, label_names)
        if label_names is not None and list(label_names) != names:
            if len(label_names) != len(names):
                raise FmhubError(f"the model has {len(label_names)} labels but the data has {len(names)}")
            names = list(label_names)  # a .npz has no names: the model's, in its order
        return image_data.arrays_to_datasets(splits, names)

    def load_unlabeled(self, source: str, like, label_names: list[str]):
        from fmhub.data.unlabeled import image_pool

        return image_pool(source, like, label_names)

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, config: TrainConfig, label_names: list[str]):
        from fmhub.models.timm_backbone import OFFLINE_LITE0_ARCHS, TimmClassifier, create_backbone

        name = self.resolve_backbone(config.model)
        extra = {}
        if name in OFFLINE_LITE0_ARCHS and (config.image_size or 224) < DILATE_BELOW:
            # the offline default's last stage (stride 32) would have fewer than 8 x 8 cells; dilated instead (same
            # weights, output stride 16) it keeps 8 x 8 at 128 px, fine enough for Grad-CAM to point at a lesion a
            # tenth of the image across. timm records output_stride in config.json, so every loader rebuilds it.
            extra["output_stride"] = 16
        backbone = create_backbone(name, len(label_names), pretrained=config.pretrained, **extra)
        model = TimmClassifier(backbone, label_names, image_size=config.image_size)
        return model, model.data_config()

    def load_model(self, folder: Path):
        from fmhub.models.timm_backbone import TimmClassifier

        model = TimmClassifier.from_pretrained(folder)
        return model.eval(), model.data_config()

    def load_processor(self, folder: Path):
        """timm's preprocessing as saved in config.json (`pretrained_cfg`), without building the network."""
        import json

        import timm

        try:
            saved = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise FmhubError(f"cannot read {folder}/config.json ({err})") from None
        cfg = dict(saved.get("pretrained_cfg") or {})
        return timm.data.resolve_data_config(pretrained_cfg=cfg, use_test_size=True), None

    def make_dataset(self, split, data_config, config: TrainConfig, train: bool):
        from fmhub.data.image_data import ImageDataset
        from fmhub.models.timm_backbone import build_transforms

        return ImageDataset(split, build_transforms(data_config, train=train and config.augment))

    def collate_fn(self, data_config, config: TrainConfig):
        from fmhub.data.image_data import collate_images

        return collate_images

    def save_model(self, model, data_config, folder: Path, label_names: list[str]) -> None:
        model.save_pretrained(folder)  # timm's Hugging Face format; the label names go into config.json

    # -- explanations -------------------------------------------------------------------------------------------
    def score_model(self, model, data_config, split, config: TrainConfig, settings: dict) -> dict:
        """Grad-CAM localisation: share of lesion images whose heatmap peak (for the lesion class) is in the mask."""
        if "mask" not in split.column_names:
            return {}
        import numpy as np

        from fmhub.explain import gradcam_hits

        names = list(split.features["label"].names)
        target = names.index("lesion") if "lesion" in names else None
        rows = [i for i, m in enumerate(split["has_lesion"]) if m]
        if not rows:
            return {}
        hits = gradcam_hits(model, data_config, split.select(rows), target)
        return {"localization_score": float(np.mean(hits)), "localization_images": len(hits)}

    # -- serving ------------------------------------------------------------------------------------------------
    def predictor(self, folder: Path, runtime: str | None = None):
        from fmhub.predictors.image import MedicalImagePredictor

        return MedicalImagePredictor(folder, self, runtime)

    def card_info(self, data_source: str | None) -> dict:
        from fmhub.hubids import is_hub_id

        embedded = data_source is None
        return {
            "datasets": [] if embedded or not is_hub_id(data_source) else [data_source],
            "base_model": None,
            "clinical_warning": True,
            "data_description": (
                "**Synthetic data, not for diagnosis.** fmhub's embedded set: 1,000 images (600 train / "
                "200 validation / 200 test, 128 px) made by drawing synthetic focal lesions into crops of real, "
                "unlabelled medical images that Python packages ship (scikit-image fundus, retina close-up, "
                "histology and microscopy images; pydicom CT and MR slices). Classes `normal` / `lesion`; the "
                "lesion masks are known, which is how the Grad-CAM localisation score is computed. No real "
                "finding, patient or label is involved."
                if embedded
                else f"`{data_source}`"
            ),
            "intended_use": "Research and education: demonstrating transfer learning, calibration and Grad-CAM "
            "explanations on medical-looking images. " + self.notice,
            "limitations": "Not a medical device and not clinically validated: never use it to diagnose, treat, "
            "triage or screen patients. "
            + (
                "Trained on synthetic lesions only; it says nothing about real pathology."
                if embedded
                else "Performance outside the training data's source, devices and population is unknown."
            ),
        }


__all__ = ["MedicalImage"]
