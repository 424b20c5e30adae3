"""Training: the one loop for every modality (`engine`), the pieces a run is built from (`setup`), and the data
loaders (`loaders`)."""
