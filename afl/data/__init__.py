"""Datasets (standardized numpy arrays) and their split across clients."""
from afl.data.loaders import (BUILTIN, ImageDataset, load_image_dataset,
                              read_idx, synthetic_image_dataset)
from afl.data.partition import (PARTITIONERS, Partition, dirichlet,
                                format_summary, from_assignment, from_sizes,
                                iid, make, quantity_skew, summarize)
