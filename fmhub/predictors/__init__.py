"""One home for the predictors: `base` (shared), `text`, `image`, `audio`."""
