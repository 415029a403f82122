"""Growing Neural Cellular Automata: the model and its simulators (the trainer is `train`)."""
import os as _os

# numba's OpenMP workers spin after each parallel region and fight OpenBLAS's
# threads on small machines (3x slowdowns measured); must be set before import.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
