"""NONMEM-style event tables: reading, validation, dose events and padded tensors."""
from .batching import DoseTable, ObservationTable, ResetTable, SubjectBatch
from .dataset import Dataset
from .reader import read_nonmem

__all__ = ["read_nonmem", "Dataset", "SubjectBatch", "ObservationTable", "DoseTable", "ResetTable"]
