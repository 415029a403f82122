"""nca-train: training Growing-NCA models (the paper's recipe, backpropagation through time
in numba) and fine-tuning them for the firmware's fixed-point arithmetic."""
