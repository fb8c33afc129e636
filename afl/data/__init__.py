"""Datasets (standardized numpy arrays) and their split across clients."""
from afl.data.image_dataset import ImageDataset, synthetic_image_dataset
from afl.data.image_files import read_idx
from afl.data.label_skew import classes, shards
from afl.data.loaders import BUILTIN, load_image_dataset
from afl.data.partition import (Partition, dirichlet, format_summary,
                                from_assignment, from_sizes, iid, make,
                                quantity_skew, summarize)
